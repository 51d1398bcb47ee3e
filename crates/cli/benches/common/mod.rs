//! Helpers shared by the benches: processes measured under GNU time, their JSON summaries,
//! sizes from the environment.

#![allow(dead_code)]

use anyhow::{Context as _, Result};
use serde_json::Value;
use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};

/// Wall seconds, CPU seconds (user + system), peak RSS and stdout of one process.
#[derive(Debug)]
pub struct Measured {
    pub wall: f64,
    pub cpu: f64,
    pub rss_mib: f64,
    pub stdout: String,
}

/// Runs `program` under GNU time; fails with its stderr on a non-zero exit.
pub fn measure(program: &str, args: &[&str]) -> Result<Measured> {
    measure_io(program, args, None, None)
}

/// [`measure`] with stdin read from `stdin` (else nothing) and stdout written to `stdout`
/// (else captured).
pub fn measure_io(
    program: &str,
    args: &[&str],
    stdin: Option<&Path>,
    stdout: Option<&Path>,
) -> Result<Measured> {
    let report = tempfile::NamedTempFile::new()?;
    let mut cmd = Command::new("/usr/bin/time");
    cmd.args(["-f", "%e %U %S %M", "-o"])
        .arg(report.path())
        .arg(program)
        .args(args);
    cmd.stdin(match stdin {
        Some(p) => Stdio::from(File::open(p)?),
        None => Stdio::null(),
    });
    if let Some(p) = stdout {
        cmd.stdout(Stdio::from(File::create(p)?));
    }
    let out = cmd
        .output()
        .context("running under /usr/bin/time (infra/deps.sh bench installs it)")?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(report.path())?;
    let f: Vec<f64> = text
        .lines()
        .last()
        .context("time report")?
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(f.len() == 4, "time report {text:?}");
    Ok(Measured {
        wall: f[0],
        cpu: f[1] + f[2],
        rss_mib: f[3] / 1024.0,
        stdout: String::from_utf8(out.stdout)?,
    })
}

/// CPU seconds (user + system) this process has used so far, from `/proc/self/stat` (in
/// USER_HZ ticks, 100 per second on Linux).
pub fn process_cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').context("/proc/self/stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| -> Result<f64> {
        Ok(f.get(i).context("/proc/self/stat fields")?.parse::<f64>()?)
    };
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// The last line of `stdout` that is a JSON object.
pub fn last_json(stdout: &str) -> Result<Value> {
    Ok(serde_json::from_str(
        stdout
            .lines()
            .rfind(|l| l.starts_with('{'))
            .context("no JSON summary")?,
    )?)
}

/// A size from the environment, else `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The Python of the bench venv (`infra/bench-venv.sh`, pinned by `bench/requirements.txt`).
pub fn bench_python() -> Result<String> {
    let venv = Command::new("infra/bench-venv.sh").output()?;
    anyhow::ensure!(
        venv.status.success(),
        "infra/bench-venv.sh: {}",
        String::from_utf8_lossy(&venv.stderr)
    );
    Ok(format!(
        "{}/bin/python",
        String::from_utf8(venv.stdout)?.trim()
    ))
}

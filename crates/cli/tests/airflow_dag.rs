//! The schedules in `pipelines/` checked in the real tools: `infra/airflow-test.sh` loads the
//! Airflow DAG in the pinned Airflow (installed once into a cached venv) and runs it against a
//! stand-in binary, and the crontab's job lines are run by bash as cron would run them.
//! Neither needs the local stack or the `lakeshop` binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The last `n` lines of a captured stream.
fn tail(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn assert_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({})\n--- stdout (end)\n{}\n--- stderr (end)\n{}",
        out.status,
        tail(&out.stdout, 60),
        tail(&out.stderr, 120)
    );
}

#[test]
fn airflow_dag_loads_and_runs_in_pinned_airflow() {
    let out = Command::new("bash")
        .arg(root().join("infra/airflow-test.sh"))
        .current_dir(root())
        .output()
        .expect("run infra/airflow-test.sh");
    assert_success("infra/airflow-test.sh", &out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("Ran ") && !l.starts_with("Ran 0 ")),
        "no Airflow check ran:\n{}",
        tail(&out.stderr, 40)
    );
    // The DAG checks skip themselves where Airflow cannot be imported: a skip is a failure
    // here, and the checks that need Airflow must each have run and passed.
    assert!(
        !stderr.contains("skipped"),
        "Airflow checks were skipped:\n{}",
        tail(&out.stderr, 60)
    );
    for check in [
        "test_task_graph",
        "test_zero_import_errors",
        "test_good_summary_passes",
        "test_retries_and_timeouts",
    ] {
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(check) && l.trim_end().ends_with("... ok")),
            "{check} did not run and pass:\n{}",
            tail(&out.stderr, 60)
        );
    }
}

#[test]
fn crontab_jobs_run_as_cron_runs_them() {
    let out = Command::new("python3")
        .args(["-m", "unittest", "discover", "-s", "pipelines/cron/tests"])
        .current_dir(root())
        .output()
        .expect("run python3");
    assert_success("the crontab checks", &out);
}

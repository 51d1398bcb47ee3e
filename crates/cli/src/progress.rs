//! Progress bars on stderr (stdout carries the JSON summaries schedulers read). Hidden
//! with `--quiet` and whenever stderr is not a terminal (a scheduler, a pipe, a log file),
//! so such runs print nothing but their summaries and logs. Every bar joins one
//! `MultiProgress`, so the concurrent sources of `extract all` each keep their own line.

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal as _;
use std::sync::OnceLock;
use std::time::Duration;

fn shown(quiet: bool) -> bool {
    !quiet && std::io::stderr().is_terminal()
}

fn multi() -> &'static MultiProgress {
    static MULTI: OnceLock<MultiProgress> = OnceLock::new();
    MULTI.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

fn styled(bar: ProgressBar, template: &str, what: &str) -> ProgressBar {
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.set_message(what.to_string());
    bar
}

/// A spinner counting `unit` (e.g. rows) with rate and elapsed time; hidden when quiet or
/// stderr is not a terminal.
pub fn counter(quiet: bool, what: &str, unit: &str) -> ProgressBar {
    if !shown(quiet) {
        return ProgressBar::hidden();
    }
    let bar = multi().add(styled(
        ProgressBar::new_spinner(),
        &format!("{{spinner}} {{msg}}: {{human_pos}} {unit}, {{per_sec}}, {{elapsed}}"),
        what,
    ));
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A spinner with a message and the elapsed time, for work without a count.
pub fn spinner(quiet: bool, what: &str) -> ProgressBar {
    if !shown(quiet) {
        return ProgressBar::hidden();
    }
    let bar = multi().add(styled(
        ProgressBar::new_spinner(),
        "{spinner} {msg} {elapsed}",
        what,
    ));
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// A bar of `len` steps (e.g. days), with the current step in its message.
pub fn steps(quiet: bool, len: u64, what: &str) -> ProgressBar {
    if !shown(quiet) {
        return ProgressBar::hidden();
    }
    let bar = multi().add(styled(
        ProgressBar::new(len),
        "{msg} [{bar:30}] {pos}/{len} {elapsed}",
        what,
    ));
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

//! SIGTERM and Ctrl-C: the signals on which a long-running command stops taking new work,
//! commits what it holds and exits 0.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::task::JoinHandle;

/// The shutdown signals, listened to from the moment this is built (so a signal that arrives
/// before anyone awaits is not lost, and does not kill the process with the default action).
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Starts listening. Must run inside a Tokio runtime.
    fn listen() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let term = signal(SignalKind::terminate())
                .inspect_err(|e| tracing::warn!(error = %e, "cannot listen for SIGTERM"))
                .ok();
            let int = signal(SignalKind::interrupt())
                .inspect_err(|e| tracing::warn!(error = %e, "cannot listen for Ctrl-C"))
                .ok();
            Self { term, int }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// Resolves on the first SIGTERM or Ctrl-C.
    async fn recv(self) {
        #[cfg(unix)]
        {
            async fn next(signal: Option<tokio::signal::unix::Signal>) {
                match signal {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                _ = next(self.term) => {}
                _ = next(self.int) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Resolves when the process receives SIGTERM or Ctrl-C (SIGINT).
///
/// Listening starts when the future is first polled.
pub async fn wait_for_shutdown() {
    Signals::listen().recv().await;
}

/// Sets `flag` when the process receives SIGTERM or Ctrl-C, logging
/// "shutdown requested; draining". The loop that owns `flag` commits what it buffered and
/// returns. Listening starts before this returns; abort the handle once the work is done.
///
/// Must be called inside a Tokio runtime.
pub fn stop_on_signal(flag: Arc<AtomicBool>) -> JoinHandle<()> {
    let signals = Signals::listen();
    tokio::spawn(async move {
        signals.recv().await;
        tracing::info!("shutdown requested; draining");
        flag.store(true, Ordering::Relaxed);
    })
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Sends SIGTERM to this test process: safe because both listeners are in place first
    /// (Tokio's handler replaces the default action for the whole process).
    #[tokio::test]
    async fn sigterm_sets_the_flag_and_ends_wait_for_shutdown() -> std::io::Result<()> {
        let flag = Arc::new(AtomicBool::new(false));
        let stopper = stop_on_signal(flag.clone());
        let mut waiting = Box::pin(wait_for_shutdown());
        // One poll starts its listener.
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        assert!(!flag.load(Ordering::Relaxed));

        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()?;
        assert!(status.success());

        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .map_err(std::io::Error::other)?;
        tokio::time::timeout(Duration::from_secs(5), stopper)
            .await
            .map_err(std::io::Error::other)??;
        assert!(flag.load(Ordering::Relaxed));
        Ok(())
    }
}

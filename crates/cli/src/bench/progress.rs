//! The progress line on stderr: ops done, current ops/s, elapsed. Redrawn in place
//! with `\r` when stderr is a terminal; otherwise one line every few seconds, so logs
//! of scripted runs stay readable. stdout is left alone for the summary (`--json`).

use std::io::{IsTerminal as _, Write as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

const TERMINAL_INTERVAL: Duration = Duration::from_millis(250);
const LOG_INTERVAL: Duration = Duration::from_secs(5);

/// Draws progress for one phase until `stop` fires (or its sender is dropped), then
/// clears its line.
pub async fn report(
    phase: &'static str,
    done: Arc<AtomicU64>,
    started: Instant,
    mut stop: oneshot::Receiver<()>,
) {
    let terminal = std::io::stderr().is_terminal();
    let interval = if terminal {
        TERMINAL_INTERVAL
    } else {
        LOG_INTERVAL
    };
    let mut ticks = tokio::time::interval_at(started + interval, interval);
    let mut last = (started, 0u64);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            now = ticks.tick() => {
                let ops = done.load(Ordering::Relaxed);
                let window = now.duration_since(last.0).as_secs_f64();
                let rate = if window > 0.0 {
                    ops.saturating_sub(last.1) as f64 / window
                } else {
                    0.0
                };
                last = (now, ops);
                let line = format!(
                    "{phase}: {ops} ops  {rate:.0} ops/s  {:.1} s",
                    now.duration_since(started).as_secs_f64()
                );
                // A closed stderr must not stop the benchmark: ignore write errors.
                let mut stderr = std::io::stderr().lock();
                let _ = if terminal {
                    write!(stderr, "\r\x1b[2K{line}")
                } else {
                    writeln!(stderr, "{line}")
                };
                let _ = stderr.flush();
            }
        }
    }
    if terminal {
        let _ = write!(std::io::stderr().lock(), "\r\x1b[2K");
    }
}

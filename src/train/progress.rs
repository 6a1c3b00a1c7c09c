//! Progress that fits where it runs: a redrawn bar with rate and ETA on a terminal, plain
//! periodic lines in a log file or CI output, where carriage returns would pile up.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How often a log (not a terminal) gets a progress line inside an epoch.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// Progress through the batches of an epoch, on stderr.
pub struct Progress {
    terminal: bool,
    epochs: usize,
    started: Instant,
    last_line: Instant,
    drawn: bool,
}

impl Progress {
    /// Progress for a run of `epochs` epochs; draws a bar only when stderr is a terminal.
    pub fn new(epochs: usize) -> Progress {
        Progress::with_terminal(epochs, std::io::stderr().is_terminal())
    }

    /// As [`Progress::new`], saying whether the output is a terminal (tests, or a caller
    /// that knows better).
    pub fn with_terminal(epochs: usize, terminal: bool) -> Progress {
        let now = Instant::now();
        Progress { terminal, epochs, started: now, last_line: now, drawn: false }
    }

    /// The text for batch `b` of `nb` in `epoch` (from 1), with the running loss and
    /// accuracy: the bar on a terminal, or a log line when one is due; `None` when nothing
    /// should be written now.
    pub fn line(&mut self, epoch: usize, b: usize, nb: usize, loss: f64, acc: Option<f64>) -> Option<String> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.started).as_secs_f64();
        let rate = b as f64 / elapsed.max(1e-9);
        let acc = acc.map(|a| format!("  acc {a:.4}")).unwrap_or_default();
        if self.terminal {
            const WIDTH: usize = 24;
            let filled = WIDTH * b / nb.max(1);
            let eta = nb.saturating_sub(b) as f64 / rate.max(1e-9);
            let bar = "#".repeat(filled) + &".".repeat(WIDTH - filled);
            self.drawn = true;
            Some(format!(
                "\repoch {epoch:>3}/{} [{bar}] {b:>5}/{nb}  {rate:>6.1} it/s  eta {eta:>4.0}s  loss {loss:.4}{acc}",
                self.epochs
            ))
        } else if now.duration_since(self.last_line) >= LOG_EVERY && b < nb {
            self.last_line = now;
            Some(format!("epoch {epoch}/{}: batch {b}/{nb}  {rate:.1} it/s  loss {loss:.4}{acc}\n", self.epochs))
        } else {
            None
        }
    }

    /// Writes [`Progress::line`]'s text, if any, to stderr.
    pub fn update(&mut self, epoch: usize, b: usize, nb: usize, loss: f64, acc: Option<f64>) {
        if let Some(text) = self.line(epoch, b, nb, loss, acc) {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(text.as_bytes());
            let _ = err.flush();
        }
    }

    /// Ends the epoch: prints `summary` as its own line (replacing the bar on a terminal) and
    /// restarts the rate for the next epoch.
    pub fn finish_epoch(&mut self, summary: &str) {
        let lead = if self.terminal && self.drawn { "\r\x1b[2K" } else { "" };
        eprintln!("{lead}{summary}");
        self.drawn = false;
        self.started = Instant::now();
        self.last_line = self.started;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_gets_no_carriage_returns_and_a_terminal_gets_a_bar() {
        let mut log = Progress::with_terminal(3, false);
        assert_eq!(log.line(1, 1, 10, 0.5, None), None, "no line before LOG_EVERY has passed");
        log.last_line -= LOG_EVERY;
        let line = log.line(1, 2, 10, 0.5, Some(0.9)).unwrap();
        assert!(!line.contains('\r') && line.ends_with('\n') && line.contains("batch 2/10"), "{line:?}");
        let mut tty = Progress::with_terminal(3, true);
        let bar = tty.line(2, 5, 10, 0.25, None).unwrap();
        assert!(bar.starts_with("\repoch   2/3 [############............]") && bar.contains("eta"), "{bar:?}");
    }
}

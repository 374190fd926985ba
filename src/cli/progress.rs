//! Progress for long walks: a bar on a terminal, a plain line every few seconds otherwise
//! (logs, CI, systemd).

use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use sealfs::admin::progress::Progress;

const LINE_INTERVAL: Duration = Duration::from_secs(5);

pub enum Reporter {
    Bar(ProgressBar),
    Lines {
        what: &'static str,
        total: AtomicU64,
        done: AtomicU64,
        last: Mutex<Instant>,
    },
}

impl Reporter {
    pub fn new(what: &'static str) -> Self {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_message(what);
            Reporter::Bar(bar)
        } else {
            Reporter::Lines {
                what,
                total: AtomicU64::new(0),
                done: AtomicU64::new(0),
                last: Mutex::new(Instant::now()),
            }
        }
    }

    pub fn finish(&self) {
        if let Reporter::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

impl Progress for Reporter {
    fn set_total(&self, n: u64) {
        match self {
            Reporter::Bar(bar) => bar.set_length(n),
            Reporter::Lines { what, total, .. } => {
                total.store(n, Ordering::Relaxed);
                eprintln!("{what}: {n} to check");
            }
        }
    }

    fn advance(&self, n: u64) {
        match self {
            Reporter::Bar(bar) => bar.inc(n),
            Reporter::Lines {
                what,
                total,
                done,
                last,
            } => {
                let now_done = done.fetch_add(n, Ordering::Relaxed) + n;
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                if last.elapsed() >= LINE_INTERVAL {
                    *last = Instant::now();
                    eprintln!("{what}: {now_done}/{} done", total.load(Ordering::Relaxed));
                }
            }
        }
    }
}

//! Per-file mode: a small pool of data keys generated ahead by the master key (with their
//! file ids, which the wrap binds), refilled in the background, so creating a file rarely
//! waits on a KMS round trip. The refill thread starts on first use, after any fork.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use super::KeyError;
use crate::crypto::SecretKey;
use crate::format::Id;

pub struct Pregenerated {
    pub file_id: Id,
    pub data_key: SecretKey,
    pub wrapped: Vec<u8>,
}

pub type Generator = dyn Fn() -> Result<Pregenerated, KeyError> + Send + Sync;

struct Shared {
    queue: Mutex<VecDeque<Pregenerated>>,
    wanted: Condvar,
    target: usize,
    stop: AtomicBool,
    generate: Box<Generator>,
}

pub struct KeyPool {
    shared: Arc<Shared>,
    started: OnceLock<()>,
}

impl KeyPool {
    pub fn new(target: usize, generate: Box<Generator>) -> Self {
        KeyPool {
            shared: Arc::new(Shared {
                queue: Mutex::new(VecDeque::with_capacity(target)),
                wanted: Condvar::new(),
                target,
                stop: AtomicBool::new(false),
                generate,
            }),
            started: OnceLock::new(),
        }
    }

    /// A pre-generated key if one is ready, else one generated now.
    pub fn take(&self) -> Result<Pregenerated, KeyError> {
        if self.shared.target > 0 {
            self.started.get_or_init(|| {
                let shared = self.shared.clone();
                std::thread::Builder::new()
                    .name("sealfs-keypool".into())
                    .spawn(move || refill(&shared))
                    .expect("spawn key pool thread");
            });
        }
        let ready = crate::sync::lock(&self.shared.queue).pop_front();
        self.shared.wanted.notify_one();
        match ready {
            Some(key) => Ok(key),
            None => (self.shared.generate)(),
        }
    }
}

impl Drop for KeyPool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        crate::sync::lock(&self.shared.queue).clear();
        self.shared.wanted.notify_all();
    }
}

fn refill(shared: &Shared) {
    let mut backoff = Duration::from_millis(500);
    loop {
        {
            let mut queue = crate::sync::lock(&shared.queue);
            while queue.len() >= shared.target && !shared.stop.load(Ordering::Acquire) {
                queue = crate::sync::wait(&shared.wanted, queue);
            }
        }
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        match (shared.generate)() {
            Ok(key) => {
                backoff = Duration::from_millis(500);
                if shared.stop.load(Ordering::Acquire) {
                    return;
                }
                crate::sync::lock(&shared.queue).push_back(key);
            }
            Err(e) => {
                tracing::warn!(error = %e, "key pool cannot pre-generate file keys; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn pool_fills_ahead_and_hands_out_distinct_keys() {
        let made = Arc::new(AtomicUsize::new(0));
        let counter = made.clone();
        let pool = KeyPool::new(
            4,
            Box::new(move || {
                let n = counter.fetch_add(1, Ordering::SeqCst) as u8;
                Ok(Pregenerated {
                    file_id: [n; 16],
                    data_key: SecretKey::from_array([n; 32]),
                    wrapped: vec![n],
                })
            }),
        );
        let first = pool.take().unwrap();
        for _ in 0..100 {
            if made.load(Ordering::SeqCst) >= 5 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(
            made.load(Ordering::SeqCst) >= 5,
            "refilled in the background"
        );
        let second = pool.take().unwrap();
        assert_ne!(first.file_id, second.file_id);
    }
}

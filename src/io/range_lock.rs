//! A lock over block ranges of one file: readers of overlapping ranges share, a writer
//! excludes every overlapping range, and disjoint ranges never wait for each other, so
//! writers to different blocks of one file run in parallel (one writer per file is a known
//! gocryptfs weakness).

use std::sync::{Condvar, Mutex};

struct Held {
    start: u64,
    end: u64,
    exclusive: bool,
    id: u64,
}

#[derive(Default)]
struct State {
    held: Vec<Held>,
    next_id: u64,
}

#[derive(Default)]
pub struct RangeLock {
    state: Mutex<State>,
    released: Condvar,
}

pub struct RangeGuard<'a> {
    lock: &'a RangeLock,
    id: u64,
}

/// Everything from a block to the end of the file, whatever the file's size becomes (the same
/// mark as the backing store's block locks').
pub use crate::coord::TO_END;

impl RangeLock {
    /// Shared access to blocks `start..end`.
    pub fn read(&self, start: u64, end: u64) -> RangeGuard<'_> {
        self.acquire(start, end, false)
    }

    /// Exclusive access to blocks `start..end`.
    pub fn write(&self, start: u64, end: u64) -> RangeGuard<'_> {
        self.acquire(start, end, true)
    }

    fn acquire(&self, start: u64, end: u64, exclusive: bool) -> RangeGuard<'_> {
        let end = end.max(start + 1);
        let mut state = crate::sync::lock(&self.state);
        while state
            .held
            .iter()
            .any(|h| h.start < end && start < h.end && (h.exclusive || exclusive))
        {
            state = crate::sync::wait(&self.released, state);
        }
        let id = state.next_id;
        state.next_id += 1;
        state.held.push(Held {
            start,
            end,
            exclusive,
            id,
        });
        RangeGuard { lock: self, id }
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut state = crate::sync::lock(&self.lock.state);
        state.held.retain(|h| h.id != self.id);
        drop(state);
        self.lock.released.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[test]
    fn disjoint_writers_do_not_wait_overlapping_ones_do() {
        let lock = Arc::new(RangeLock::default());
        let a = lock.write(0, 4);
        let b = lock.write(4, 8);
        let readers = lock.read(10, 20);
        let more_readers = lock.read(12, 14);
        drop((b, readers, more_readers));
        let entered = Arc::new(AtomicBool::new(false));
        let (l, e) = (lock.clone(), entered.clone());
        let t = std::thread::spawn(move || {
            let _g = l.read(3, TO_END);
            e.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!entered.load(Ordering::SeqCst), "overlaps the held writer");
        drop(a);
        t.join().unwrap();
        assert!(entered.load(Ordering::SeqCst));
    }
}

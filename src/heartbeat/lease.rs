//! The lease the PHP thread and the heartbeat thread share: when the database last
//! acknowledged a beat, whether this thread reaps for its host, and the thread's counters.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use once_cell::sync::Lazy;

use crate::registry;

/// What the PHP thread and the heartbeat thread share about this registration.
pub struct Lease {
    /// The registration's row id (it changes if the row was pruned and registered again).
    pub(super) idprocess: AtomicU64,
    /// When the database last acknowledged a beat, in ms on a monotonic clock.
    pub(super) acknowledged_ms: AtomicU64,
    /// Whether the heartbeat thread holds this host's reaper lock.
    pub(super) reaping: AtomicBool,
    /// The last error the thread met (kept after it recovers, for phpinfo() and the plugin's
    /// page), when (monotonic ms), and counters.
    pub(super) last_error: Mutex<Option<String>>,
    pub(super) last_error_ms: AtomicU64,
    pub(super) beats: AtomicU64,
    /// Looks for orphans made (each reap pass, released anything or not).
    pub(super) reap_runs: AtomicU64,
    pub(super) released: AtomicU64,
    pub(super) errors: AtomicU64,
    /// None: not looked yet; Some(false): automatic reaping backs off (no index on status).
    pub(super) indexed: Mutex<Option<bool>>,
}

impl Lease {
    pub(super) fn new(idprocess: u64) -> Lease {
        let lease = Lease {
            idprocess: AtomicU64::new(idprocess),
            acknowledged_ms: AtomicU64::new(0),
            reaping: AtomicBool::new(false),
            last_error: Mutex::new(None),
            last_error_ms: AtomicU64::new(0),
            beats: AtomicU64::new(0),
            reap_runs: AtomicU64::new(0),
            released: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            indexed: Mutex::new(None),
        };
        lease.acknowledged();
        lease
    }

    pub(super) fn acknowledged(&self) {
        self.acknowledged_ms
            .store(monotonic_ms(), Ordering::Release);
        self.beats.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn age(&self) -> Duration {
        Duration::from_millis(
            monotonic_ms().saturating_sub(self.acknowledged_ms.load(Ordering::Acquire)),
        )
    }

    pub(super) fn idprocess(&self) -> u64 {
        self.idprocess.load(Ordering::Acquire)
    }

    pub(super) fn note_index(&self, indexed: bool) {
        if let Ok(mut i) = self.indexed.try_lock() {
            *i = Some(indexed);
        }
    }

    pub(super) fn note_error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.last_error_ms
            .store(monotonic_ms().max(1), Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.try_lock() {
            *last = Some(e);
        }
    }

    /// What the registry row shows of this thread (see `registry::heartbeat`).
    pub(super) fn counters(&self) -> registry::ThreadCounters {
        registry::ThreadCounters {
            beats: self.beats.load(Ordering::Relaxed),
            reap_runs: self.reap_runs.load(Ordering::Relaxed),
            released: self.released.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            last_error: self.last_error.try_lock().ok().and_then(|e| e.clone()),
        }
    }
}

pub(super) fn monotonic_ms() -> u64 {
    static BASE: Lazy<Instant> = Lazy::new(Instant::now);
    BASE.elapsed().as_millis() as u64
}

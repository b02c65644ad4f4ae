//! Staleness is observed, never computed from another clock.
//!
//! A registration's heartbeat is a token its owner changes at every beat (a version it bumps,
//! plus the timestamp it writes, so an owner of an older release that writes only the
//! timestamp changes it too). The token is compared for equality only: no clock reads it. A
//! watcher (the heartbeat thread) looks at every token right after each beat of its own that
//! the database acknowledged, and remembers since when, on its own monotonic clock, each token
//! has stayed the same. A registration is stale only once its token has stayed the same for a
//! full lease of such looks.
//!
//! Why not a timestamp: there is no single database clock once the database fails over to
//! another server or is a cluster (each Galera node answers `UTC_TIMESTAMP()` from its own
//! clock), and after an outage that hit everyone every heartbeat is old while every archiver is
//! alive. The watch starts afresh whenever its own beat or look fails, the connection is new,
//! or its connection went unanswered for longer than `max_gap` between a look and the next
//! (the thread was frozen, or blocked): the database may have been out of reach for everyone
//! in between, which is nobody's silence. A long duty whose every statement was answered
//! (a reap under load) is no such gap.
//!
//! The watch lives per process (a forked child starts with none) and is shared between the
//! heartbeat thread, which feeds it, and the PHP thread, whose `reap_orphans()` and
//! `in_progress()` read it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use once_cell::sync::Lazy;

/// What a registration shows of its heartbeat; it changes at every beat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BeatToken {
    /// `heartbeat_version`, bumped by every beat (None: the registry has no such column).
    pub version: Option<u64>,
    /// `heartbeat_at` exactly as stored (its bits: compared, never read as a time).
    heartbeat_at_bits: u64,
}

impl BeatToken {
    pub fn new(version: Option<u64>, heartbeat_at: f64) -> BeatToken {
        BeatToken {
            version,
            heartbeat_at_bits: heartbeat_at.to_bits(),
        }
    }

    /// The stored `heartbeat_at`, for the statement that fences a release on this token.
    pub fn heartbeat_at(&self) -> f64 {
        f64::from_bits(self.heartbeat_at_bits)
    }
}

/// What this process's watcher has seen of one registration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Silence {
    /// No unbroken watch covers it: no watcher in this process, a watch that just started
    /// afresh and has not looked at it yet, or a token newer than the watcher's last look.
    NotWatched,
    /// Watched without a break: its token has stayed the same for `unchanged_for` seconds of
    /// this process's monotonic clock; `saw_beat` if the watch saw it change at least once.
    Watched { unchanged_for: f64, saw_beat: bool },
}

impl Silence {
    /// Watched unchanged for at least `lease` seconds.
    pub fn is_silent_for(&self, lease: f64) -> bool {
        matches!(self, Silence::Watched { unchanged_for, .. } if *unchanged_for >= lease)
    }

    /// The watch saw it beat less than `lease` seconds ago.
    pub fn seen_beating_within(&self, lease: f64) -> bool {
        matches!(self, Silence::Watched { unchanged_for, saw_beat: true } if *unchanged_for < lease)
    }
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    token: BeatToken,
    since: Instant,
    saw_beat: bool,
}

/// One watcher's memory: since when each token has been the same, over looks that followed
/// one another within `max_gap`.
#[derive(Debug)]
pub struct Watch {
    max_gap: Duration,
    /// When the current unbroken stretch of looks began.
    since: Option<Instant>,
    last_look: Option<Instant>,
    /// When the watcher's connection last answered (a look, a beat, a reap): a long duty
    /// between two looks that succeeded shows the watcher was not frozen meanwhile.
    last_contact: Option<Instant>,
    seen: HashMap<u64, Seen>,
}

impl Watch {
    pub fn new(max_gap: Duration) -> Watch {
        Watch {
            max_gap,
            since: None,
            last_look: None,
            last_contact: None,
            seen: HashMap::new(),
        }
    }

    /// A look at every registration's token, made at `now` right after an acknowledged beat
    /// of our own. Registrations not in it are gone (unregistered or forgotten).
    pub fn look(&mut self, now: Instant, tokens: impl IntoIterator<Item = (u64, BeatToken)>) {
        let unbroken = self.last_look.is_some()
            && self
                .last_contact
                .is_some_and(|last| now.saturating_duration_since(last) <= self.max_gap);
        if !unbroken {
            self.seen.clear();
            self.since = Some(now);
        }
        let mut next = HashMap::with_capacity(self.seen.len());
        for (idprocess, token) in tokens {
            let seen = match self.seen.get(&idprocess) {
                Some(s) if s.token == token => *s,
                Some(_) => Seen {
                    token,
                    since: now,
                    saw_beat: true,
                },
                None => Seen {
                    token,
                    since: now,
                    saw_beat: false,
                },
            };
            next.insert(idprocess, seen);
        }
        self.seen = next;
        self.last_look = Some(now);
        self.last_contact = Some(now);
    }

    /// The watcher's connection answered at `now` (everything it asked since the last look
    /// succeeded).
    pub fn contact(&mut self, now: Instant) {
        if self.last_look.is_some() {
            self.last_contact = Some(now);
        }
    }

    /// Our own beat or look failed, or the connection is new: nothing seen so far proves a
    /// silence any more.
    pub fn broken(&mut self) {
        self.seen.clear();
        self.since = None;
        self.last_look = None;
        self.last_contact = None;
    }

    /// How long the current stretch of looks has run without a break (zero: none runs).
    pub fn unbroken_for(&self, now: Instant) -> Duration {
        match (self.since, self.last_look, self.last_contact) {
            (Some(since), Some(last), Some(contact))
                if now.saturating_duration_since(contact) <= self.max_gap =>
            {
                last.saturating_duration_since(since)
            }
            _ => Duration::ZERO,
        }
    }

    /// What the watch says of `idprocess` whose token a caller read as `token` at `now`.
    pub fn silence(&self, idprocess: u64, token: BeatToken, now: Instant) -> Silence {
        let (Some(last), Some(contact)) = (self.last_look, self.last_contact) else {
            return Silence::NotWatched;
        };
        // A watcher that stopped answering (its thread stopped, or is stuck) vouches for nothing.
        if now.saturating_duration_since(contact) > self.max_gap {
            return Silence::NotWatched;
        }
        match self.seen.get(&idprocess) {
            // Unchanged only as far as the last look can tell.
            Some(s) if s.token == token => Silence::Watched {
                unchanged_for: last.saturating_duration_since(s.since).as_secs_f64(),
                saw_beat: s.saw_beat,
            },
            // The caller read a newer token than the last look: it beat just now.
            Some(_) => Silence::Watched {
                unchanged_for: 0.0,
                saw_beat: true,
            },
            None => Silence::NotWatched,
        }
    }
}

/// Whether a caller of this process asked for the watch (`reap_orphans()`): its heartbeat
/// thread then watches even where it does not reap by itself.
static WANTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub fn want() {
    WANTED.store(true, std::sync::atomic::Ordering::Relaxed);
}

pub fn wanted() -> bool {
    WANTED.load(std::sync::atomic::Ordering::Relaxed)
}

/// This process's watch (None until a heartbeat thread of this process starts one), with the
/// pid that made it: a forked child's copy is its parent's, and vouches for nothing there.
static SHARED: Lazy<Mutex<Option<(u32, Watch)>>> = Lazy::new(|| Mutex::new(None));

/// Runs `f` on this process's watch, starting one with `max_gap` if there is none.
pub fn feed(max_gap: Duration, f: impl FnOnce(&mut Watch)) {
    if let Ok(mut shared) = SHARED.lock() {
        let pid = std::process::id();
        match shared.as_mut() {
            Some((owner, watch)) if *owner == pid => {
                watch.max_gap = max_gap;
                f(watch)
            }
            _ => {
                let mut watch = Watch::new(max_gap);
                f(&mut watch);
                *shared = Some((pid, watch));
            }
        }
    }
}

/// What this process's watch says of a registration (NotWatched without one).
pub fn observed(idprocess: u64, token: BeatToken) -> Silence {
    let now = Instant::now();
    SHARED
        .lock()
        .ok()
        .and_then(|shared| {
            shared
                .as_ref()
                .filter(|(owner, _)| *owner == std::process::id())
                .map(|(_, watch)| watch.silence(idprocess, token, now))
        })
        .unwrap_or(Silence::NotWatched)
}

/// How long this process's watch has run without a break (zero without one).
pub fn unbroken_for() -> Duration {
    let now = Instant::now();
    SHARED
        .lock()
        .ok()
        .and_then(|shared| {
            shared
                .as_ref()
                .filter(|(owner, _)| *owner == std::process::id())
                .map(|(_, watch)| watch.unbroken_for(now))
        })
        .unwrap_or(Duration::ZERO)
}

/// The watcher's connection answered everything it was asked since the last look.
pub fn contact() {
    let now = Instant::now();
    if let Ok(mut shared) = SHARED.lock() {
        if let Some((owner, watch)) = shared.as_mut() {
            if *owner == std::process::id() {
                watch.contact(now);
            }
        }
    }
}

/// Forgets everything watched (the watcher's connection was lost).
pub fn broken() {
    if let Ok(mut shared) = SHARED.lock() {
        if let Some((owner, watch)) = shared.as_mut() {
            if *owner == std::process::id() {
                watch.broken();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GAP: Duration = Duration::from_secs(2);

    fn t(v: u64) -> BeatToken {
        BeatToken::new(Some(v), 1_800_000_000.0 + v as f64)
    }

    fn secs(base: Instant, s: f64) -> Instant {
        base + Duration::from_secs_f64(s)
    }

    fn watched_every_second(watch: &mut Watch, base: Instant, until: u32, token: BeatToken) {
        for s in 0..=until {
            watch.look(secs(base, s as f64), [(7, token)]);
        }
    }

    #[test]
    fn a_token_unchanged_over_unbroken_looks_is_silent_for_that_long() {
        let base = Instant::now();
        let mut w = Watch::new(GAP);
        watched_every_second(&mut w, base, 10, t(1));
        let s = w.silence(7, t(1), secs(base, 10.5));
        assert_eq!(
            s,
            Silence::Watched {
                unchanged_for: 10.0,
                saw_beat: false
            }
        );
        assert!(s.is_silent_for(10.0));
        assert!(!s.is_silent_for(10.5));
    }

    #[test]
    fn a_beat_restarts_the_silence_and_is_seen() {
        let base = Instant::now();
        let mut w = Watch::new(GAP);
        watched_every_second(&mut w, base, 5, t(1));
        w.look(secs(base, 6.0), [(7, t(2))]);
        w.look(secs(base, 7.0), [(7, t(2))]);
        let s = w.silence(7, t(2), secs(base, 7.0));
        assert_eq!(
            s,
            Silence::Watched {
                unchanged_for: 1.0,
                saw_beat: true
            }
        );
        assert!(s.seen_beating_within(3.0));
        assert!(!s.is_silent_for(3.0));
    }

    #[test]
    fn a_gap_between_looks_starts_the_watch_afresh() {
        // The database may have been out of everyone's reach while we did not look.
        let base = Instant::now();
        let mut w = Watch::new(GAP);
        watched_every_second(&mut w, base, 5, t(1));
        w.look(secs(base, 30.0), [(7, t(1))]);
        let s = w.silence(7, t(1), secs(base, 30.0));
        assert_eq!(
            s,
            Silence::Watched {
                unchanged_for: 0.0,
                saw_beat: false
            }
        );
    }

    #[test]
    fn a_long_duty_that_succeeded_between_two_looks_does_not_break_the_watch() {
        // A reap that took five seconds under load, every statement of it answered.
        let base = Instant::now();
        let mut w = Watch::new(GAP);
        watched_every_second(&mut w, base, 5, t(1));
        w.contact(secs(base, 9.5));
        w.look(secs(base, 10.0), [(7, t(1))]);
        assert!(w.silence(7, t(1), secs(base, 10.0)).is_silent_for(10.0));
    }

    #[test]
    fn a_broken_watch_vouches_for_nothing_until_it_looks_again() {
        let base = Instant::now();
        let mut w = Watch::new(GAP);
        watched_every_second(&mut w, base, 10, t(1));
        w.broken();
        assert_eq!(w.silence(7, t(1), secs(base, 10.0)), Silence::NotWatched);
        w.look(secs(base, 11.0), [(7, t(1))]);
        assert!(!w.silence(7, t(1), secs(base, 11.0)).is_silent_for(1.0));
    }

    #[test]
    fn the_unbroken_stretch_counts_from_the_first_look_after_a_break() {
        let base = Instant::now();
        let mut w = Watch::new(GAP);
        assert_eq!(w.unbroken_for(base), Duration::ZERO);
        watched_every_second(&mut w, base, 10, t(1));
        assert_eq!(w.unbroken_for(secs(base, 10.5)), Duration::from_secs(10));
        w.look(secs(base, 20.0), [(7, t(1))]);
        assert_eq!(w.unbroken_for(secs(base, 20.0)), Duration::ZERO);
        w.broken();
        assert_eq!(w.unbroken_for(secs(base, 20.0)), Duration::ZERO);
    }

    #[test]
    fn a_watcher_that_stopped_looking_vouches_for_nothing() {
        let base = Instant::now();
        let mut w = Watch::new(GAP);
        watched_every_second(&mut w, base, 10, t(1));
        assert_eq!(w.silence(7, t(1), secs(base, 13.0)), Silence::NotWatched);
    }

    #[test]
    fn a_token_newer_than_the_last_look_is_a_beat() {
        let base = Instant::now();
        let mut w = Watch::new(GAP);
        watched_every_second(&mut w, base, 10, t(1));
        let s = w.silence(7, t(2), secs(base, 10.2));
        assert!(s.seen_beating_within(1.0));
        assert!(!s.is_silent_for(0.1));
    }

    #[test]
    fn an_older_owner_that_writes_only_the_timestamp_still_beats() {
        let base = Instant::now();
        let mut w = Watch::new(GAP);
        w.look(base, [(7, BeatToken::new(Some(0), 100.0))]);
        w.look(secs(base, 1.0), [(7, BeatToken::new(Some(0), 101.0))]);
        assert!(w
            .silence(7, BeatToken::new(Some(0), 101.0), secs(base, 1.0))
            .seen_beating_within(3.0));
    }

    #[test]
    fn registrations_never_looked_at_are_not_watched() {
        let base = Instant::now();
        let mut w = Watch::new(GAP);
        watched_every_second(&mut w, base, 10, t(1));
        assert_eq!(w.silence(8, t(1), secs(base, 10.0)), Silence::NotWatched);
    }

    #[test]
    fn a_registration_that_appears_late_is_silent_only_from_when_it_was_first_seen() {
        let base = Instant::now();
        let mut w = Watch::new(GAP);
        for s in 0..=10 {
            let mut tokens = vec![(7, t(1))];
            if s >= 8 {
                tokens.push((9, t(5)));
            }
            w.look(secs(base, s as f64), tokens);
        }
        assert_eq!(
            w.silence(9, t(5), secs(base, 10.0)),
            Silence::Watched {
                unchanged_for: 2.0,
                saw_beat: false
            }
        );
    }
}

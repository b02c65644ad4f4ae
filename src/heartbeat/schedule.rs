//! When each duty of the heartbeat thread is due: pure functions of when it last ran, its
//! period, the facts it depends on and the time now, so they are tested without a database
//! and without waiting.

use std::time::{Duration, Instant};

use crate::registry::Watched;
use crate::settings::HeartbeatSettings;
use crate::watch::Silence;

/// How often the host's reaper reads which local processes to watch (a small read of the
/// registry, not of the invalidations): a process that registered since is watched from then.
pub(super) const WATCH_REFRESH: Duration = Duration::from_secs(1);

/// The registry is pruned every this many leases.
pub(super) const PRUNE_AFTER_LEASES: u32 = 60;

/// Registrations that no row names any more are pruned once watched silent this many leases.
pub(super) const PRUNE_SILENT_LEASES: f64 = 3.0;

/// When the next beat is due; the first is due at `first` (at once for a process that takes the
/// reaper locks while its registration is new; an interval after it for an archiving child,
/// whose registration was just written).
pub(super) struct BeatClock {
    next: Instant,
    interval: Duration,
}

impl BeatClock {
    pub(super) fn new(interval: Duration, first: Instant) -> BeatClock {
        BeatClock {
            next: first,
            interval,
        }
    }

    /// How long the thread may wait for a death or a stop: until the next beat, and no longer
    /// than the watch is refreshed.
    pub(super) fn wait(&self, now: Instant) -> Duration {
        self.next.saturating_duration_since(now).min(WATCH_REFRESH)
    }

    /// Whether a beat is due at `now`; if so, the next one is an interval after it.
    pub(super) fn take(&mut self, now: Instant) -> bool {
        let due = now >= self.next;
        if due {
            self.next = now + self.interval;
        }
        due
    }
}

/// Whether a duty last done at `last` (never: None) is due again.
pub(super) fn due(last: Option<Instant>, period: Duration, now: Instant) -> bool {
    last.is_none_or(|at| now.saturating_duration_since(at) >= period)
}

/// How often to look for orphans in the invalidations table: every interval where an index
/// starts with `status`; where none does (or it is not known yet), every look is a scan of the
/// whole table, so once per lease.
pub(super) fn look_period(indexed: Option<bool>, settings: &HeartbeatSettings) -> Duration {
    if indexed == Some(true) {
        settings.interval
    } else {
        settings.lease
    }
}

/// This host's look at its rows: at once when a watched process died, else once per `period`.
pub(super) fn local_reap_due(
    local_death: bool,
    last: Option<Instant>,
    period: Duration,
    now: Instant,
) -> bool {
    local_death || due(last, period, now)
}

/// How long after a look at this host's rows the next is due with no death seen: a lease, or
/// an interval while rows wait only for a starting archiving child to register.
pub(super) fn local_look_period(recheck_soon: bool, settings: &HeartbeatSettings) -> Duration {
    if recheck_soon {
        settings.interval
    } else {
        settings.lease
    }
}

/// How far apart two looks of the watcher may lie before its watch starts afresh: two beats,
/// so one late tick (a busy machine) does not throw a lease of watching away, while a thread
/// that was frozen or blocked longer vouches for nothing it did not see.
pub(super) fn watch_max_gap(settings: &HeartbeatSettings) -> Duration {
    (settings.interval * 2).max(Duration::from_secs(2))
}

/// The silence after which a registration's heartbeat is stale: the longer of the process's
/// own lease and ours.
pub(super) fn stale_after(own_lease: Option<f64>, lease: Duration) -> f64 {
    let ours = lease.as_secs_f64();
    own_lease
        .filter(|l| l.is_finite())
        .map_or(ours, |own| own.max(ours))
}

/// The hosts other than ours with a registration watched silent for `leases` of its lease.
pub(super) fn silent_hosts(
    looked: &[(Watched, Silence)],
    own_host: Option<&str>,
    lease: Duration,
    leases: f64,
) -> Vec<String> {
    let mut hosts: Vec<String> = looked
        .iter()
        .filter(|(w, s)| s.is_silent_for(stale_after(w.lease_seconds, lease) * leases))
        .filter_map(|(w, _)| w.host.clone())
        .filter(|h| Some(h.as_str()) != own_host)
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

/// Whether registrations stale for many leases are to be pruned now.
pub(super) fn prune_due(last_prune: Instant, lease: Duration, now: Instant) -> bool {
    now.saturating_duration_since(last_prune) > lease * PRUNE_AFTER_LEASES
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::watch::BeatToken;

    const S: Duration = Duration::from_secs(1);

    fn settings(interval: u64, lease: u64) -> HeartbeatSettings {
        HeartbeatSettings {
            interval: S * interval as u32,
            lease: S * lease as u32,
            auto_reap: true,
            host_name_shared: false,
        }
    }

    #[test]
    fn the_first_beat_is_at_once_then_every_interval() {
        let t0 = Instant::now();
        let mut clock = BeatClock::new(S * 5, t0);
        assert_eq!(clock.wait(t0), Duration::ZERO);
        assert!(clock.take(t0));
        assert!(!clock.take(t0 + S * 4));
        assert!(clock.take(t0 + S * 5));
        // A late wake-up counts the interval from when the beat happened, not when it was due.
        assert!(!clock.take(t0 + S * 9));
        assert!(clock.take(t0 + S * 12));
        assert!(!clock.take(t0 + S * 16));
        assert!(clock.take(t0 + S * 17));
    }

    #[test]
    fn the_thread_waits_no_longer_than_the_watch_refresh() {
        let t0 = Instant::now();
        let mut clock = BeatClock::new(S * 5, t0);
        assert!(clock.take(t0));
        assert_eq!(clock.wait(t0), WATCH_REFRESH);
        assert_eq!(clock.wait(t0 + S * 4 + S / 2), S / 2);
        assert_eq!(clock.wait(t0 + S * 7), Duration::ZERO, "overdue: no wait");
    }

    #[test]
    fn a_duty_never_done_is_due_and_one_done_is_due_after_its_period() {
        let t0 = Instant::now();
        assert!(due(None, S * 60, t0));
        assert!(!due(Some(t0), S * 3, t0 + S * 2));
        assert!(due(Some(t0), S * 3, t0 + S * 3));
        // A clock read before the last run (a caller's stale `now`) is not due.
        assert!(!due(Some(t0 + S), S, t0));
    }

    #[test]
    fn the_look_is_every_interval_only_where_status_is_known_to_be_indexed() {
        let s = settings(5, 30);
        assert_eq!(look_period(Some(true), &s), S * 5);
        assert_eq!(look_period(Some(false), &s), S * 30);
        assert_eq!(look_period(None, &s), S * 30);
    }

    #[test]
    fn this_host_is_looked_at_once_a_lease_or_at_once_after_a_death() {
        let t0 = Instant::now();
        let lease = S * 30;
        assert!(local_reap_due(false, None, lease, t0));
        assert!(!local_reap_due(false, Some(t0), lease, t0 + S * 29));
        assert!(local_reap_due(true, Some(t0), lease, t0 + S));
        assert!(local_reap_due(false, Some(t0), lease, t0 + lease));
    }

    #[test]
    fn rows_waiting_for_a_child_to_register_are_looked_at_again_an_interval_later() {
        let settings = HeartbeatSettings::parse(Some("2"), Some("30"), None);
        assert_eq!(local_look_period(true, &settings), S * 2);
        assert_eq!(local_look_period(false, &settings), S * 30);
    }

    fn looked(host: &str, unchanged_for: f64, own_lease: Option<f64>) -> (Watched, Silence) {
        (
            Watched {
                idprocess: 1,
                host: Some(host.into()),
                token: BeatToken::new(Some(1), 1.0),
                lease_seconds: own_lease,
            },
            Silence::Watched {
                unchanged_for,
                saw_beat: true,
            },
        )
    }

    #[test]
    fn only_hosts_watched_silent_for_their_lease_are_looked_at_and_never_our_own() {
        let lease = S * 30;
        let looked = [
            looked("server2", 31.0, None),
            looked("server3", 29.0, None),
            looked("server1", 300.0, None),
            looked("server4", 45.0, Some(60.0)),
            (
                Watched {
                    idprocess: 9,
                    host: Some("server5".into()),
                    token: BeatToken::new(None, 1.0),
                    lease_seconds: None,
                },
                Silence::NotWatched,
            ),
        ];
        assert_eq!(
            silent_hosts(&looked, Some("server1"), lease, 1.0),
            vec!["server2".to_owned()]
        );
        assert!(silent_hosts(&looked, Some("server1"), lease, 3.0).is_empty());
    }

    #[test]
    fn the_watch_allows_one_late_tick() {
        assert_eq!(watch_max_gap(&settings(1, 3)), S * 2);
        assert_eq!(watch_max_gap(&settings(5, 60)), S * 10);
    }

    #[test]
    fn registrations_are_pruned_after_sixty_leases() {
        let t0 = Instant::now();
        let lease = S * 3;
        assert!(!prune_due(t0, lease, t0 + S * 180));
        assert!(prune_due(t0, lease, t0 + S * 181));
        assert!(
            !prune_due(t0 + S, lease, t0),
            "a stale clock prunes nothing"
        );
    }
}

//! The heartbeat thread: a loop that waits (for a stop, a watched death or the next beat) and
//! then ticks, running each duty that is due. Errors are never fatal: the connection is dropped
//! and the next tick tries again; only a stop request ends the loop.
//!
//! Its duties, each on its own schedule (see `duties` and `schedule`):
//! - **beat** every interval, and right after it **look** at every registration's heartbeat
//!   (the watch that alone can call one stale);
//! - **elect**: at each beat, try to take this host's and the fleet's reaper locks;
//! - **reap this host** if it holds the host's reaper lock: at once when a watched local owner
//!   dies (the kernel says so through a pidfd), else once per lease;
//! - **reap silent hosts** if it holds the fleet's lock: every interval where an index on
//!   `status` makes the look cheap (once per lease where the table would be scanned);
//! - **prune** registrations watched silent for a few leases that no row names;
//! - **report** what went wrong (once per run of equal errors) and what it released.

use std::sync::Arc;
use std::time::Instant;

use mysql::Conn;

use crate::config::DbConfig;
use crate::connection;
use crate::pidfd;
use crate::registry;
use crate::thread_log::LogTarget;

use super::duties::{Beat, Election, IndexLook, Link, LocalReaper, Prune, StaleHosts, Watcher};
use super::lease::Lease;
use super::report::Report;
use super::schedule::BeatClock;
use super::Registered;

pub(super) struct Heartbeat {
    link: Link,
    report: Report,
    clock: BeatClock,
    beat: Beat,
    watcher: Watcher,
    election: Election,
    index: IndexLook,
    local: LocalReaper,
    stale: StaleHosts,
    prune: Prune,
}

impl Heartbeat {
    pub(super) fn new(
        config: DbConfig,
        registered: Registered,
        lease: Arc<Lease>,
        conn: Option<Conn>,
        log: LogTarget,
        announce: bool,
    ) -> Heartbeat {
        let now = Instant::now();
        Heartbeat {
            report: Report::new(log, announce, &registered.identity),
            clock: BeatClock::new(
                registered.settings.interval,
                if registered.identity.is_archiving_child() {
                    now + registered.settings.interval
                } else {
                    now
                },
            ),
            beat: Beat::new(),
            watcher: Watcher::new(),
            election: Election::new(),
            index: IndexLook::new(),
            local: LocalReaper::new(),
            stale: StaleHosts::new(),
            prune: Prune::new(now),
            link: Link {
                config,
                registered,
                lease,
                conn,
            },
        }
    }

    pub(super) fn run(mut self, stop: pidfd::StopSignal) {
        self.report
            .started(&self.link.lease, &self.link.registered.settings);
        loop {
            let wait = self.clock.wait(Instant::now());
            if self.local.wait(&stop, wait) == pidfd::Wake::Stop {
                break;
            }
            self.tick(Instant::now());
        }
        let Link {
            config,
            registered,
            lease,
            conn,
        } = &mut self.link;
        let idprocess = lease.idprocess();
        let child = registered.identity.is_archiving_child();
        if idprocess == 0 {
            // A child that ended before its first beat: it never wrote a registration.
            return;
        }
        if let Some(c) = conn.as_mut() {
            // The last minute's counts, so a run shorter than a minute is on the load chart too
            // (a child claims nothing: it has none).
            if !child {
                crate::load::tick(c, config, true);
            }
            let _ = registry::unregister(c, config, idprocess);
        } else if let Ok(mut c) =
            connection::connect_for(config, super::beat_purpose(&registered.identity))
        {
            let _ = registry::unregister(&mut c, config, idprocess);
        }
    }

    /// Runs what is due at `now` (the beat, and the duties that follow it), and reports how it
    /// went.
    fn tick(&mut self, now: Instant) {
        let beat_due = self.clock.take(now);
        let outcome = self.connected(beat_due);
        self.report.outcome(&self.link.lease, outcome);
    }

    fn connected(&mut self, beat_due: bool) -> std::result::Result<(), String> {
        // An archiving child has nothing to do but beat: it connects only when a beat is due
        // (its first, which also registers it, an interval after it started).
        let child = self.link.registered.identity.is_archiving_child();
        if self.link.conn.is_none() && child && !beat_due {
            return Ok(());
        }
        if self.link.conn.is_none() {
            // Locks were tied to the old connection, and a new one vouches for nothing the
            // watch saw through the old.
            self.election.lost(&self.link.lease);
            self.watcher.broken();
            let purpose = super::beat_purpose(&self.link.registered.identity);
            self.link.conn = Some(
                connection::connect_for(&self.link.config, purpose).map_err(|e| e.to_string())?,
            );
        }
        let result = self.duties(beat_due);
        if result.is_ok() {
            crate::watch::contact();
        }
        if let Err(e) = &result {
            if connection::is_connection_lost(e) {
                // A new connection vouches for nothing the old one saw.
                self.watcher.broken();
                self.link.conn = None;
            }
        }
        result.map_err(|e| e.to_string())
    }

    fn duties(&mut self, beat_due: bool) -> std::result::Result<(), mysql::Error> {
        let settings = self.link.registered.settings;
        // An archiving child (it works for a `core:archive` parent) only beats: it lives for
        // one archive, its parent's host reaper sees its processes, and every statement it
        // saves is saved once per archive.
        let reaps = settings.auto_reap && !self.link.registered.identity.is_archiving_child();
        let link = &mut self.link;
        if beat_due {
            // A beat or a look that failed: the database may not have taken everyone's writes
            // meanwhile, so the watch starts afresh. (A later duty that fails, a reap that lost
            // a deadlock, say, was answered: the connection works.)
            if let Err(e) = self.beat.run(link) {
                self.watcher.broken();
                return Err(e);
            }
            // A child claims nothing, so it has no load to write (nor the history to prune).
            if !link.registered.identity.is_archiving_child() {
                if let Some(conn) = link.conn.as_mut() {
                    crate::load::tick(conn, &link.config, false);
                }
            }
            if reaps || crate::watch::wanted() {
                if let Err(e) = self.watcher.run(link) {
                    self.watcher.broken();
                    return Err(e);
                }
            }
        }
        if !reaps {
            return Ok(());
        }
        if beat_due {
            self.election.run(link)?;
        }
        if link.host_reaper() {
            self.local.refresh_watch(link)?;
        }
        if link.host_reaper() && self.local.due(link, &mut self.index)? {
            self.local.run(link, &mut self.report)?;
        }
        if self.election.fleet_reaper() && beat_due {
            self.stale.run(
                link,
                self.watcher.looked(),
                &mut self.index,
                &mut self.report,
            )?;
        }
        if self.prune.due(settings.lease) && self.prune.run(link, self.watcher.looked())? {
            self.index.forget();
        }
        Ok(())
    }
}

//! The heartbeat thread's duties, each with its own state: beat the lease, watch every
//! registration's heartbeat, take the reaper locks (the election), watch and reap this host,
//! reap hosts gone silent, prune the registry.
//! When each is due is decided in `schedule`; the thread (`thread`) runs them in that order.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql::Conn;

use crate::config::DbConfig;
use crate::connection::WorkError;
use crate::identity;
use crate::liveness::{self, LocalView};
use crate::pidfd;
use crate::reap::{self, Action, ReapEntry, ReapOptions};
use crate::registry::{self, ReaperDuty, Watched};
use crate::schema;
use crate::settings::HeartbeatSettings;
use crate::watch::{self, Silence};

use super::lease::Lease;
use super::report::Report;
use super::schedule::{self, PRUNE_SILENT_LEASES};
use super::{record_releases, Registered};

/// What every duty works with: the thread's connection and this registration.
pub(super) struct Link {
    pub(super) config: DbConfig,
    pub(super) registered: Registered,
    pub(super) lease: Arc<Lease>,
    /// None after the connection was lost; the thread opens it again before any duty runs.
    pub(super) conn: Option<Conn>,
}

impl Link {
    fn settings(&self) -> HeartbeatSettings {
        self.registered.settings
    }

    /// Whether this thread holds its host's reaper lock (kept in the lease, which phpinfo()
    /// and a re-registration at claim time read too).
    pub(super) fn host_reaper(&self) -> bool {
        self.lease.reaping.load(Ordering::Relaxed)
    }
}

/// The open connection (the thread opens it before any duty runs).
fn open(conn: &mut Option<Conn>) -> std::result::Result<&mut Conn, mysql::Error> {
    conn.as_mut().ok_or(mysql::Error::DriverError(
        mysql::DriverError::ConnectTimeout,
    ))
}

/// Beats: the database acknowledges the lease (and keeps the thread's counters).
pub(super) struct Beat {
    /// False once the registry turned out to lack the counter columns (an older schema).
    counter_columns: bool,
}

impl Beat {
    pub(super) fn new() -> Beat {
        Beat {
            counter_columns: true,
        }
    }

    pub(super) fn run(&mut self, link: &mut Link) -> std::result::Result<(), mysql::Error> {
        let reaps = link.host_reaper();
        let Link {
            config,
            registered,
            lease,
            conn,
        } = link;
        let idprocess = lease.idprocess();
        // The counters as of the previous beat (this one is counted once acknowledged).
        let counters = self.counter_columns.then(|| lease.counters());
        // 0: an archiving child whose registration waited for its first beat (see
        // `heartbeat::ensure_child_registered`): there is no row to beat yet.
        let (found, counters_written) = if idprocess == 0 {
            (false, true)
        } else {
            registry::heartbeat(open(conn)?, config, idprocess, counters.as_ref())?
        };
        if counters.is_some() && !counters_written {
            self.counter_columns = false;
        }
        if !found {
            // Not written yet (a detached child's), or pruned while we were frozen: register
            // (again). The rows we hold may have been reaped meanwhile; our fenced
            // complete/release then simply changes nothing.
            let id = registry::register(
                open(conn)?,
                config,
                &registered.identity,
                reaps,
                registered.time_zone.as_deref(),
                registered.settings.lease.as_secs_f64(),
            )?;
            lease.idprocess.store(id, Ordering::Release);
        }
        lease.acknowledged();
        Ok(())
    }
}

/// Looks at every registration's heartbeat right after a beat of ours the database
/// acknowledged, so that the watch (`watch`) counts a silence only while the database took
/// writes from us: an outage that hit everyone is nobody's silence.
pub(super) struct Watcher {
    /// The last look, each registration with what the watch says of it.
    looked: Vec<(Watched, Silence)>,
}

impl Watcher {
    pub(super) fn new() -> Watcher {
        Watcher { looked: Vec::new() }
    }

    pub(super) fn looked(&self) -> &[(Watched, Silence)] {
        &self.looked
    }

    /// Our beat or look failed, or the connection is new: the watch starts afresh.
    pub(super) fn broken(&mut self) {
        self.looked.clear();
        watch::broken();
    }

    pub(super) fn run(&mut self, link: &mut Link) -> std::result::Result<(), mysql::Error> {
        let tokens = registry::tokens(open(&mut link.conn)?, &link.config)?;
        let now = Instant::now();
        watch::feed(schedule::watch_max_gap(&link.settings()), |w| {
            w.look(now, tokens.iter().map(|t| (t.idprocess, t.token)))
        });
        self.looked = tokens
            .into_iter()
            .map(|t| {
                let silence = watch::observed(t.idprocess, t.token);
                (t, silence)
            })
            .collect();
        Ok(())
    }
}

/// The reaper locks: one process per host reaps that host, one in the fleet reaps hosts gone
/// stale. A lock is tied to the connection that took it.
pub(super) struct Election {
    fleet_reaper: bool,
}

impl Election {
    pub(super) fn new() -> Election {
        Election {
            fleet_reaper: false,
        }
    }

    pub(super) fn fleet_reaper(&self) -> bool {
        self.fleet_reaper
    }

    /// The connection was lost, and with it the locks.
    pub(super) fn lost(&mut self, lease: &Lease) {
        self.fleet_reaper = false;
        lease.reaping.store(false, Ordering::Relaxed);
    }

    pub(super) fn run(&mut self, link: &mut Link) -> std::result::Result<(), mysql::Error> {
        let host_reaper = link.host_reaper();
        let Link {
            config,
            registered,
            lease,
            conn,
        } = link;
        let idprocess = lease.idprocess();
        if !host_reaper {
            let conn = open(conn)?;
            let host = registered.identity.host.as_deref();
            if registry::try_reaper_lock(conn, config, ReaperDuty::Host(host))? {
                registry::set_reaps(conn, config, idprocess, true)?;
                lease.reaping.store(true, Ordering::Relaxed);
            }
        }
        // The fleet's reaper acts on silences it watched: a process takes that duty only once
        // its own watch has run unbroken for a lease, so that a run of short-lived processes
        // (archiving children) cannot hold it in turn while none of them ever watches long
        // enough to release a host that lost power.
        if !self.fleet_reaper && watch::unbroken_for() >= registered.settings.lease {
            let conn = open(conn)?;
            self.fleet_reaper = registry::try_reaper_lock(conn, config, ReaperDuty::StaleHosts)?;
        }
        Ok(())
    }
}

/// Whether `status` is indexed, which sets how often the fleet looks at stale hosts (and
/// phpinfo() shows why).
pub(super) struct IndexLook {
    /// None: not looked yet, or looked too long ago.
    indexed: Option<bool>,
}

impl IndexLook {
    pub(super) fn new() -> IndexLook {
        IndexLook { indexed: None }
    }

    /// An operator may have added the index meanwhile: look again when next asked.
    pub(super) fn forget(&mut self) {
        self.indexed = None;
    }

    pub(super) fn period(
        &mut self,
        link: &mut Link,
    ) -> std::result::Result<Duration, mysql::Error> {
        if self.indexed.is_none() {
            let indexed = schema::status_is_indexed(open(&mut link.conn)?, &link.config)?;
            self.indexed = Some(indexed);
            link.lease.note_index(indexed);
        }
        Ok(schedule::look_period(self.indexed, &link.settings()))
    }
}

/// This host's reaper: watches the local processes (the kernel wakes the thread when one dies)
/// and looks at this host's rows at once after a death, else once per lease. Between looks
/// every registered local process and every owner of a row at the last look is watched, so a
/// periodic look can only find a stock claimer that claimed since the last one and died: a look
/// every interval cost each host a read of its rows every few seconds (with 50 hosts, most of
/// the database's background time) to find those a lease sooner.
pub(super) struct LocalReaper {
    watch: pidfd::Watch,
    /// A watched local owner died: reap this host now.
    local_death: bool,
    last_reap: Option<Instant>,
    /// Local pids that owned rows at the last look (stock claimers among them).
    row_owners: Vec<u32>,
    /// Pids already found gone, so a registration kept as evidence wakes nobody twice.
    gone: HashSet<u32>,
    /// The last look kept a dead owner's rows only because a batch-of-one archiving child had
    /// not registered yet: it registers within moments of its start (or dies), and nothing
    /// wakes the thread when it does, so look again an interval later, not a lease.
    recheck_soon: bool,
}

impl LocalReaper {
    pub(super) fn new() -> LocalReaper {
        LocalReaper {
            watch: pidfd::Watch::default(),
            local_death: false,
            last_reap: None,
            row_owners: Vec::new(),
            gone: HashSet::new(),
            recheck_soon: false,
        }
    }

    /// Waits for a stop, a watched death or the timeout.
    pub(super) fn wait(&mut self, stop: &pidfd::StopSignal, timeout: Duration) -> pidfd::Wake {
        let wake = self.watch.wait(stop, timeout);
        if wake == pidfd::Wake::Died {
            self.local_death = true;
        }
        wake
    }

    /// Watches every local process that owns a row or is registered on this machine (a cheap
    /// read of the registry): its death wakes the thread. One that is already gone when first
    /// seen asks for a look now.
    pub(super) fn refresh_watch(
        &mut self,
        link: &mut Link,
    ) -> std::result::Result<(), mysql::Error> {
        let me = &link.registered.identity;
        let local = reap::ProcFs::default();
        // An archiving child's death matters only once its parent is gone (then the child was
        // what kept the parent's claims alive): while the parent runs, a child that ends (one
        // per archive) must not wake a look at this host's rows.
        let mut pids: Vec<u32> =
            registry::pids_on_machine(open(&mut link.conn)?, &link.config, me)?
                .into_iter()
                .filter(|(_, parent)| {
                    parent.is_none_or(|p| {
                        !matches!(local.process(p), liveness::LocalProcess::Running { .. })
                    })
                })
                .map(|(pid, _)| pid)
                .collect();
        pids.extend(&self.row_owners);
        pids.retain(|p| *p != me.pid);
        pids.sort_unstable();
        pids.dedup();
        self.gone.retain(|p| pids.contains(p));
        for pid in self.watch.watch_only(&pids) {
            if self.gone.insert(pid) {
                self.local_death = true;
            }
        }
        Ok(())
    }

    pub(super) fn due(
        &self,
        link: &mut Link,
        index: &mut IndexLook,
    ) -> std::result::Result<bool, mysql::Error> {
        // The index decides the fleet's look at stale hosts; phpinfo() shows it either way.
        index.period(link)?;
        Ok(schedule::local_reap_due(
            self.local_death,
            self.last_reap,
            schedule::local_look_period(self.recheck_soon, &link.settings()),
            Instant::now(),
        ))
    }

    pub(super) fn run(
        &mut self,
        link: &mut Link,
        report: &mut Report,
    ) -> std::result::Result<(), mysql::Error> {
        self.local_death = false;
        self.last_reap = Some(Instant::now());
        let host = link.registered.identity.host.clone();
        let released = release_proven_dead(link, report, host.clone().into_iter().collect())?;
        let kept: Vec<(u32, liveness::Reason)> = released
            .iter()
            .flat_map(|r| &r.entries)
            .filter(|e| e.action == Action::Kept && e.row.processing_host == host)
            .filter_map(|e| {
                e.row
                    .process_id
                    .as_deref()
                    .and_then(liveness::plausible_pid)
                    .map(|pid| (pid, e.decision.reason))
            })
            .collect();
        self.row_owners = kept.iter().map(|(pid, _)| *pid).collect();
        self.recheck_soon = kept
            .iter()
            .any(|(_, reason)| *reason == liveness::Reason::UnregisteredChild);
        if self.recheck_soon {
            // One that ends before it registers frees the rows at its death.
            self.row_owners
                .extend(identity::unnamed_archiving_children());
        }
        // Rows of a dead owner kept for the archiving children still working for it: the end of
        // the last of them is when those rows are free, so watch the children too (registered
        // or not, seen in /proc as Matomo starts them).
        let kept_for_children: HashSet<u32> = kept
            .iter()
            .filter(|(_, reason)| *reason == liveness::Reason::ChildWorking)
            .map(|(pid, _)| *pid)
            .collect();
        if !kept_for_children.is_empty() {
            self.row_owners.extend(
                identity::archiving_children()
                    .into_iter()
                    .filter(|(_, owner)| kept_for_children.contains(owner))
                    .map(|(child, _)| child),
            );
        }
        self.refresh_watch(link)
    }
}

/// The fleet's look at hosts gone silent (by the one process holding the fleet's lock, or by
/// every process where the lock is refused): a host with a registration the watch saw silent
/// for a full lease is reaped every interval where an index on `status` makes the look cheap,
/// once per lease where the table would be scanned.
pub(super) struct StaleHosts {
    last_reap: Option<Instant>,
}

impl StaleHosts {
    pub(super) fn new() -> StaleHosts {
        StaleHosts { last_reap: None }
    }

    pub(super) fn run(
        &mut self,
        link: &mut Link,
        looked: &[(Watched, Silence)],
        index: &mut IndexLook,
        report: &mut Report,
    ) -> std::result::Result<(), mysql::Error> {
        // This host is the host reaper's, which can look at its processes.
        let hosts = schedule::silent_hosts(
            looked,
            link.registered.identity.host.as_deref(),
            link.settings().lease,
            1.0,
        );
        if hosts.is_empty() || !schedule::due(self.last_reap, index.period(link)?, Instant::now()) {
            return Ok(());
        }
        self.last_reap = Some(Instant::now());
        release_proven_dead(link, report, hosts)?;
        Ok(())
    }
}

/// Deletes registrations watched silent for a few leases that no row names any more (processes
/// never found dead by a reaper, e.g. on a host that went away for good, or idle).
pub(super) struct Prune {
    last: Instant,
}

impl Prune {
    /// The first prune is many leases after the thread starts.
    pub(super) fn new(now: Instant) -> Prune {
        Prune { last: now }
    }

    pub(super) fn due(&self, lease: Duration) -> bool {
        schedule::prune_due(self.last, lease, Instant::now())
    }

    /// Returns whether it pruned.
    pub(super) fn run(
        &mut self,
        link: &mut Link,
        looked: &[(Watched, Silence)],
    ) -> std::result::Result<bool, mysql::Error> {
        let lease = link.registered.settings.lease;
        let silent: Vec<u64> = looked
            .iter()
            .filter(|(w, s)| {
                s.is_silent_for(schedule::stale_after(w.lease_seconds, lease) * PRUNE_SILENT_LEASES)
            })
            .map(|(w, _)| w.idprocess)
            .collect();
        let Some(conn) = link.conn.as_mut() else {
            return Ok(false);
        };
        registry::forget(conn, &link.config, &silent)?;
        self.last = Instant::now();
        Ok(true)
    }
}

/// Releases what is proven dead among the rows of `hosts`, and keeps the releases for PHP.
fn release_proven_dead(
    link: &mut Link,
    report: &mut Report,
    hosts: Vec<String>,
) -> std::result::Result<Option<reap::ReapReport>, mysql::Error> {
    let settings = link.settings();
    let mut options = ReapOptions::proof_only(settings.lease.as_secs_f64());
    options.rows.hosts = Some(hosts);
    options.policy.host_name_shared = settings.host_name_shared;
    let Link {
        config,
        registered,
        lease,
        conn,
    } = link;
    match reap::reap(
        open(conn)?,
        config,
        &registered.identity,
        &options,
        &mut reap::Carried::default(),
    ) {
        Ok(found) => {
            lease.reap_runs.fetch_add(1, Ordering::Relaxed);
            let released: Vec<ReapEntry> = found
                .entries
                .iter()
                .filter(|e| matches!(e.action, Action::Reset | Action::DeletedDuplicate))
                .cloned()
                .collect();
            if !released.is_empty() {
                lease
                    .released
                    .fetch_add(released.len() as u64, Ordering::Relaxed);
                for e in &released {
                    report.released(lease, e);
                }
                record_releases(released);
            }
            Ok(Some(found))
        }
        Err(WorkError::Final(_)) => Ok(None),
        Err(WorkError::Sql(e)) => Err(e),
    }
}

//! The registration of this process and its heartbeat thread.
//!
//! A process registers at its first claim (or `register_process()`), before the claim's UPDATE,
//! so its registration is never younger than its claims. The heartbeat's own connection is
//! opened first: a process that cannot heartbeat does not register (its claims are then judged
//! as a stock claimer's, never by a lease it cannot keep). A Rust thread (no Zend calls, ever)
//! then refreshes the heartbeat every interval and, if it holds this host's reaper lock,
//! releases proven orphans. Nothing starts at module startup (php-fpm forks its workers after
//! it), and a forked child starts its own registration and thread: threads are not inherited,
//! and the parent's are left alone.
//!
//! The lease is shared with the PHP thread: a claim is made only while the last beat the
//! database acknowledged is recent, so no claim of this process can be younger than a lease
//! after its last heartbeat (what lets a reaper elsewhere tell its rows from a later process's).

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;
use mysql::Conn;
use once_cell::sync::Lazy;

use crate::config::DbConfig;
use crate::connection::{self, WorkError};
use crate::error::Error;
use crate::identity::Identity;
use crate::liveness;
use crate::pidfd;
use crate::reap::{self, Action, ReapEntry, ReapOptions};
use crate::registry::{self, ReaperDuty};
use crate::schema;
use crate::settings::HeartbeatSettings;
use crate::thread_log::LogTarget;

/// How long shutdown waits for the thread to delete its registration.
const STOP_WAIT: Duration = Duration::from_secs(3);

/// How often the host's reaper reads which local processes to watch (a small read of the
/// registry, not of the invalidations): a process that registered since is watched from then.
const WATCH_REFRESH: Duration = Duration::from_secs(1);

/// Stale registrations that no row names any more are pruned after this many leases.
const PRUNE_AFTER_LEASES: u32 = 60;

/// Releases the background thread made that PHP has not collected yet, at most this many (the
/// oldest go first when nobody collects).
const RELEASES_KEPT: usize = 10_000;

#[derive(Debug, Clone, PartialEq)]
pub struct Registered {
    pub idprocess: u64,
    pub identity: Identity,
    pub settings: HeartbeatSettings,
    /// The session time zone this process's claims write ts_started in; its connection keeps
    /// it across reconnects (see `connection::pin_time_zone`).
    pub time_zone: Option<String>,
}

/// What the PHP thread and the heartbeat thread share about this registration.
pub struct Lease {
    /// The registration's row id (it changes if the row was pruned and registered again).
    idprocess: AtomicU64,
    /// When the database last acknowledged a beat, in ms on a monotonic clock.
    acknowledged_ms: AtomicU64,
    /// Whether the heartbeat thread holds this host's reaper lock.
    reaping: AtomicBool,
    /// The last error the thread met (kept after it recovers, for phpinfo() and the plugin's
    /// page), when (monotonic ms), and counters.
    last_error: Mutex<Option<String>>,
    last_error_ms: AtomicU64,
    beats: AtomicU64,
    /// Looks for orphans made (each reap pass, released anything or not).
    reap_runs: AtomicU64,
    released: AtomicU64,
    errors: AtomicU64,
    /// None: not looked yet; Some(false): automatic reaping backs off (no index on status).
    indexed: Mutex<Option<bool>>,
}

impl Lease {
    fn new(idprocess: u64) -> Lease {
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

    fn acknowledged(&self) {
        self.acknowledged_ms
            .store(monotonic_ms(), Ordering::Release);
        self.beats.fetch_add(1, Ordering::Relaxed);
    }

    fn age(&self) -> Duration {
        Duration::from_millis(
            monotonic_ms().saturating_sub(self.acknowledged_ms.load(Ordering::Acquire)),
        )
    }

    fn idprocess(&self) -> u64 {
        self.idprocess.load(Ordering::Acquire)
    }

    fn note_index(&self, indexed: bool) {
        if let Ok(mut i) = self.indexed.try_lock() {
            *i = Some(indexed);
        }
    }

    fn note_error(&self, e: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.last_error_ms
            .store(monotonic_ms().max(1), Ordering::Relaxed);
        if let Ok(mut last) = self.last_error.try_lock() {
            *last = Some(e);
        }
    }

    /// What the registry row shows of this thread (see `registry::heartbeat`).
    fn counters(&self) -> registry::ThreadCounters {
        registry::ThreadCounters {
            beats: self.beats.load(Ordering::Relaxed),
            reap_runs: self.reap_runs.load(Ordering::Relaxed),
            released: self.released.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            last_error: self.last_error.try_lock().ok().and_then(|e| e.clone()),
        }
    }
}

fn monotonic_ms() -> u64 {
    static BASE: Lazy<Instant> = Lazy::new(Instant::now);
    BASE.elapsed().as_millis() as u64
}

struct Beat {
    registered: Registered,
    lease: Arc<Lease>,
    log: LogTarget,
    stop: pidfd::StopSender,
    stopped: Receiver<()>,
    handle: Option<JoinHandle<()>>,
}

thread_local! {
    static BEAT: RefCell<Option<Beat>> = const { RefCell::new(None) };
}

/// Rows the heartbeat thread released, with the pid of the process whose thread did it (a
/// forked child must not report its parent's).
static RELEASED: Lazy<Mutex<(u32, Vec<ReapEntry>)>> = Lazy::new(|| Mutex::new((0, Vec::new())));

/// This process's registration, if it has one (a forked child has none until it registers).
pub fn current() -> Option<Registered> {
    with_beat(|beat| {
        let mut r = beat.registered.clone();
        r.idprocess = beat.lease.idprocess();
        r
    })
}

fn with_beat<T>(f: impl FnOnce(&Beat) -> T) -> Option<T> {
    BEAT.try_with(|b| {
        b.borrow()
            .as_ref()
            .filter(|beat| beat.registered.identity.pid == std::process::id())
            .map(f)
    })
    .ok()
    .flatten()
}

/// What phpinfo() and register_process() tell about the thread.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub beats: u64,
    pub reap_runs: u64,
    pub released: u64,
    pub errors: u64,
    pub reaping: bool,
    pub last_beat_age: f64,
    /// The last error met (None: none yet) and how many seconds ago.
    pub last_error: Option<String>,
    pub last_error_age: Option<f64>,
    /// Where the thread's log goes.
    pub log: String,
    /// Some(false): no index on `status`, so the look for hosts gone silent runs once per
    /// lease instead of every interval.
    pub status_indexed: Option<bool>,
}

pub fn status() -> Option<Status> {
    with_beat(|beat| Status {
        beats: beat.lease.beats.load(Ordering::Relaxed),
        reap_runs: beat.lease.reap_runs.load(Ordering::Relaxed),
        released: beat.lease.released.load(Ordering::Relaxed),
        errors: beat.lease.errors.load(Ordering::Relaxed),
        reaping: beat.lease.reaping.load(Ordering::Relaxed),
        last_beat_age: beat.lease.age().as_secs_f64(),
        last_error: beat
            .lease
            .last_error
            .try_lock()
            .ok()
            .and_then(|e| e.clone()),
        last_error_age: match beat.lease.last_error_ms.load(Ordering::Relaxed) {
            0 => None,
            at => Some(monotonic_ms().saturating_sub(at) as f64 / 1000.0),
        },
        log: beat.log.describe(),
        status_indexed: beat.lease.indexed.try_lock().ok().and_then(|i| *i),
    })
}

/// Registers this process (once) and starts its heartbeat; called on the PHP thread with the
/// process's own connection, before a claim.
pub fn ensure_registered(
    conn: &mut Conn,
    config: &DbConfig,
) -> std::result::Result<Registered, RegisterError> {
    if let Some(r) = current() {
        return Ok(r);
    }
    forget_inherited();
    let identity = Identity::current();
    let settings = HeartbeatSettings::from_ini();
    // Resolved here, on the PHP thread: the heartbeat thread must not read PHP's settings.
    let log = LogTarget::from_ini();
    let announce = LogTarget::dedicated_from_ini();
    let beat_config = heartbeat_config(config, &settings);
    // The heartbeat's connection first: without it the registration would read as death a
    // lease from now while this process lives and claims.
    let beat_conn =
        connection::connect(&beat_config).map_err(RegisterError::HeartbeatCannotConnect)?;
    // Claims write ts_started in this session's time zone; a reconnect after a SET GLOBAL
    // time_zone would switch zones under the registration, so the connection keeps this one.
    let time_zone: Option<String> = conn
        .query_first("SELECT @@session.time_zone")
        .map_err(RegisterError::Sql)?;
    let idprocess = registry::register(conn, config, &identity, false, time_zone.as_deref())
        .map_err(RegisterError::Sql)?;
    connection::pin_time_zone(time_zone.clone());
    let registered = Registered {
        idprocess,
        identity,
        settings,
        time_zone,
    };
    let lease = Arc::new(Lease::new(idprocess));
    let (stop, stop_rx) =
        pidfd::stop_signal().map_err(|e| RegisterError::Sql(mysql::Error::IoError(e)))?;
    let (stopped_tx, stopped) = mpsc::channel();
    let thread_registered = registered.clone();
    let thread_lease = lease.clone();
    let thread_log = log.clone();
    let spawned = std::thread::Builder::new()
        .name("archive-claim-heartbeat".into())
        .spawn(move || {
            let mut heartbeat = Heartbeat::new(
                beat_config,
                thread_registered,
                thread_lease,
                beat_conn,
                thread_log,
            );
            heartbeat.announce = announce;
            heartbeat.run(stop_rx);
            let _ = stopped_tx.send(());
        });
    let handle = match spawned {
        Ok(h) => h,
        Err(e) => {
            // Without a heartbeat the registration would soon read as death: take it back.
            let _ = registry::unregister(conn, config, idprocess);
            return Err(RegisterError::Sql(mysql::Error::IoError(e)));
        }
    };
    pin_library();
    let _ = BEAT.try_with(|b| {
        *b.borrow_mut() = Some(Beat {
            registered: registered.clone(),
            lease,
            log,
            stop,
            stopped,
            handle: Some(handle),
        })
    });
    Ok(registered)
}

/// Why a registration did not happen.
#[derive(Debug)]
pub enum RegisterError {
    /// The heartbeat's own connection could not be opened (for example a connection limit).
    HeartbeatCannotConnect(Error),
    Sql(mysql::Error),
}

/// Self-fencing before a claim: if the database has not acknowledged a beat for half a lease
/// (the heartbeat thread cannot reach it), beat now on the claiming connection. Returns false
/// when this process is not registered.
pub fn fence_claim(conn: &mut Conn, config: &DbConfig) -> std::result::Result<bool, mysql::Error> {
    let Some((lease, half)) = with_beat(|b| (b.lease.clone(), b.registered.settings.lease / 2))
    else {
        return Ok(false);
    };
    if lease.age() < half {
        return Ok(true);
    }
    if registry::heartbeat(conn, config, lease.idprocess(), None)?.0 {
        lease.acknowledged();
        return Ok(true);
    }
    // Our row was pruned while we could not beat: register again before claiming.
    let Some((me, zone)) = with_beat(|b| {
        (
            b.registered.identity.clone(),
            b.registered.time_zone.clone(),
        )
    }) else {
        return Ok(false);
    };
    let reaps = lease.reaping.load(Ordering::Relaxed);
    let idprocess = registry::register(conn, config, &me, reaps, zone.as_deref())?;
    lease.idprocess.store(idprocess, Ordering::Release);
    lease.acknowledged();
    Ok(true)
}

/// Stops the heartbeat and deletes the registration (clean shutdown, `unregister_process()`).
/// Returns whether there was one.
pub fn stop() -> bool {
    forget_inherited();
    let beat = BEAT.try_with(|b| b.borrow_mut().take()).ok().flatten();
    let Some(mut beat) = beat else {
        return false;
    };
    beat.stop.send();
    if beat.stopped.recv_timeout(STOP_WAIT).is_ok() {
        if let Some(h) = beat.handle.take() {
            let _ = h.join();
        }
    }
    true
}

/// The rows this process's heartbeat thread released since the last call (oldest first).
pub fn take_releases() -> Vec<ReapEntry> {
    let Ok(mut released) = RELEASED.try_lock() else {
        return Vec::new();
    };
    if released.0 != std::process::id() {
        // Inherited through fork: the parent's to report.
        *released = (std::process::id(), Vec::new());
        return Vec::new();
    }
    std::mem::take(&mut released.1)
}

fn record_releases(entries: Vec<ReapEntry>) {
    let pid = std::process::id();
    if let Ok(mut released) = RELEASED.lock() {
        if released.0 != pid {
            *released = (pid, Vec::new());
        }
        released.1.extend(entries);
        let excess = released.1.len().saturating_sub(RELEASES_KEPT);
        released.1.drain(..excess);
    }
}

/// In a forked child, the parent's thread does not exist: drop our record of it without
/// touching anything the parent owns.
fn forget_inherited() {
    let _ = BEAT.try_with(|b| {
        let mut b = b.borrow_mut();
        if b.as_ref()
            .is_some_and(|beat| beat.registered.identity.pid != std::process::id())
        {
            if let Some(beat) = b.take() {
                std::mem::forget(beat);
            }
        }
    });
}

/// A hung statement must not hold beats back for longer than a fraction of the lease.
fn heartbeat_config(config: &DbConfig, settings: &HeartbeatSettings) -> DbConfig {
    let bound = (settings.lease / 3).max(Duration::from_secs(2));
    let mut c = config.clone();
    c.read_timeout = c.read_timeout.min(bound);
    c.write_timeout = c.write_timeout.min(bound);
    c.connect_timeout = c.connect_timeout.min(bound);
    c
}

/// The heartbeat thread's state. Errors are never fatal: the connection is dropped and the
/// next tick tries again; only a stop request ends the loop.
///
/// Its duties, each on its own schedule:
/// - **beat** every interval;
/// - **reap this host** if it holds the host's reaper lock: at once when a watched local owner
///   dies (the kernel says so through a pidfd), else once per lease;
/// - **reap stale hosts** if it holds the fleet's lock: one process in the fleet looks for
///   hosts whose heartbeats went stale, every interval where an index on `status` makes the
///   look cheap (once per lease where the table would be scanned), and reaps only those;
/// - **prune** registrations stale for many leases.
struct Heartbeat {
    config: DbConfig,
    registered: Registered,
    lease: Arc<Lease>,
    conn: Option<Conn>,
    fleet_reaper: bool,
    /// Whether `status` is indexed (None: not looked yet, or looked too long ago).
    indexed: Option<bool>,
    last_local_reap: Option<Instant>,
    last_stale_reap: Option<Instant>,
    last_prune: Instant,
    /// A watched local owner died: reap this host now.
    local_death: bool,
    /// After this thread itself could not beat for longer than a lease (its host cut off from
    /// the database), every other host's heartbeat may look as stale as its own did: no
    /// stale-host reaping until a lease has passed with beats flowing again.
    quiet_until: Option<Instant>,
    watch: pidfd::Watch,
    /// Local pids that owned rows at the last look (stock claimers among them).
    row_owners: Vec<u32>,
    /// Pids already found gone, so a registration kept as evidence wakes nobody twice.
    gone: std::collections::HashSet<u32>,
    log: LogTarget,
    /// Whether to say when it starts (see `LogTarget::dedicated_from_ini`).
    announce: bool,
    /// The error last written to the log, and how many ticks failed since: a database that is
    /// down for an hour makes one line when it goes and one when it comes back, not thousands.
    logged_error: Option<String>,
    failed_ticks: u64,
    /// False once the registry turned out to lack the counter columns (an older schema).
    counter_columns: bool,
}

impl Heartbeat {
    fn new(
        config: DbConfig,
        registered: Registered,
        lease: Arc<Lease>,
        conn: Conn,
        log: LogTarget,
    ) -> Heartbeat {
        Heartbeat {
            config,
            registered,
            lease,
            conn: Some(conn),
            fleet_reaper: false,
            indexed: None,
            last_local_reap: None,
            last_stale_reap: None,
            last_prune: Instant::now(),
            local_death: false,
            quiet_until: None,
            watch: pidfd::Watch::default(),
            row_owners: Vec::new(),
            gone: std::collections::HashSet::new(),
            log,
            announce: false,
            logged_error: None,
            failed_ticks: 0,
            counter_columns: true,
        }
    }

    /// A line in the thread's log; a log that cannot be written counts as an error, once.
    fn say(&mut self, message: &str) {
        if let Err(e) = self.log.write(message) {
            let what = format!("cannot write the log {}: {e}", self.log.describe());
            if self
                .lease
                .last_error
                .try_lock()
                .ok()
                .and_then(|l| l.clone())
                != Some(what.clone())
            {
                self.lease.note_error(what);
            }
        }
    }

    fn who(&self) -> String {
        let me = &self.registered.identity;
        format!(
            "heartbeat thread of pid {} on {}",
            me.pid,
            me.host.as_deref().unwrap_or("(no host name)")
        )
    }

    fn note_outcome(&mut self, outcome: std::result::Result<(), String>) {
        match outcome {
            Ok(()) => {
                if self.logged_error.take().is_some() {
                    let line = format!(
                        "{}: working again after {} failed attempts",
                        self.who(),
                        self.failed_ticks
                    );
                    self.say(&line);
                }
                self.failed_ticks = 0;
            }
            Err(e) => {
                self.failed_ticks += 1;
                self.lease.note_error(e.clone());
                if self.logged_error.as_ref() != Some(&e) {
                    let line = format!("{}: error: {e}", self.who());
                    self.say(&line);
                    self.logged_error = Some(e);
                }
            }
        }
    }

    fn run(mut self, stop: pidfd::StopSignal) {
        let interval = self.registered.settings.interval;
        let s = self.registered.settings;
        let line = format!(
            "{}: started as process #{} (heartbeat every {} s, lease {} s, automatic reaping {})",
            self.who(),
            self.lease.idprocess(),
            s.interval.as_secs(),
            s.lease.as_secs(),
            if s.auto_reap { "on" } else { "off" }
        );
        if self.announce {
            self.say(&line);
        }
        // The first beat at once: it takes the reaper locks while the registration is new.
        let mut next_beat = Instant::now();
        loop {
            let until_beat = next_beat.saturating_duration_since(Instant::now());
            match self.watch.wait(&stop, until_beat.min(WATCH_REFRESH)) {
                pidfd::Wake::Stop => break,
                pidfd::Wake::Died => self.local_death = true,
                pidfd::Wake::Timeout => {}
            }
            let beat_due = Instant::now() >= next_beat;
            if beat_due {
                next_beat = Instant::now() + interval;
            }
            let outcome = self.tick(beat_due);
            self.note_outcome(outcome);
        }
        let idprocess = self.lease.idprocess();
        if let Some(c) = self.conn.as_mut() {
            let _ = registry::unregister(c, &self.config, idprocess);
        } else if let Ok(mut c) = connection::connect(&self.config) {
            let _ = registry::unregister(&mut c, &self.config, idprocess);
        }
    }

    /// Whether this thread holds its host's reaper lock (kept in the lease, which phpinfo()
    /// and a re-registration at claim time read too).
    fn host_reaper(&self) -> bool {
        self.lease.reaping.load(Ordering::Relaxed)
    }

    fn tick(&mut self, beat_due: bool) -> std::result::Result<(), String> {
        if self.conn.is_none() {
            // Locks were tied to the old connection.
            self.fleet_reaper = false;
            self.lease.reaping.store(false, Ordering::Relaxed);
            self.conn = Some(connection::connect(&self.config).map_err(|e| e.to_string())?);
        }
        let result = self.duties(beat_due);
        if let Err(e) = &result {
            if connection::is_connection_lost(e) {
                self.conn = None;
            }
        }
        result.map_err(|e| e.to_string())
    }

    fn duties(&mut self, beat_due: bool) -> std::result::Result<(), mysql::Error> {
        if beat_due {
            self.beat()?;
        }
        let settings = self.registered.settings;
        if !settings.auto_reap {
            return Ok(());
        }
        if beat_due {
            self.take_locks()?;
        }
        if self.host_reaper() {
            self.refresh_watch()?;
        }
        if self.host_reaper() && self.local_reap_due()? {
            self.reap_this_host()?;
        }
        if self.fleet_reaper && beat_due {
            self.reap_stale_hosts()?;
        }
        if self.last_prune.elapsed() > settings.lease * PRUNE_AFTER_LEASES {
            let Some(conn) = self.conn.as_mut() else {
                return Ok(());
            };
            registry::prune(
                conn,
                &self.config,
                settings.lease.as_secs() * u64::from(PRUNE_AFTER_LEASES),
            )?;
            self.last_prune = Instant::now();
            self.indexed = None; // an operator may have added the index meanwhile
        }
        Ok(())
    }

    /// The open connection (`tick` opens it before any duty runs).
    fn conn(&mut self) -> std::result::Result<&mut Conn, mysql::Error> {
        self.conn.as_mut().ok_or(mysql::Error::DriverError(
            mysql::DriverError::ConnectTimeout,
        ))
    }

    fn beat(&mut self) -> std::result::Result<(), mysql::Error> {
        let idprocess = self.lease.idprocess();
        let reaps = self.host_reaper();
        let (config, identity) = (self.config.clone(), self.registered.identity.clone());
        let zone = self.registered.time_zone.clone();
        let lease = self.registered.settings.lease;
        if self.lease.age() > lease {
            self.quiet_until = Some(Instant::now() + lease);
        }
        // The counters as of the previous beat (this one is counted once acknowledged).
        let counters = self.counter_columns.then(|| self.lease.counters());
        let (found, counters_written) =
            registry::heartbeat(self.conn()?, &config, idprocess, counters.as_ref())?;
        if counters.is_some() && !counters_written {
            self.counter_columns = false;
        }
        if !found {
            // Pruned while we were frozen: register again (the rows we hold may have been
            // reaped meanwhile; our fenced complete/release will then simply change nothing).
            let id = registry::register(self.conn()?, &config, &identity, reaps, zone.as_deref())?;
            self.lease.idprocess.store(id, Ordering::Release);
        }
        self.lease.acknowledged();
        Ok(())
    }

    fn take_locks(&mut self) -> std::result::Result<(), mysql::Error> {
        let config = self.config.clone();
        let host = self.registered.identity.host.clone();
        let idprocess = self.lease.idprocess();
        if !self.host_reaper() {
            let conn = self.conn()?;
            if registry::try_reaper_lock(conn, &config, ReaperDuty::Host(host.as_deref()))? {
                registry::set_reaps(conn, &config, idprocess, true)?;
                self.lease.reaping.store(true, Ordering::Relaxed);
            }
        }
        if !self.fleet_reaper {
            let conn = self.conn()?;
            self.fleet_reaper = registry::try_reaper_lock(conn, &config, ReaperDuty::StaleHosts)?;
        }
        Ok(())
    }

    /// How often to look for orphans in the invalidations table: every interval where an
    /// index starts with `status`; where none does, every look is a scan of the whole table, so
    /// once per lease (and phpinfo() says why).
    fn look_period(&mut self) -> std::result::Result<Duration, mysql::Error> {
        if self.indexed.is_none() {
            let config = self.config.clone();
            let indexed = schema::status_is_indexed(self.conn()?, &config)?;
            self.indexed = Some(indexed);
            self.lease.note_index(indexed);
        }
        let settings = self.registered.settings;
        Ok(if self.indexed == Some(true) {
            settings.interval
        } else {
            settings.lease
        })
    }

    /// This host's look at its rows: at once when a watched process died, else once per lease,
    /// index or not. Between looks every registered local process and every owner of a row at
    /// the last look is watched (the kernel wakes us when one dies), so a periodic look can only
    /// find a stock claimer that claimed since the last one and died: a look every interval cost
    /// each host a read of its rows every few seconds (with 50 hosts, most of the database's
    /// background time) to find those a lease sooner.
    fn local_reap_due(&mut self) -> std::result::Result<bool, mysql::Error> {
        // The index decides the fleet's look at stale hosts; phpinfo() shows it either way.
        self.look_period()?;
        Ok(self.local_death || due(self.last_local_reap, self.registered.settings.lease))
    }

    fn reap_this_host(&mut self) -> std::result::Result<(), mysql::Error> {
        self.local_death = false;
        self.last_local_reap = Some(Instant::now());
        let host = self.registered.identity.host.clone();
        let report = self.reap(host.clone().into_iter().collect())?;
        self.row_owners = report
            .iter()
            .flat_map(|r| &r.entries)
            .filter(|e| e.action == Action::Kept && e.row.processing_host == host)
            .filter_map(|e| {
                e.row
                    .process_id
                    .as_deref()
                    .and_then(liveness::plausible_pid)
            })
            .collect();
        self.refresh_watch()
    }

    /// Watches every local process that owns a row or is registered on this machine (a cheap
    /// read of the registry, every beat): its death wakes the thread. One that is already gone
    /// when first seen asks for a look now.
    fn refresh_watch(&mut self) -> std::result::Result<(), mysql::Error> {
        let (config, me) = (self.config.clone(), self.registered.identity.clone());
        let mut pids = registry::pids_on_machine(self.conn()?, &config, &me)?;
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

    fn reap_stale_hosts(&mut self) -> std::result::Result<(), mysql::Error> {
        if self.quiet_until.is_some_and(|t| Instant::now() < t)
            || !due(self.last_stale_reap, self.look_period()?)
        {
            return Ok(());
        }
        let lease = self.registered.settings.lease.as_secs_f64();
        let config = self.config.clone();
        let mut hosts = registry::hosts_with_stale_heartbeats(self.conn()?, &config, lease)?;
        // This host is the host reaper's, which can look at its processes.
        hosts.retain(|h| Some(h) != self.registered.identity.host.as_ref());
        if !hosts.is_empty() {
            self.last_stale_reap = Some(Instant::now());
            self.reap(hosts)?;
        }
        Ok(())
    }

    /// Releases what is proven dead among the rows of `hosts`, and keeps the releases for PHP.
    fn reap(
        &mut self,
        hosts: Vec<String>,
    ) -> std::result::Result<Option<reap::ReapReport>, mysql::Error> {
        let settings = self.registered.settings;
        let mut options = ReapOptions::proof_only(settings.lease.as_secs_f64());
        options.rows.hosts = Some(hosts);
        options.policy.host_name_shared = settings.host_name_shared;
        let (config, me) = (self.config.clone(), self.registered.identity.clone());
        match reap::reap(
            self.conn()?,
            &config,
            &me,
            &options,
            &mut reap::Carried::default(),
        ) {
            Ok(report) => {
                self.lease.reap_runs.fetch_add(1, Ordering::Relaxed);
                let released: Vec<ReapEntry> = report
                    .entries
                    .iter()
                    .filter(|e| matches!(e.action, Action::Reset | Action::DeletedDuplicate))
                    .cloned()
                    .collect();
                if !released.is_empty() {
                    self.lease
                        .released
                        .fetch_add(released.len() as u64, Ordering::Relaxed);
                    for e in &released {
                        let line = release_line(&self.who(), e);
                        self.say(&line);
                    }
                    record_releases(released);
                }
                Ok(Some(report))
            }
            Err(WorkError::Final(_)) => Ok(None),
            Err(WorkError::Sql(e)) => Err(e),
        }
    }
}

/// One line per released row: which, whose, what was done and why.
fn release_line(who: &str, e: &ReapEntry) -> String {
    let r = &e.row;
    format!(
        "{who}: {} invalidation {} (site {}, period {}, {}..{}, {}) held by {} pid {} for {} s: {}, {}",
        match e.action {
            Action::DeletedDuplicate => "deleted (a duplicate of queued work)",
            _ => "re-queued",
        },
        r.idinvalidation,
        r.idsite,
        r.period,
        r.date1,
        r.date2,
        r.name,
        r.processing_host.as_deref().unwrap_or("-"),
        r.process_id.as_deref().unwrap_or("-"),
        r.age_seconds.map_or("?".to_owned(), |a| a.to_string()),
        e.decision.verdict.as_str(),
        e.decision.reason.as_str()
    )
}

/// Whether a duty last done at `last` (never: None) is due again.
fn due(last: Option<Instant>, period: Duration) -> bool {
    last.is_none_or(|at| at.elapsed() >= period)
}

/// Keeps this shared library mapped until the process ends: PHP unloads extensions after
/// module shutdown, and a thread of ours that outlived the call that started it (a heartbeat
/// past its stop request, a connect given up on) must not find its code gone.
pub(crate) fn pin_library() {
    static PINNED: std::sync::Once = std::sync::Once::new();
    PINNED.call_once(|| {
        // SAFETY: dladdr/dlopen with a pointer into this library and the path it reports.
        unsafe {
            let mut info: libc::Dl_info = std::mem::zeroed();
            if libc::dladdr(pin_library as *const libc::c_void, &mut info) != 0
                && !info.dli_fname.is_null()
            {
                libc::dlopen(
                    info.dli_fname,
                    libc::RTLD_LAZY | libc::RTLD_NOLOAD | libc::RTLD_NODELETE,
                );
            }
        }
    });
}

impl std::fmt::Display for RegisterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RegisterError::HeartbeatCannotConnect(e) => write!(
                f,
                "the heartbeat cannot connect ({e}); this process claims unregistered, judged as \
                 a stock Matomo claimer"
            ),
            RegisterError::Sql(e) => write!(f, "{e}"),
        }
    }
}

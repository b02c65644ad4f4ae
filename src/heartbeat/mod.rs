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

mod duties;
mod lease;
mod report;
mod schedule;
mod thread;

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use mysql::prelude::Queryable;
use mysql::Conn;
use once_cell::sync::Lazy;

use crate::config::DbConfig;
use crate::connection::{self, Purpose};
use crate::error::Error;
use crate::identity::Identity;
use crate::pidfd;
use crate::reap::ReapEntry;
use crate::registry;
use crate::settings::HeartbeatSettings;
use crate::thread_log::LogTarget;

use lease::{monotonic_ms, Lease};
use thread::Heartbeat;

/// How long shutdown waits for the thread to delete its registration.
const STOP_WAIT: Duration = Duration::from_secs(3);

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
/// `identity` is asked only if this process has no registration yet.
pub fn ensure_registered(
    conn: &mut Conn,
    config: &DbConfig,
    identity: impl FnOnce() -> Identity,
) -> std::result::Result<Registered, RegisterError> {
    register_on(RegisterOn::Main(conn), config, identity)
}

/// Registers an archiving child (it works for a `core:archive` parent and claims nothing) on
/// its heartbeat's connection alone. `defer` (a detached child, `runid=` on its command line):
/// the thread connects and writes the registration at its first beat, an interval from now, so
/// a child that ends sooner sends nothing at all (most archives take less than an interval).
/// None needs to: its parent ran and beat when it started it, a watcher elsewhere needs a whole
/// lease (three intervals at least) of the parent's silence, and on this host /proc shows the
/// child working for its parent by its command line from its start. A batch of one, whose
/// command line names nobody, registers at once: its registration is what says whom it works
/// for once its parent is gone.
pub fn ensure_child_registered(
    config: &DbConfig,
    identity: Identity,
    defer: bool,
) -> std::result::Result<Registered, RegisterError> {
    let on = if defer {
        RegisterOn::FirstBeat
    } else {
        RegisterOn::BeatConnection
    };
    register_on(on, config, || identity)
}

/// Where and when a registration is written.
enum RegisterOn<'a> {
    /// Now, on the process's own connection (a claimer): its session time zone is what its
    /// claims write `ts_started` in, so the registration records it.
    Main(&'a mut Conn),
    /// Now, on the heartbeat's connection (a batch-of-one archiving child).
    BeatConnection,
    /// At the heartbeat thread's first beat (a detached archiving child).
    FirstBeat,
}

fn register_on(
    on: RegisterOn<'_>,
    config: &DbConfig,
    identity: impl FnOnce() -> Identity,
) -> std::result::Result<Registered, RegisterError> {
    if let Some(r) = current() {
        return Ok(r);
    }
    forget_inherited();
    let identity = identity();
    let settings = HeartbeatSettings::from_ini();
    // Resolved here, on the PHP thread: the heartbeat thread must not read PHP's settings.
    let log = LogTarget::from_ini();
    let announce = LogTarget::dedicated_from_ini();
    let beat_config = heartbeat_config(config, &settings);
    let lease_seconds = settings.lease.as_secs_f64();
    if let RegisterOn::FirstBeat = on {
        // idprocess 0: the thread registers at its first beat.
        let pending = Registered {
            idprocess: 0,
            identity,
            settings,
            time_zone: None,
        };
        return start_thread(beat_config, None, pending, log, announce);
    }
    // The heartbeat's connection first: without it the registration would read as death a
    // lease from now while this process lives and claims.
    let mut beat_conn = connection::connect_for(&beat_config, beat_purpose(&identity))
        .map_err(RegisterError::HeartbeatCannotConnect)?;
    let (idprocess, time_zone) = if let RegisterOn::Main(conn) = on {
        // Claims write ts_started in this session's time zone; a reconnect after a SET GLOBAL
        // time_zone would switch zones under the registration, so the connection keeps this one.
        let time_zone: Option<String> = conn
            .query_first("SELECT @@session.time_zone")
            .map_err(RegisterError::Sql)?;
        let idprocess = registry::register(
            conn,
            config,
            &identity,
            false,
            time_zone.as_deref(),
            lease_seconds,
        )
        .map_err(RegisterError::Sql)?;
        connection::pin_time_zone(time_zone.clone());
        (idprocess, time_zone)
    } else {
        // An archiving child claims nothing: no zone to record.
        let idprocess = registry::register(
            &mut beat_conn,
            config,
            &identity,
            false,
            None,
            lease_seconds,
        )
        .map_err(RegisterError::Sql)?;
        (idprocess, None)
    };
    let registered = Registered {
        idprocess,
        identity,
        settings,
        time_zone,
    };
    start_thread(beat_config, Some(beat_conn), registered, log, announce)
}

/// Starts the heartbeat thread of `registered` (idprocess 0: it registers at its first beat).
fn start_thread(
    beat_config: DbConfig,
    beat_conn: Option<Conn>,
    registered: Registered,
    log: LogTarget,
    announce: bool,
) -> std::result::Result<Registered, RegisterError> {
    let idprocess = registered.idprocess;
    let lease = Arc::new(Lease::new(idprocess));
    let (stop, stop_rx) =
        pidfd::stop_signal().map_err(|e| RegisterError::Sql(mysql::Error::IoError(e)))?;
    let (stopped_tx, stopped) = mpsc::channel();
    let thread_registered = registered.clone();
    let thread_lease = lease.clone();
    let thread_log = log.clone();
    let thread_config = beat_config.clone();
    let spawned = std::thread::Builder::new()
        .name("archive-claim-heartbeat".into())
        .spawn(move || {
            Heartbeat::new(
                thread_config,
                thread_registered,
                thread_lease,
                beat_conn,
                thread_log,
                announce,
            )
            .run(stop_rx);
            let _ = stopped_tx.send(());
        });
    let handle = match spawned {
        Ok(h) => h,
        Err(e) => {
            // Without a heartbeat the registration would soon read as death: take it back.
            if idprocess != 0 {
                if let Ok(mut c) = connection::connect_for(&beat_config, Purpose::BeatOnly) {
                    let _ = registry::unregister(&mut c, &beat_config, idprocess);
                }
            }
            return Err(RegisterError::Sql(mysql::Error::IoError(e)));
        }
    };
    crate::library::pin();
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
    let Some((me, zone, own_lease)) = with_beat(|b| {
        (
            b.registered.identity.clone(),
            b.registered.time_zone.clone(),
            b.registered.settings.lease,
        )
    }) else {
        return Ok(false);
    };
    let reaps = lease.reaping.load(Ordering::Relaxed);
    let idprocess = registry::register(
        conn,
        config,
        &me,
        reaps,
        zone.as_deref(),
        own_lease.as_secs_f64(),
    )?;
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

pub(super) fn record_releases(entries: Vec<ReapEntry>) {
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

/// What the heartbeat's connection is for: an archiving child's only beats (it never watches
/// or reaps), so it skips the look for a cluster.
pub(super) fn beat_purpose(identity: &Identity) -> Purpose {
    if identity.is_archiving_child() {
        Purpose::BeatOnly
    } else {
        Purpose::Any
    }
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

//! The registration of this process and its heartbeat thread.
//!
//! A process registers at its first claim (or `register_process()`), before the claim's UPDATE,
//! so its registration is never younger than its claims. A Rust thread with its own connection
//! (no Zend calls, ever) then refreshes the heartbeat every interval and, if it holds this
//! host's reaper lock, releases proven orphans. Nothing starts at module startup (php-fpm forks
//! its workers after it), and a forked child starts its own registration and thread: threads
//! are not inherited, and the parent's are left alone.

use std::cell::RefCell;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mysql::Conn;

use crate::config::DbConfig;
use crate::connection;
use crate::identity::Identity;
use crate::reap::{self, ReapOptions};
use crate::registry;
use crate::settings::HeartbeatSettings;

/// How long shutdown waits for the thread to delete its registration.
const STOP_WAIT: Duration = Duration::from_secs(3);

/// Stale registrations that no row names any more are pruned after this many leases.
const PRUNE_AFTER_LEASES: u64 = 60;

#[derive(Debug, Clone, PartialEq)]
pub struct Registered {
    pub idprocess: u64,
    pub identity: Identity,
    pub settings: HeartbeatSettings,
}

struct Beat {
    registered: Registered,
    stop: Sender<()>,
    stopped: Receiver<()>,
    handle: Option<JoinHandle<()>>,
}

thread_local! {
    static BEAT: RefCell<Option<Beat>> = const { RefCell::new(None) };
}

/// This process's registration, if it has one (a forked child has none until it registers).
pub fn current() -> Option<Registered> {
    BEAT.try_with(|b| {
        b.borrow()
            .as_ref()
            .filter(|beat| beat.registered.identity.pid == std::process::id())
            .map(|beat| beat.registered.clone())
    })
    .ok()
    .flatten()
}

/// Registers this process (once) and starts its heartbeat; called on the PHP thread with the
/// process's own connection, before a claim.
pub fn ensure_registered(conn: &mut Conn, config: &DbConfig) -> Result<Registered, mysql::Error> {
    if let Some(r) = current() {
        return Ok(r);
    }
    forget_inherited();
    let identity = Identity::current();
    let settings = HeartbeatSettings::from_ini();
    let idprocess = registry::register(conn, config, &identity)?;
    let registered = Registered {
        idprocess,
        identity,
        settings,
    };
    let (stop, stop_rx) = mpsc::channel();
    let (stopped_tx, stopped) = mpsc::channel();
    let thread_registered = registered.clone();
    let thread_config = config.clone();
    let spawned = std::thread::Builder::new()
        .name("archive-claim-heartbeat".into())
        .spawn(move || {
            run(thread_config, thread_registered, stop_rx);
            let _ = stopped_tx.send(());
        });
    let handle = match spawned {
        Ok(h) => h,
        Err(e) => {
            // Without a heartbeat the registration would soon read as death: take it back.
            let _ = registry::unregister(conn, config, idprocess);
            return Err(mysql::Error::IoError(e));
        }
    };
    pin_library();
    let _ = BEAT.try_with(|b| {
        *b.borrow_mut() = Some(Beat {
            registered: registered.clone(),
            stop,
            stopped,
            handle: Some(handle),
        })
    });
    Ok(registered)
}

/// Stops the heartbeat and deletes the registration (clean shutdown, `unregister_process()`).
/// Returns whether there was one.
pub fn stop() -> bool {
    forget_inherited();
    let beat = BEAT.try_with(|b| b.borrow_mut().take()).ok().flatten();
    let Some(mut beat) = beat else {
        return false;
    };
    let _ = beat.stop.send(());
    if beat.stopped.recv_timeout(STOP_WAIT).is_ok() {
        if let Some(h) = beat.handle.take() {
            let _ = h.join();
        }
    }
    true
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

/// The heartbeat thread. Errors are never fatal: the connection is dropped and the next beat
/// tries again; only a stop request ends the loop.
fn run(mut config: DbConfig, registered: Registered, stop: Receiver<()>) {
    let settings = registered.settings;
    // A hung statement must not hold beats back for longer than a fraction of the lease.
    let bound = (settings.lease / 3).max(Duration::from_secs(2));
    config.read_timeout = config.read_timeout.min(bound);
    config.write_timeout = config.write_timeout.min(bound);
    config.connect_timeout = config.connect_timeout.min(bound);

    let mut idprocess = registered.idprocess;
    let mut conn: Option<Conn> = None;
    let mut reaper = false;
    let mut last_prune = Instant::now();
    // Anything but a timeout (a stop request, or the PHP side gone) ends the loop.
    while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(settings.interval) {
        if conn.is_none() {
            conn = connection::connect(&config).ok();
            reaper = false;
        }
        let Some(c) = conn.as_mut() else { continue };
        let beat = beat_once(
            c,
            &config,
            &registered,
            &mut idprocess,
            &mut reaper,
            &mut last_prune,
        );
        if beat.is_err() {
            conn = None;
        }
    }
    if let Some(c) = conn.as_mut() {
        let _ = registry::unregister(c, &config, idprocess);
    } else if let Ok(mut c) = connection::connect(&config) {
        let _ = registry::unregister(&mut c, &config, idprocess);
    }
}

fn beat_once(
    conn: &mut Conn,
    config: &DbConfig,
    registered: &Registered,
    idprocess: &mut u64,
    reaper: &mut bool,
    last_prune: &mut Instant,
) -> Result<(), mysql::Error> {
    if !registry::heartbeat(conn, config, *idprocess)? {
        // Pruned while we were frozen: register again (the rows we hold may have been reaped
        // meanwhile; our fenced complete/release will then simply change nothing).
        *idprocess = registry::register(conn, config, &registered.identity)?;
    }
    let settings = registered.settings;
    if !settings.auto_reap {
        return Ok(());
    }
    if !*reaper {
        *reaper = registry::try_reaper_lock(conn, config, registered.identity.host.as_deref())?;
    }
    if *reaper {
        // Deaths provable from here are on this host (pid checks) or on hosts whose heartbeats
        // went stale: look at those rows only, which the optional index serves on big tables.
        let lease = settings.lease.as_secs_f64();
        let mut hosts = registry::hosts_with_stale_heartbeats(conn, config, lease)?;
        hosts.extend(registered.identity.host.clone());
        hosts.sort();
        hosts.dedup();
        let options = ReapOptions {
            only_hosts: Some(hosts),
            ..ReapOptions::proof_only(lease)
        };
        match reap::reap(conn, config, &registered.identity, &options) {
            Ok(_) | Err(reap::ReapError::Refused(_)) => {}
            Err(reap::ReapError::Sql(e)) => return Err(e),
        }
        if last_prune.elapsed() > settings.lease * PRUNE_AFTER_LEASES as u32 {
            registry::prune(conn, config, settings.lease.as_secs() * PRUNE_AFTER_LEASES)?;
            *last_prune = Instant::now();
        }
    }
    Ok(())
}

/// Keeps this shared library mapped until the process ends: PHP unloads extensions after
/// module shutdown, and a heartbeat thread that outlived the stop request must not find its
/// code gone.
fn pin_library() {
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

//! One database connection per process, opened at first use.
//!
//! Three things make this more than `Conn::new`:
//! - **Fork safety.** A child of `pcntl_fork` inherits our socket. If the child closed it (or
//!   just let it drop: `COM_STMT_CLOSE`, `COM_QUIT`) it would end the parent's session. The
//!   connection remembers the pid that opened it; anywhere else it is forgotten, never dropped,
//!   and the child opens its own.
//! - **Reconnect.** After the server drops us (restart, `KILL`, `wait_timeout`), the call that
//!   notices reconnects once and runs again, told that it is a retry so it can tell "my first
//!   attempt already committed" from "somebody else got there".
//! - **No surprises.** Connect/read/write timeouts (PHP's `max_execution_time` cannot interrupt
//!   a blocking read in Rust), Matomo's session `sql_mode`, and TCP stays TCP.
//!
//! Every connection (the process's, its heartbeat thread's, request end's) is opened by
//! `connect`, so TLS settings hold for all of them.

use std::cell::RefCell;
use std::mem::ManuallyDrop;
use std::rc::Rc;

use mysql::prelude::Queryable;
use mysql::{Conn, OptsBuilder};

use crate::config::DbConfig;
#[cfg(test)]
use crate::config::Tls;
use crate::error::{errno, Error, Result};

/// Whether a unit of work runs for the first time or again on a fresh connection after the
/// previous one broke (its effects may or may not have committed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    First,
    AfterReconnect,
}

/// A connection that only its opening process may close.
struct ProcessConn {
    opened_by: u32,
    conn: ManuallyDrop<Conn>,
}

impl Drop for ProcessConn {
    fn drop(&mut self) {
        if self.opened_by == std::process::id() {
            // SAFETY: dropped exactly once, here.
            unsafe { ManuallyDrop::drop(&mut self.conn) };
        }
        // In a forked child: leave the parent's socket and statements alone. The file
        // descriptor stays open in the child until it exits, which is harmless.
    }
}

#[derive(Default)]
struct State {
    config: Option<Rc<DbConfig>>,
    conn: Option<ProcessConn>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
    /// The session time zone this thread's connections use (the one its registration
    /// recorded), so ts_started is written in one zone for the life of the registration.
    static PINNED_TIME_ZONE: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Keeps every later connection of this thread in `zone` (None: the server's default).
pub fn pin_time_zone(zone: Option<String>) {
    // A zone name the server reported; only characters zone names use are pasted into SQL.
    let safe = zone.filter(|z| {
        !z.is_empty()
            && z.len() <= 64
            && z.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/+-:_".contains(&b))
    });
    let _ = PINNED_TIME_ZONE.try_with(|p| *p.borrow_mut() = safe);
}

/// Replaces the settings; the next call connects with them. The same settings again (a Matomo
/// request that configures on every run) keep the open connection.
pub fn configure(config: DbConfig) {
    let _ = STATE.try_with(|s| {
        let mut s = s.borrow_mut();
        if s.config.as_deref() == Some(&config) {
            return;
        }
        s.conn = None;
        s.config = Some(Rc::new(config));
    });
}

/// The active settings, if any (without consulting php.ini).
pub fn configured() -> Option<Rc<DbConfig>> {
    STATE.try_with(|s| s.borrow().config.clone()).ok().flatten()
}

/// Closes this process's connection (module shutdown); a forked child's inherited one is only
/// forgotten.
pub fn close() {
    let _ = STATE.try_with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            s.conn = None;
        }
    });
}

/// How a unit of work given to `run` fails: in the driver (a lost connection is retried once,
/// anything else classified), or with an error of ours that is returned as it is (a refusal by
/// policy, say).
#[derive(Debug)]
pub enum WorkError {
    Sql(mysql::Error),
    Final(Error),
}

impl From<mysql::Error> for WorkError {
    fn from(e: mysql::Error) -> Self {
        WorkError::Sql(e)
    }
}

/// The settings `configure()` gave, else the php.ini URL's (kept from then on).
fn active_config(state: &mut State) -> Result<Rc<DbConfig>> {
    if let Some(c) = &state.config {
        return Ok(c.clone());
    }
    let url = crate::settings::DATABASE
        .get()
        .filter(|u| !u.trim().is_empty())
        .ok_or(Error::NotConfigured)?;
    let c = Rc::new(DbConfig::from_url(&url)?);
    state.config = Some(c.clone());
    Ok(c)
}

/// The settings the next connection would use, without connecting.
pub fn settings() -> Result<Rc<DbConfig>> {
    STATE.with(|cell| active_config(&mut cell.borrow_mut()))
}

/// Runs `work` on this process's connection, connecting first if needed, reconnecting once if
/// the connection turns out to be dead. Without `configure()`, the php.ini URL is used.
pub fn run<T>(
    during: &'static str,
    mut work: impl FnMut(&mut Conn, &DbConfig, Attempt) -> std::result::Result<T, WorkError>,
) -> Result<T> {
    STATE.with(|cell| {
        let mut state = cell.borrow_mut();
        let config = active_config(&mut state)?;
        if state
            .conn
            .as_ref()
            .is_some_and(|c| c.opened_by != std::process::id())
        {
            state.conn = None; // forgets the parent's connection (see ProcessConn::drop)
        }

        let mut attempt = Attempt::First;
        // The session we gave up on, whose last statement may still be running on the server.
        let mut abandoned: Option<u32> = None;
        loop {
            if state.conn.is_none() {
                let mut conn = connect(&config)?;
                if let Some(id) = abandoned.take() {
                    // Its statement must not commit after we decided: stop it and wait until
                    // it has, so what the work reads next is the final outcome.
                    settle_abandoned(&mut conn, id, &config);
                }
                state.conn = Some(ProcessConn {
                    opened_by: std::process::id(),
                    conn: ManuallyDrop::new(conn),
                });
            }
            let Some(pc) = state.conn.as_mut() else {
                continue;
            };
            let session = pc.conn.connection_id();
            match work(&mut pc.conn, &config, attempt) {
                Ok(v) => return Ok(v),
                Err(WorkError::Final(e)) => return Err(e),
                Err(WorkError::Sql(e)) if is_connection_lost(&e) && attempt == Attempt::First => {
                    state.conn = None;
                    abandoned = Some(session);
                    attempt = Attempt::AfterReconnect;
                }
                Err(WorkError::Sql(e)) => {
                    if is_connection_lost(&e) {
                        state.conn = None;
                        // Nothing runs on after we give up, either.
                        if let Ok(mut conn) = connect(&config) {
                            settle_abandoned(&mut conn, session, &config);
                        }
                    }
                    return Err(classify(during, &config, e));
                }
            }
        }
    })
}

/// Stops whatever statement the abandoned session `id` still runs (a read timeout left it
/// waiting on a lock, say) and waits, at most a connect timeout, until it has stopped. A
/// restarted server no longer knows the id: nothing to stop.
fn settle_abandoned(conn: &mut Conn, id: u32, config: &DbConfig) {
    if conn.query_drop(format!("KILL QUERY {id}")).is_err() {
        return;
    }
    let deadline = std::time::Instant::now() + config.connect_timeout;
    while std::time::Instant::now() < deadline {
        let running: std::result::Result<Option<u8>, _> = conn.exec_first(
            "SELECT 1 FROM information_schema.PROCESSLIST WHERE ID = ? AND COMMAND = 'Query'",
            (id,),
        );
        if !matches!(running, Ok(Some(_))) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// What a connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Anything, reaps included: on a Galera node its reads wait for causality.
    Any,
    /// Only writes of its own registration (an archiving child's heartbeat): it decides
    /// nothing, so it skips the look for a cluster.
    BeatOnly,
}

/// Opens a connection of its own (the heartbeat thread's, tests).
pub fn connect(config: &DbConfig) -> Result<Conn> {
    connect_for(config, Purpose::Any)
}

/// Opens a connection for `purpose`. Its session is set up in one statement: an archiving
/// child opens one connection, and every statement it saves is saved once per archive.
pub fn connect_for(config: &DbConfig, purpose: Purpose) -> Result<Conn> {
    // The server gives up on a lock before we give up on the server: a statement that waits
    // on a row (or a table) ends with an error and commits nothing, instead of running on
    // after our read_timeout left its outcome unknown.
    let read = config.read_timeout.as_secs();
    let lock_wait = read.saturating_sub((read / 4).max(1)).max(1);
    let mut session = vec![
        "sql_mode = 'NO_AUTO_VALUE_ON_ZERO'".to_owned(),
        format!("innodb_lock_wait_timeout = {lock_wait}, lock_wait_timeout = {lock_wait}"),
    ];
    if let Some(charset) = &config.charset {
        // Checked to be [A-Za-z0-9_]+ by DbConfig.
        session.push(format!("NAMES {charset}"));
    }
    if let Some(zone) = PINNED_TIME_ZONE
        .try_with(|p| p.borrow().clone())
        .ok()
        .flatten()
    {
        session.push(format!("time_zone = '{zone}'"));
    }
    let init = vec![format!("SET SESSION {}", session.join(", "))];
    let opts = OptsBuilder::new()
        .ip_or_hostname(Some(config.host.clone()))
        .tcp_port(config.port)
        .socket(config.unix_socket.clone())
        .prefer_socket(false)
        .user(Some(config.username.clone()))
        .pass(Some(config.password.clone()))
        .db_name(Some(config.dbname.clone()))
        .tcp_connect_timeout(Some(config.connect_timeout))
        .read_timeout(Some(config.read_timeout))
        .write_timeout(Some(config.write_timeout))
        .tcp_nodelay(true)
        // Named, so the driver does not ask the server for it at every connect: the largest
        // packet either side sends here is a statement with a chunk of ids (well under 1 MiB)
        // or a row of the invalidations table.
        .max_allowed_packet(Some(MAX_PACKET))
        .init(init);
    // The handshake reads with read_timeout, not connect_timeout: a server that accepts but
    // never greets would hold the caller (and PHP, whose time limit cannot interrupt us) for
    // read_timeout. Connect on a thread and give up after connect_timeout; a late connection
    // is dropped by that thread when it arrives.
    let (tx, rx) = std::sync::mpsc::channel();
    crate::library::pin();
    let for_thread = config.clone();
    let spawned = std::thread::Builder::new()
        .name("archive-claim-connect".into())
        .spawn(move || {
            let _ = tx.send(open(&for_thread, opts));
        });
    if spawned.is_err() {
        return Err(Error::Connection {
            target: config.target(),
            detail: "could not start a thread to connect".into(),
            code: errno::CONNECTION_ERROR,
        });
    }
    let allowed = config.connect_timeout + std::time::Duration::from_millis(500);
    match rx.recv_timeout(allowed) {
        Ok(result) => {
            let mut conn = result?;
            if purpose == Purpose::Any {
                causal_reads(&mut conn).map_err(|e| connection_error(config, &e))?;
            }
            Ok(conn)
        }
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => Err(Error::Connection {
            target: format!("{} as '{}'", config.target(), config.username),
            detail: "the database driver failed while connecting (it panicked; its message is on \
                     stderr)"
                .into(),
            code: errno::CONNECTION_ERROR,
        }),
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Err(Error::Connection {
            target: format!("{} as '{}'", config.target(), config.username),
            detail: format!(
                "the server accepted the connection but did not complete the handshake within \
                 connect_timeout ({} s): is something else listening there, or is the server hung?",
                config.connect_timeout.as_secs()
            ),
            code: errno::SERVER_LOST,
        }),
    }
}

/// The client's packet limit (the server's own max_allowed_packet still applies to what it
/// accepts; 16 MiB is MariaDB's default, MySQL 8's is 64 MiB).
const MAX_PACKET: usize = 16 << 20;

/// On a Galera node, makes every read of this session wait until the node has applied what the
/// cluster committed before it (`wsrep_sync_wait`): a reaper on a node whose applier lags must
/// not judge a heartbeat by what that node has not applied yet. A server without Galera (or
/// MySQL, which has no such variable) is left as it is.
fn causal_reads(conn: &mut Conn) -> std::result::Result<(), mysql::Error> {
    match conn.query_first::<Option<i64>, _>("SELECT @@wsrep_on") {
        Ok(Some(Some(1))) => conn.query_drop("SET SESSION wsrep_sync_wait = 1"),
        Ok(_) => Ok(()),
        Err(mysql::Error::MySqlError(e)) if e.code == errno::UNKNOWN_SYSTEM_VARIABLE => Ok(()),
        Err(e) => Err(e),
    }
}

/// Opens the driver's connection: directly, or over TCP with TLS through our OpenSSL relay
/// (`crate::tls_relay`; over `unix_socket` nothing is encrypted, as before).
fn open(config: &DbConfig, opts: OptsBuilder) -> Result<Conn> {
    let tls = match (&config.tls, &config.unix_socket) {
        (Some(tls), None) => tls,
        _ => return Conn::new(opts).map_err(|e| connection_error(config, &e)),
    };
    let relay = crate::tls_relay::Relay::start(config, tls)?;
    let opts = opts.socket(Some(relay.socket().to_owned()));
    Conn::new(opts).map_err(|e| {
        relay
            .failure()
            .unwrap_or_else(|| connection_error(config, &e))
    })
}

fn connection_error(config: &DbConfig, e: &mysql::Error) -> Error {
    let target = format!("{} as '{}'", config.target(), config.username);
    let (code, detail) = match e {
        mysql::Error::MySqlError(m) => (m.code, m.message.clone()),
        mysql::Error::IoError(io) => (errno::CONNECTION_ERROR, io.to_string()),
        mysql::Error::DriverError(d) => (errno::CONNECTION_ERROR, d.to_string()),
        other => (errno::CONNECTION_ERROR, other.to_string()),
    };
    let advice = match code {
        errno::SECURE_TRANSPORT_REQUIRED => {
            "the server accepts only TLS connections: set enable_ssl = 1 and name the CA that \
             signed its certificate in ssl_ca"
        }
        // MariaDB answers a plain connection under require_secure_transport with this too.
        errno::ACCESS_DENIED if config.tls.is_none() => {
            "check [database] username and password; a server with require_secure_transport = ON, \
             or an account created REQUIRE SSL, also needs enable_ssl = 1 (and ssl_ca)"
        }
        errno::ACCESS_DENIED if config.tls.as_ref().is_some_and(|t| t.client.is_none()) => {
            "check [database] username and password; an account created REQUIRE X509 also needs \
             ssl_cert and ssl_key"
        }
        _ => "check [database] host, port, unix_socket, username and password",
    };
    Error::Connection {
        target,
        detail: format!("{detail} ({advice})"),
        code,
    }
}

/// True when the session is gone and a new connection is the only way forward.
pub fn is_connection_lost(e: &mysql::Error) -> bool {
    match e {
        mysql::Error::MySqlError(m) => matches!(
            m.code,
            errno::CONNECTION_KILLED
                | errno::SERVER_SHUTDOWN
                | errno::SERVER_GONE
                | errno::SERVER_LOST
                | errno::CLIENT_INTERACTION_TIMEOUT
        ),
        other => other.is_connectivity_error(),
    }
}

/// Maps a driver error to ours, turning the two schema problems into advice.
pub fn classify(during: &'static str, config: &DbConfig, e: mysql::Error) -> Error {
    match e {
        mysql::Error::MySqlError(m) if m.code == errno::NO_SUCH_TABLE => Error::Schema(format!(
            "{during}: {} (is tables_prefix '{}' right for this Matomo? is this the Matomo database?)",
            m.message, config.tables_prefix
        )),
        mysql::Error::MySqlError(m) if m.code == errno::UNKNOWN_COLUMN => Error::Schema(format!(
            "{during}: {}; the table predates Matomo 5.3: run Matomo\\ArchiveClaim\\install_schema() \
             (or Matomo's database upgrade) to add processing_host and process_id",
            m.message
        )),
        mysql::Error::MySqlError(m) => Error::Query {
            during,
            code: m.code,
            message: m.message,
        },
        other if is_connection_lost(&other) => Error::Connection {
            target: config.target(),
            detail: format!("the connection was lost during {during} and could not be re-established: {other}"),
            code: errno::SERVER_LOST,
        },
        other => Error::Query {
            during,
            code: 0,
            message: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(tls: Option<Tls>) -> DbConfig {
        DbConfig {
            host: "db.example".into(),
            port: 3306,
            unix_socket: None,
            username: "matomo".into(),
            password: "p".into(),
            dbname: "matomo".into(),
            tables_prefix: "matomo_".into(),
            charset: None,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
            tls,
        }
    }

    fn server_says(code: u16) -> mysql::Error {
        mysql::Error::MySqlError(mysql::MySqlError {
            state: "HY000".into(),
            message: "refused".into(),
            code,
        })
    }

    fn detail(e: Error) -> (u16, String) {
        match e {
            Error::Connection { code, detail, .. } => (code, detail),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_server_that_wants_tls_says_which_keys_to_set() {
        // MySQL names the cause; MariaDB says access denied.
        for code in [errno::SECURE_TRANSPORT_REQUIRED, errno::ACCESS_DENIED] {
            let (got, text) = detail(connection_error(&config(None), &server_says(code)));
            assert_eq!(got, code);
            assert!(text.contains("enable_ssl = 1"), "{text}");
        }
        let tls = Tls {
            ca: None,
            ca_path: None,
            client: None,
            cipher: None,
            verify: true,
        };
        let (_, text) = detail(connection_error(
            &config(Some(tls)),
            &server_says(errno::ACCESS_DENIED),
        ));
        assert!(text.contains("ssl_cert and ssl_key"), "{text}");
    }
}

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

use std::cell::RefCell;
use std::mem::ManuallyDrop;
use std::rc::Rc;

use mysql::{Conn, OptsBuilder};

use crate::config::DbConfig;
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

/// Runs `work` on this process's connection, connecting first if needed, reconnecting once if
/// the connection turns out to be dead. Without `configure()`, the php.ini URL is used.
pub fn run<T>(
    during: &'static str,
    mut work: impl FnMut(&mut Conn, &DbConfig, Attempt) -> std::result::Result<T, mysql::Error>,
) -> Result<T> {
    STATE.with(|cell| {
        let mut state = cell.borrow_mut();
        let config = match &state.config {
            Some(c) => c.clone(),
            None => {
                let url = crate::settings::ini(crate::settings::INI_DATABASE)
                    .filter(|u| !u.trim().is_empty())
                    .ok_or(Error::NotConfigured)?;
                let c = Rc::new(DbConfig::from_url(&url)?);
                state.config = Some(c.clone());
                c
            }
        };
        if state
            .conn
            .as_ref()
            .is_some_and(|c| c.opened_by != std::process::id())
        {
            state.conn = None; // forgets the parent's connection (see ProcessConn::drop)
        }

        let mut attempt = Attempt::First;
        loop {
            if state.conn.is_none() {
                let conn = connect(&config)?;
                state.conn = Some(ProcessConn {
                    opened_by: std::process::id(),
                    conn: ManuallyDrop::new(conn),
                });
            }
            let Some(pc) = state.conn.as_mut() else {
                continue;
            };
            match work(&mut pc.conn, &config, attempt) {
                Ok(v) => return Ok(v),
                Err(e) if is_connection_lost(&e) && attempt == Attempt::First => {
                    state.conn = None;
                    attempt = Attempt::AfterReconnect;
                }
                Err(e) => {
                    if is_connection_lost(&e) {
                        state.conn = None;
                    }
                    return Err(classify(during, &config, e));
                }
            }
        }
    })
}

/// Opens a connection of its own (the heartbeat thread's, tests).
pub fn connect(config: &DbConfig) -> Result<Conn> {
    let mut init = vec!["SET SESSION sql_mode = 'NO_AUTO_VALUE_ON_ZERO'".to_owned()];
    if let Some(charset) = &config.charset {
        // Checked to be [A-Za-z0-9_]+ by DbConfig.
        init.push(format!("SET NAMES {charset}"));
    }
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
        .init(init);
    Conn::new(opts).map_err(|e| connection_error(config, &e))
}

fn connection_error(config: &DbConfig, e: &mysql::Error) -> Error {
    let (code, detail) = match e {
        mysql::Error::MySqlError(m) => (m.code, m.message.clone()),
        mysql::Error::IoError(io) => (2002, io.to_string()),
        mysql::Error::DriverError(d) => (2002, d.to_string()),
        other => (2002, other.to_string()),
    };
    Error::Connection {
        target: format!("{} as '{}'", config.target(), config.username),
        detail: format!(
            "{detail} (check [database] host, port, unix_socket, username and password)"
        ),
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
                | 4031
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

//! Every statement on `<prefix>archive_claim_process`: one row per process start that claims
//! through the extension, with a heartbeat written on the database clock (so app-server clocks
//! never matter: staleness is judged in SQL, on the same clock).

use std::collections::HashMap;

use mysql::prelude::Queryable;
use mysql::Conn;

use crate::config::DbConfig;
use crate::error::errno;
use crate::identity::Identity;
use crate::invalidations;
use crate::liveness::Registration;

pub const TABLE: &str = "archive_claim_process";

type SqlResult<T> = std::result::Result<T, mysql::Error>;

/// host, pid, boot_id, pid_namespace, started_at, registered_at, heartbeat age.
type RegistryRow = (
    Option<String>,
    u32,
    Option<String>,
    Option<u64>,
    Option<f64>,
    f64,
    f64,
);

/// Registrations by (host, pid), the two things a claim records.
pub type Registrations = HashMap<(Option<String>, u32), Vec<Registration>>;

pub fn create_table_sql(config: &DbConfig) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (
          idprocess BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
          host VARCHAR(100) NULL,
          pid INT UNSIGNED NOT NULL,
          boot_id VARCHAR(64) NULL,
          pid_namespace BIGINT UNSIGNED NULL,
          started_at DOUBLE NULL,
          registered_at DATETIME(6) NOT NULL,
          heartbeat_at DATETIME(6) NOT NULL,
          PRIMARY KEY (idprocess),
          INDEX index_host_pid (host, pid),
          INDEX index_heartbeat_at (heartbeat_at)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        config.table(TABLE)
    )
}

/// Registers this process start; returns its row id. Creates the table on first use so a
/// Matomo whose operator never ran install_schema still gets heartbeats.
pub fn register(conn: &mut Conn, config: &DbConfig, me: &Identity) -> SqlResult<u64> {
    conn.query_drop(create_table_sql(config))?;
    conn.exec_drop(
        format!(
            "INSERT INTO {} (host, pid, boot_id, pid_namespace, started_at, registered_at, heartbeat_at) \
             VALUES (?, ?, ?, ?, ?, NOW(6), NOW(6))",
            config.table(TABLE)
        ),
        (&me.host, me.pid, &me.boot_id, me.pid_namespace, me.started_at),
    )?;
    Ok(conn.last_insert_id())
}

/// Refreshes the heartbeat; false if the row is gone (pruned while we were frozen).
pub fn heartbeat(conn: &mut Conn, config: &DbConfig, idprocess: u64) -> SqlResult<bool> {
    conn.exec_drop(
        format!(
            "UPDATE {} SET heartbeat_at = NOW(6) WHERE idprocess = ?",
            config.table(TABLE)
        ),
        (idprocess,),
    )?;
    // An UPDATE within the same microsecond changes nothing but still matched the row.
    Ok(conn.affected_rows() > 0 || exists(conn, config, idprocess)?)
}

fn exists(conn: &mut Conn, config: &DbConfig, idprocess: u64) -> SqlResult<bool> {
    let found: Option<u8> = conn.exec_first(
        format!("SELECT 1 FROM {} WHERE idprocess = ?", config.table(TABLE)),
        (idprocess,),
    )?;
    Ok(found.is_some())
}

pub fn unregister(conn: &mut Conn, config: &DbConfig, idprocess: u64) -> SqlResult<()> {
    conn.exec_drop(
        format!("DELETE FROM {} WHERE idprocess = ?", config.table(TABLE)),
        (idprocess,),
    )
}

/// Every registration with its heartbeat age on the database clock. A missing table means
/// nobody ever registered: no registrations.
pub fn all(conn: &mut Conn, config: &DbConfig) -> SqlResult<Registrations> {
    let rows: SqlResult<Vec<RegistryRow>> = conn.query(
        format!(
            "SELECT host, pid, boot_id, pid_namespace, started_at, UNIX_TIMESTAMP(registered_at) + 0.0, \
                    TIMESTAMPDIFF(MICROSECOND, heartbeat_at, NOW(6)) / 1000000.0 \
               FROM {}",
            config.table(TABLE)
        ),
    );
    let rows = match rows {
        Err(mysql::Error::MySqlError(e)) if e.code == errno::NO_SUCH_TABLE => Vec::new(),
        other => other?,
    };
    let mut map: Registrations = HashMap::new();
    for (host, pid, boot_id, pid_namespace, started_at, registered_at, heartbeat_age) in rows {
        map.entry((host, pid)).or_default().push(Registration {
            boot_id,
            pid_namespace,
            started_at,
            registered_at,
            heartbeat_age,
        });
    }
    Ok(map)
}

/// Hosts with a registration whose heartbeat is older than the lease: the only hosts besides
/// its own where an automatic reaper can prove a death.
pub fn hosts_with_stale_heartbeats(
    conn: &mut Conn,
    config: &DbConfig,
    lease_seconds: f64,
) -> SqlResult<Vec<String>> {
    let hosts: SqlResult<Vec<Option<String>>> = conn.exec(
        format!(
            "SELECT DISTINCT host FROM {} WHERE heartbeat_at < NOW(6) - INTERVAL ? MICROSECOND",
            config.table(TABLE)
        ),
        ((lease_seconds * 1e6) as u64,),
    );
    match hosts {
        Err(mysql::Error::MySqlError(e)) if e.code == errno::NO_SUCH_TABLE => Ok(Vec::new()),
        other => Ok(other?.into_iter().flatten().collect()),
    }
}

/// Deletes registrations stale for longer than `older_than_seconds` that no in-progress row
/// names any more (while a row names one, it is the evidence that its owner died).
pub fn prune(conn: &mut Conn, config: &DbConfig, older_than_seconds: u64) -> SqlResult<u64> {
    let p = config.table(TABLE);
    let inv = config.table(invalidations::TABLE);
    conn.exec_drop(
        format!(
            "DELETE p FROM {p} p WHERE p.heartbeat_at < NOW(6) - INTERVAL ? SECOND \
             AND NOT EXISTS (SELECT 1 FROM {inv} i WHERE i.status = 1 \
                 AND i.processing_host <=> p.host AND i.process_id = CAST(p.pid AS CHAR))"
        ),
        (older_than_seconds,),
    )?;
    Ok(conn.affected_rows())
}

/// Takes (without waiting) the lock that makes one process per host the automatic reaper; it
/// is tied to the connection, so it passes on when its holder dies.
pub fn try_reaper_lock(conn: &mut Conn, config: &DbConfig, host: Option<&str>) -> SqlResult<bool> {
    let got: Option<Option<i64>> = conn.exec_first(
        "SELECT GET_LOCK(CONCAT('matomo_archive_claim_', MD5(CONCAT(DATABASE(), '/', ?, '/', ?))), 0)",
        (&config.tables_prefix, host.unwrap_or("")),
    )?;
    Ok(got.flatten() == Some(1))
}

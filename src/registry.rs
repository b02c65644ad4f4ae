//! Every statement on `<prefix>archive_claim_process`: one row per process start that claims
//! through the extension (or works for one that does), named in the kernel's frame (host, boot,
//! pid namespace, pid, start ticks), with a heartbeat written on the database clock as Unix
//! seconds in UTC (so neither app-server clocks nor any time zone enter a staleness judgement).

use mysql::prelude::Queryable;
use mysql::Conn;

use crate::config::DbConfig;
use crate::error::errno;
use crate::identity::Identity;
use crate::invalidations;
use crate::liveness::Registration;

pub const TABLE: &str = "archive_claim_process";

/// The database clock now, Unix seconds in UTC with microseconds. Neither the session's nor the
/// server's time zone enters it (`UNIX_TIMESTAMP(NOW(6))` is an hour off inside a DST fold).
pub const DB_NOW: &str = "(TIMESTAMPDIFF(MICROSECOND, '1970-01-01', UTC_TIMESTAMP(6)) / 1e6)";

/// A column only this version's registry has: a table without it predates epoch heartbeats.
pub const CURRENT_SHAPE_COLUMN: &str = "start_ticks";

type SqlResult<T> = std::result::Result<T, mysql::Error>;

pub fn create_table_sql(config: &DbConfig) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (
          idprocess BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
          host VARCHAR(100) NULL,
          pid INT UNSIGNED NOT NULL,
          boot_id VARCHAR(64) NULL,
          pid_namespace BIGINT UNSIGNED NULL,
          start_ticks BIGINT UNSIGNED NULL,
          started_at DOUBLE NULL,
          time_zone VARCHAR(64) NULL,
          works_for INT UNSIGNED NULL,
          reaps TINYINT(1) NOT NULL DEFAULT 0,
          registered_at DOUBLE NOT NULL,
          heartbeat_at DOUBLE NOT NULL,
          beats BIGINT UNSIGNED NULL,
          reap_runs BIGINT UNSIGNED NULL,
          released BIGINT UNSIGNED NULL,
          errors BIGINT UNSIGNED NULL,
          last_error VARCHAR(255) NULL,
          lease_seconds DOUBLE NULL,
          PRIMARY KEY (idprocess),
          INDEX index_host_pid (host, pid),
          INDEX index_heartbeat_at (heartbeat_at)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        config.table(TABLE)
    )
}

/// Registers this process start; returns its row id. `time_zone` is the session time zone its
/// claims write ts_started in (None: this session's, read by the INSERT itself). The table is
/// created here only if nobody installed it (an archiver normally needs no CREATE privilege).
pub fn register(
    conn: &mut Conn,
    config: &DbConfig,
    me: &Identity,
    reaps: bool,
    time_zone: Option<&str>,
    lease_seconds: f64,
) -> SqlResult<u64> {
    let insert = |lease: bool| {
        format!(
            "INSERT INTO {} (host, pid, boot_id, pid_namespace, start_ticks, started_at, time_zone, \
             works_for, reaps, registered_at, heartbeat_at{}) \
             VALUES (?, ?, ?, ?, ?, ?, COALESCE(?, @@session.time_zone), ?, ?, {DB_NOW}, {DB_NOW}{})",
            config.table(TABLE),
            if lease { ", lease_seconds" } else { "" },
            if lease { ", ?" } else { "" },
        )
    };
    let mut params: Vec<mysql::Value> = vec![
        me.host.clone().into(),
        me.pid.into(),
        me.boot_id.clone().into(),
        me.pid_namespace.into(),
        me.start_ticks.into(),
        me.started_at.into(),
        time_zone.into(),
        me.works_for.into(),
        reaps.into(),
    ];
    let without_lease = params.clone();
    params.push(lease_seconds.into());
    match conn.exec_drop(insert(true), params.clone()) {
        Err(mysql::Error::MySqlError(e)) if e.code == errno::NO_SUCH_TABLE => {
            conn.query_drop(create_table_sql(config))?;
            conn.exec_drop(insert(true), params)?;
        }
        // A registry older than the column: registered as before.
        Err(mysql::Error::MySqlError(e)) if e.code == errno::UNKNOWN_COLUMN => {
            conn.exec_drop(insert(false), without_lease)?;
        }
        other => other?,
    }
    Ok(conn.last_insert_id())
}

/// What a heartbeat thread has done so far, shown beside its registration (the plugin's page
/// reads them: the thread of an archiver elsewhere can be seen only through the database).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ThreadCounters {
    pub beats: u64,
    pub reap_runs: u64,
    pub released: u64,
    pub errors: u64,
    pub last_error: Option<String>,
}

/// The counter columns, added by `install_schema()` to registries made before them.
pub const COUNTER_COLUMNS: &[(&str, &str)] = &[
    ("beats", "BIGINT UNSIGNED NULL"),
    ("reap_runs", "BIGINT UNSIGNED NULL"),
    ("released", "BIGINT UNSIGNED NULL"),
    ("errors", "BIGINT UNSIGNED NULL"),
    ("last_error", "VARCHAR(255) NULL"),
];

/// The lease a process keeps (its own php.ini): a reaper whose lease is shorter must not read
/// the gap between two of its beats as silence. Added by `install_schema()` like the counters;
/// without it, every registration is judged by the reaper's lease alone, as before.
pub const LEASE_COLUMNS: &[(&str, &str)] = &[("lease_seconds", "DOUBLE NULL")];

/// Refreshes the heartbeat, and the thread's counters if given. Returns whether the row is
/// still there (false: pruned while we were frozen) and whether the counters were written
/// (false: the registry predates their columns; the beat itself is then made without them,
/// so an older schema never costs a beat).
pub fn heartbeat(
    conn: &mut Conn,
    config: &DbConfig,
    idprocess: u64,
    counters: Option<&ThreadCounters>,
) -> SqlResult<(bool, bool)> {
    let table = config.table(TABLE);
    let mut written = false;
    if let Some(c) = counters {
        let last_error = c
            .last_error
            .as_deref()
            .map(|e| e.chars().take(255).collect::<String>());
        let with_counters = conn.exec_drop(
            format!(
                "UPDATE {table} SET heartbeat_at = {DB_NOW}, beats = ?, reap_runs = ?, \
                 released = ?, errors = ?, last_error = ? WHERE idprocess = ?"
            ),
            (
                c.beats,
                c.reap_runs,
                c.released,
                c.errors,
                last_error,
                idprocess,
            ),
        );
        match with_counters {
            Ok(()) => written = true,
            Err(mysql::Error::MySqlError(e)) if e.code == errno::UNKNOWN_COLUMN => {}
            Err(e) => return Err(e),
        }
    }
    if !written {
        conn.exec_drop(
            format!("UPDATE {table} SET heartbeat_at = {DB_NOW} WHERE idprocess = ?"),
            (idprocess,),
        )?;
    }
    // An UPDATE within the same microsecond changes nothing but still matched the row.
    let found = conn.affected_rows() > 0 || exists(conn, config, idprocess)?;
    Ok((found, written))
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

type RegistryRow = (
    u64,
    Option<String>,
    u32,
    Option<String>,
    Option<u64>,
    Option<u64>,
    Option<String>,
    Option<u32>,
    bool,
    f64,
    f64,
    Option<f64>,
);

/// Every registration (of these hosts only, if given); None when the table does not exist
/// (nobody ever registered).
pub fn all(
    conn: &mut Conn,
    config: &DbConfig,
    hosts: Option<&[String]>,
) -> SqlResult<Option<Vec<Registration>>> {
    let sql = |lease: &str| {
        format!(
            "SELECT idprocess, host, pid, boot_id, pid_namespace, start_ticks, time_zone, works_for, \
                    reaps, registered_at, heartbeat_at, {lease} FROM {}",
            config.table(TABLE)
        )
    };
    let mut filter = String::new();
    let mut params: Vec<mysql::Value> = Vec::new();
    if let Some(hosts) = hosts {
        if hosts.is_empty() {
            return Ok(Some(Vec::new()));
        }
        filter = format!(" WHERE host IN ({})", vec!["?"; hosts.len()].join(","));
        params.extend(hosts.iter().map(|h| mysql::Value::from(h.as_str())));
    }
    let rows: SqlResult<Vec<RegistryRow>> =
        conn.exec(sql("lease_seconds") + &filter, params.clone());
    let rows = match rows {
        Err(mysql::Error::MySqlError(e)) if e.code == errno::NO_SUCH_TABLE => return Ok(None),
        // A registry older than the column: every process judged by the reaper's lease.
        Err(mysql::Error::MySqlError(e)) if e.code == errno::UNKNOWN_COLUMN => {
            conn.exec(sql("NULL") + &filter, params)?
        }
        other => other?,
    };
    Ok(Some(
        rows.into_iter()
            .map(
                |(
                    idprocess,
                    host,
                    pid,
                    boot_id,
                    pid_namespace,
                    start_ticks,
                    time_zone,
                    works_for,
                    reaps,
                    registered_at,
                    last_heartbeat,
                    lease_seconds,
                )| Registration {
                    idprocess,
                    host,
                    pid,
                    boot_id,
                    pid_namespace,
                    start_ticks,
                    time_zone,
                    works_for,
                    reaps,
                    registered_at,
                    last_heartbeat,
                    lease_seconds,
                },
            )
            .collect(),
    ))
}

/// Whether the registry's table exists (nobody may have registered yet).
pub fn exists_table(conn: &mut Conn, config: &DbConfig) -> SqlResult<bool> {
    let found: Option<u8> = conn.exec_first(
        "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
        (config.table_name(TABLE),),
    )?;
    Ok(found.is_some())
}

/// Pids registered on this very machine (host, boot, pid namespace): the local processes whose
/// death the host's reaper watches for.
pub fn pids_on_machine(conn: &mut Conn, config: &DbConfig, me: &Identity) -> SqlResult<Vec<u32>> {
    conn.exec(
        format!(
            "SELECT pid FROM {} WHERE host <=> ? AND boot_id <=> ? AND pid_namespace <=> ?",
            config.table(TABLE)
        ),
        (&me.host, &me.boot_id, me.pid_namespace),
    )
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
            "SELECT DISTINCT host FROM {} WHERE heartbeat_at < {DB_NOW} - ?",
            config.table(TABLE)
        ),
        (lease_seconds,),
    );
    match hosts {
        Err(mysql::Error::MySqlError(e)) if e.code == errno::NO_SUCH_TABLE => Ok(Vec::new()),
        other => Ok(other?.into_iter().flatten().collect()),
    }
}

/// Deletes the given registrations (found dead) unless an in-progress row still names their
/// host and pid: while a row names one, it is the evidence that its owner died.
pub fn forget(conn: &mut Conn, config: &DbConfig, idprocesses: &[u64]) -> SqlResult<u64> {
    let p = config.table(TABLE);
    let inv = config.table(invalidations::TABLE);
    let mut forgotten = 0;
    for chunk in idprocesses.chunks(500) {
        let marks = vec!["?"; chunk.len()].join(",");
        conn.exec_drop(
            format!(
                "DELETE p FROM {p} p WHERE p.idprocess IN ({marks}) \
                 AND NOT EXISTS (SELECT 1 FROM {inv} i WHERE i.status = {in_progress} \
                     AND i.processing_host <=> p.host AND i.process_id = CAST(p.pid AS CHAR))",
                in_progress = invalidations::STATUS_IN_PROGRESS
            ),
            chunk.to_vec(),
        )?;
        forgotten += conn.affected_rows();
    }
    Ok(forgotten)
}

/// Deletes registrations stale for longer than `older_than_seconds` that no in-progress row
/// names any more (processes that were never found dead by a reaper, e.g. on a host that went
/// away for good).
pub fn prune(conn: &mut Conn, config: &DbConfig, older_than_seconds: u64) -> SqlResult<u64> {
    let stale: Vec<u64> = conn.exec(
        format!(
            "SELECT idprocess FROM {} WHERE heartbeat_at < {DB_NOW} - ?",
            config.table(TABLE)
        ),
        (older_than_seconds as f64,),
    )?;
    forget(conn, config, &stale)
}

/// What a reaper lock is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaperDuty<'a> {
    /// The processes of one host: one reaper per host, which can see them.
    Host(Option<&'a str>),
    /// Hosts whose heartbeats went stale: one reaper for the whole fleet.
    StaleHosts,
}

/// Takes (without waiting) the lock for a reaper duty; it is tied to the connection, so it
/// passes on when its holder dies.
pub fn try_reaper_lock(conn: &mut Conn, config: &DbConfig, duty: ReaperDuty) -> SqlResult<bool> {
    let scope = match duty {
        ReaperDuty::Host(host) => format!("host/{}", host.unwrap_or("")),
        ReaperDuty::StaleHosts => "stale-hosts".to_owned(),
    };
    let got: Option<Option<i64>> = conn.exec_first(
        "SELECT GET_LOCK(CONCAT('matomo_archive_claim_', MD5(CONCAT(DATABASE(), '/', ?, '/', ?))), 0)",
        (&config.tables_prefix, scope),
    )?;
    Ok(got.flatten() == Some(1))
}

/// Marks this registration as the one that reaps for its host (so reapers elsewhere leave the
/// host's processes to it).
pub fn set_reaps(conn: &mut Conn, config: &DbConfig, idprocess: u64, reaps: bool) -> SqlResult<()> {
    conn.exec_drop(
        format!(
            "UPDATE {} SET reaps = ? WHERE idprocess = ?",
            config.table(TABLE)
        ),
        (reaps, idprocess),
    )
}

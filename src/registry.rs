//! Every statement on `<prefix>archive_claim_process`: one row per process start that claims
//! through the extension (or works for one that does), named in the kernel's frame (host, boot,
//! pid namespace, pid, start ticks), with a heartbeat: a version every beat bumps (what a
//! watcher compares, see `watch`) and the database clock's Unix seconds in UTC (shown, never
//! used to call a heartbeat stale).

use mysql::prelude::Queryable;
use mysql::Conn;

use crate::config::DbConfig;
use crate::error::errno;
use crate::identity::Identity;
use crate::invalidations;
use crate::liveness::Registration;
use crate::watch::{self, BeatToken};

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
          heartbeat_version BIGINT UNSIGNED NOT NULL DEFAULT 0,
          fence_count BIGINT UNSIGNED NOT NULL DEFAULT 0,
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
    // Current: with the lease and the heartbeat version (named, so that a registry without
    // them says so at once); older: as before either existed.
    let insert = |current: bool| {
        format!(
            "INSERT INTO {} (host, pid, boot_id, pid_namespace, start_ticks, started_at, time_zone, \
             works_for, reaps, registered_at, heartbeat_at{}) \
             VALUES (?, ?, ?, ?, ?, ?, COALESCE(?, @@session.time_zone), ?, ?, {DB_NOW}, {DB_NOW}{})",
            config.table(TABLE),
            if current { ", lease_seconds, heartbeat_version" } else { "" },
            if current { ", ?, 0" } else { "" },
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
    let unknown_column = |r: &SqlResult<()>| matches!(r, Err(mysql::Error::MySqlError(e)) if e.code == errno::UNKNOWN_COLUMN);
    let first = conn.exec_drop(insert(true), params.clone());
    match first {
        Err(mysql::Error::MySqlError(e)) if e.code == errno::NO_SUCH_TABLE => {
            conn.query_drop(create_table_sql(config))?;
            conn.exec_drop(insert(true), params)?;
        }
        // A registry of an earlier version: brought to the current shape if this account may
        // (Matomo's may: its own updates ALTER tables), else registered as before, and then
        // its heartbeats change only their timestamp and no release can be fenced on them.
        ref r if unknown_column(r) => {
            let _ = add_missing_columns(conn, config);
            let again = conn.exec_drop(insert(true), params);
            if unknown_column(&again) {
                conn.exec_drop(insert(false), without_lease)?;
            } else {
                again?;
            }
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

/// What a watcher compares and a release is fenced on (0.4). A registry without them is given
/// them before this process registers: a process that cannot add them (no ALTER privilege)
/// does not register, so its claims are judged as a stock claimer's, never released on a
/// silence nobody could fence.
pub const WATCH_COLUMNS: &[(&str, &str)] = &[
    ("heartbeat_version", "BIGINT UNSIGNED NOT NULL DEFAULT 0"),
    ("fence_count", "BIGINT UNSIGNED NOT NULL DEFAULT 0"),
];

/// Brings a registry made by an earlier version to the current shape (the watch columns, and
/// the lease and counter columns before them); a missing table is created by the caller.
fn add_missing_columns(conn: &mut Conn, config: &DbConfig) -> SqlResult<()> {
    let present: Vec<String> = conn.exec(
        "SELECT COLUMN_NAME FROM information_schema.COLUMNS \
          WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
        (config.table_name(TABLE),),
    )?;
    let missing: Vec<String> = COUNTER_COLUMNS
        .iter()
        .chain(LEASE_COLUMNS)
        .chain(WATCH_COLUMNS)
        .filter(|(name, _)| !present.iter().any(|c| c.eq_ignore_ascii_case(name)))
        .map(|(name, def)| format!("ADD COLUMN `{name}` {def}"))
        .collect();
    if present.is_empty() || missing.is_empty() {
        return Ok(());
    }
    conn.query_drop(format!(
        "ALTER TABLE {} {}",
        config.table(TABLE),
        missing.join(", ")
    ))
}

/// What every beat changes besides the timestamp: the version watchers compare.
const BUMP: &str = "heartbeat_version = heartbeat_version + 1";

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
                "UPDATE {table} SET heartbeat_at = {DB_NOW}, {BUMP}, beats = ?, reap_runs = ?, \
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
        let bumped = conn.exec_drop(
            format!("UPDATE {table} SET heartbeat_at = {DB_NOW}, {BUMP} WHERE idprocess = ?"),
            (idprocess,),
        );
        match bumped {
            // A registry without the version (no right to add it): the timestamp alone changes.
            Err(mysql::Error::MySqlError(e)) if e.code == errno::UNKNOWN_COLUMN => conn.exec_drop(
                format!("UPDATE {table} SET heartbeat_at = {DB_NOW} WHERE idprocess = ?"),
                (idprocess,),
            )?,
            other => other?,
        }
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

/// Every registration (of these hosts only, if given), each with what this process's watcher
/// has seen of its heartbeat; None when the table does not exist (nobody ever registered).
pub fn all(
    conn: &mut Conn,
    config: &DbConfig,
    hosts: Option<&[String]>,
) -> SqlResult<Option<Vec<Registration>>> {
    let sql = |lease: &str, version: &str| {
        format!(
            "SELECT idprocess, host, pid, boot_id, pid_namespace, start_ticks, time_zone, works_for, \
                    reaps, registered_at, heartbeat_at, {lease}, {version} FROM {}",
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
    let rows: SqlResult<Vec<mysql::Row>> = conn.exec(
        sql("lease_seconds", "heartbeat_version") + &filter,
        params.clone(),
    );
    let rows = match rows {
        Err(mysql::Error::MySqlError(e)) if e.code == errno::NO_SUCH_TABLE => return Ok(None),
        // A registry older than the columns: every process judged by the reaper's lease, and
        // watched by its timestamp alone (nobody registered here since it was current).
        Err(mysql::Error::MySqlError(e)) if e.code == errno::UNKNOWN_COLUMN => {
            conn.exec(sql("NULL", "NULL") + &filter, params)?
        }
        other => other?,
    };
    rows.into_iter()
        .map(registration_from_row)
        .collect::<SqlResult<Vec<_>>>()
        .map(Some)
}

fn registration_from_row(mut row: mysql::Row) -> SqlResult<Registration> {
    use crate::invalidations::col;
    let idprocess: u64 = col(&mut row, 0)?;
    let last_heartbeat: f64 = col(&mut row, 10)?;
    let version: Option<u64> = col(&mut row, 12)?;
    let token = BeatToken::new(version, last_heartbeat);
    Ok(Registration {
        idprocess,
        host: col(&mut row, 1)?,
        pid: col(&mut row, 2)?,
        boot_id: col(&mut row, 3)?,
        pid_namespace: col(&mut row, 4)?,
        start_ticks: col(&mut row, 5)?,
        time_zone: col(&mut row, 6)?,
        works_for: col(&mut row, 7)?,
        reaps: col(&mut row, 8)?,
        registered_at: col(&mut row, 9)?,
        last_heartbeat,
        lease_seconds: col(&mut row, 11)?,
        token,
        silence: watch::observed(idprocess, token),
    })
}

/// One registration as the watcher looks at it.
#[derive(Debug, Clone, PartialEq)]
pub struct Watched {
    pub idprocess: u64,
    pub host: Option<String>,
    pub token: BeatToken,
    /// The lease the process keeps (None: not recorded).
    pub lease_seconds: Option<f64>,
}

/// Every registration's heartbeat token, for the watcher's look (a registration is one row per
/// process start, so this stays small whatever the size of the invalidations table).
pub fn tokens(conn: &mut Conn, config: &DbConfig) -> SqlResult<Vec<Watched>> {
    type TokenRow = (u64, Option<String>, Option<u64>, f64, Option<f64>);
    let rows: Vec<TokenRow> = conn.query(format!(
        "SELECT idprocess, host, heartbeat_version, heartbeat_at, lease_seconds FROM {}",
        config.table(TABLE)
    ))?;
    Ok(rows
        .into_iter()
        .map(|(idprocess, host, version, at, lease_seconds)| Watched {
            idprocess,
            host,
            token: BeatToken::new(version, at),
            lease_seconds,
        })
        .collect())
}

/// Inside a release's transaction: bumps the registration's fence count if its heartbeat is
/// still `token` (the one watched silent). Returns false when it beat meanwhile, or is gone.
/// Writing the registration's row is what makes the release safe on a cluster: a heartbeat
/// that lands on any node meanwhile writes the same row, and Galera's certification (or the
/// row lock, on one server) lets only one of the two commit.
pub fn fence(
    q: &mut mysql::Transaction<'_>,
    config: &DbConfig,
    idprocess: u64,
    token: BeatToken,
) -> SqlResult<bool> {
    let fenced = q.exec_drop(
        format!(
            "UPDATE {} SET fence_count = fence_count + 1 \
              WHERE idprocess = ? AND heartbeat_version <=> ? AND heartbeat_at = ?",
            config.table(TABLE)
        ),
        (idprocess, token.version, token.heartbeat_at()),
    );
    match fenced {
        // A registry without the fence (no right to add it): nothing can be fenced, so
        // nothing is released on this silence.
        Err(mysql::Error::MySqlError(e)) if e.code == errno::UNKNOWN_COLUMN => Ok(false),
        Err(e) => Err(e),
        Ok(()) => Ok(q.affected_rows() == 1),
    }
}

/// Whether the registry's table exists (nobody may have registered yet).
pub fn exists_table(conn: &mut Conn, config: &DbConfig) -> SqlResult<bool> {
    let found: Option<u8> = conn.exec_first(
        "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
        (config.table_name(TABLE),),
    )?;
    Ok(found.is_some())
}

/// Processes registered on this very machine (host, boot, pid namespace), each with the pid it
/// works for if it is an archiving child: the local processes whose death the host's reaper
/// watches for.
pub fn pids_on_machine(
    conn: &mut Conn,
    config: &DbConfig,
    me: &Identity,
) -> SqlResult<Vec<(u32, Option<u32>)>> {
    conn.exec(
        format!(
            "SELECT pid, works_for FROM {} WHERE host <=> ? AND boot_id <=> ? AND pid_namespace <=> ?",
            config.table(TABLE)
        ),
        (&me.host, &me.boot_id, me.pid_namespace),
    )
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

/// What a reaper lock is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReaperDuty<'a> {
    /// The processes of one host: one reaper per host, which can see them.
    Host(Option<&'a str>),
    /// Hosts whose heartbeats went stale: one reaper for the whole fleet.
    StaleHosts,
}

/// Takes (without waiting) the lock for a reaper duty; it is tied to the connection, so it
/// passes on when its holder dies. A lock only saves work: it is node-local on Galera and gone
/// after a reconnect, so two holders may reap at once, which fencing makes safe.
pub fn try_reaper_lock(conn: &mut Conn, config: &DbConfig, duty: ReaperDuty) -> SqlResult<bool> {
    let scope = match duty {
        ReaperDuty::Host(host) => format!("host/{}", host.unwrap_or("")),
        ReaperDuty::StaleHosts => "stale-hosts".to_owned(),
    };
    let got: SqlResult<Option<Option<i64>>> = conn.exec_first(
        "SELECT GET_LOCK(CONCAT('matomo_archive_claim_', MD5(CONCAT(DATABASE(), '/', ?, '/', ?))), 0)",
        (&config.tables_prefix, scope),
    );
    match got {
        Ok(got) => Ok(got.flatten() == Some(1)),
        // Refused (Percona XtraDB Cluster's strict mode, some MariaDB releases on Galera):
        // the lock only saves work, so everyone takes the duty; fencing keeps it safe.
        Err(mysql::Error::MySqlError(e)) if e.code == errno::NOT_SUPPORTED_YET => Ok(true),
        Err(e) => Err(e),
    }
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

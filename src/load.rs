//! Load history for the operator's page: per host and minute, how many invalidations the
//! processes there claimed, finished and released through the extension, and how many they held.
//!
//! Why counters in memory and one row per minute: a claim must stay one statement (it is the
//! archiver's hot path), so the PHP thread only bumps atomics here, and the heartbeat thread
//! (which has a connection and a clock anyway) adds them to `<prefix>archive_claim_load` once a
//! minute, and once more when it stops, so a run shorter than a minute is recorded too. The
//! write never reads `archive_invalidations`, so its cost does not grow with that table; it
//! is one upsert per busy process and minute, and an idle process writes nothing.
//!
//! What is lost: the counts of a process killed since its last write (at most a minute's).
//! Released counts two things: a process's own claims it gave back (`release_invalidations`),
//! in its host's minute, and the rows a reaper released for dead owners, in the dead owner's
//! host's minute (`record_reaped`), so a server that died shows its work going back.
//!
//! Also here: the table of archive durations the plugin writes at each completion (from PHP,
//! through Matomo's connection), so that `install_schema()` creates both tables.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use mysql::prelude::Queryable;
use mysql::Conn;

use crate::config::DbConfig;

pub const TABLE: &str = "archive_claim_load";
pub const DURATION_TABLE: &str = "archive_claim_duration";

/// Rows older than this are deleted: the page shows 7 days, plus a day so a 7-day window that
/// starts in the middle of a minute still finds its first rows.
pub const RETENTION_SECONDS: u64 = 8 * 86_400;
/// How often one process prunes (each process does, so a fleet prunes more often than this).
const PRUNE_EVERY_SECONDS: u64 = 3_600;
/// A prune deletes at most this many rows at once, so it never holds locks for long.
const PRUNE_BATCH: u32 = 10_000;

const NO_SUCH_TABLE: u16 = 1146;

/// The pid the counters belong to: a `pcntl_fork` child starts from zero instead of
/// reporting its parent's counts a second time.
static PID: AtomicU32 = AtomicU32::new(0);
static CLAIMED: AtomicU64 = AtomicU64::new(0);
static FINISHED: AtomicU64 = AtomicU64::new(0);
static RELEASED: AtomicU64 = AtomicU64::new(0);
/// Claims this process holds now (claimed minus settled).
static HELD: AtomicI64 = AtomicI64::new(0);
/// Start of the minute (Unix seconds) the counters are being collected for; 0: not started.
static BUCKET: AtomicU64 = AtomicU64::new(0);
static LAST_PRUNE: AtomicU64 = AtomicU64::new(0);

fn own() {
    let pid = std::process::id();
    if PID.swap(pid, Ordering::AcqRel) != pid {
        for c in [&CLAIMED, &FINISHED, &RELEASED, &BUCKET, &LAST_PRUNE] {
            c.store(0, Ordering::Relaxed);
        }
        HELD.store(0, Ordering::Relaxed);
    }
}

/// A claim this process won.
pub fn claimed() {
    own();
    CLAIMED.fetch_add(1, Ordering::Relaxed);
    HELD.fetch_add(1, Ordering::Relaxed);
}

/// `ids` of this request's claims settled by a completion that deleted `finished` of them.
pub fn finished(ids: usize, finished: u64) {
    own();
    FINISHED.fetch_add(finished, Ordering::Relaxed);
    HELD.fetch_sub(ids as i64, Ordering::Relaxed);
}

/// `ids` of this request's claims given back, `changed` rows re-queued or deleted as duplicates.
pub fn released(ids: usize, changed: u64) {
    own();
    RELEASED.fetch_add(changed, Ordering::Relaxed);
    HELD.fetch_sub(ids as i64, Ordering::Relaxed);
}

fn now_seconds() -> u64 {
    // The minute a count belongs to is for display only (no liveness decision reads it), so
    // this host's clock is good enough; the page reads the rows against the database clock,
    // and NTP keeps the two within a minute's resolution.
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn create_table_sql(config: &DbConfig) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (
          minute INT UNSIGNED NOT NULL,
          host VARCHAR(100) NOT NULL,
          claimed INT UNSIGNED NOT NULL DEFAULT 0,
          finished INT UNSIGNED NOT NULL DEFAULT 0,
          released INT UNSIGNED NOT NULL DEFAULT 0,
          in_progress INT UNSIGNED NOT NULL DEFAULT 0,
          processes SMALLINT UNSIGNED NOT NULL DEFAULT 0,
          PRIMARY KEY (minute, host)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        config.table(TABLE)
    )
}

pub fn create_duration_table_sql(config: &DbConfig) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (
          idduration BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
          idsite INT UNSIGNED NOT NULL,
          period TINYINT UNSIGNED NOT NULL,
          finished_at DOUBLE NOT NULL,
          seconds DOUBLE NOT NULL,
          host VARCHAR(100) NULL,
          PRIMARY KEY (idduration),
          INDEX index_period_site_finished (period, idsite, finished_at),
          INDEX index_finished_at (finished_at)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        config.table(DURATION_TABLE)
    )
}

/// For `install_schema()`: creates what is missing, says what it created.
pub fn install(conn: &mut Conn, config: &DbConfig, dry_run: bool) -> mysql::Result<Vec<String>> {
    let mut changes = Vec::new();
    for (name, sql, what) in [
        (TABLE, create_table_sql(config), "load per host and minute"),
        (
            DURATION_TABLE,
            create_duration_table_sql(config),
            "how long archives took",
        ),
    ] {
        let table_name = config.table_name(name);
        let exists: Option<u8> = conn.exec_first(
            "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
            (&table_name,),
        )?;
        if exists.is_none() {
            if !dry_run {
                conn.query_drop(sql)?;
            }
            changes.push(format!("created table {table_name} ({what})"));
        }
    }
    Ok(changes)
}

/// Called by the heartbeat thread at each tick: once the minute has changed (or when the thread
/// stops), adds this process's counts to the minute they were collected in. Never an error for
/// the heartbeat: a failed write keeps the counts for the next tick.
pub fn tick(conn: &mut Conn, config: &DbConfig, stopping: bool) {
    own();
    let now = now_seconds();
    let minute = now - now % 60;
    let bucket = BUCKET.load(Ordering::Relaxed);
    if bucket == 0 {
        BUCKET.store(minute, Ordering::Relaxed);
        if !stopping {
            return;
        }
    } else if bucket == minute && !stopping {
        return;
    }
    let into = if bucket == 0 { minute } else { bucket };
    let counts = [
        CLAIMED.swap(0, Ordering::Relaxed),
        FINISHED.swap(0, Ordering::Relaxed),
        RELEASED.swap(0, Ordering::Relaxed),
    ];
    let held = HELD.load(Ordering::Relaxed).max(0) as u64;
    if counts == [0, 0, 0] && held == 0 {
        BUCKET.store(minute, Ordering::Relaxed);
        prune(conn, config, now);
        return;
    }
    let host = crate::identity::host_name().unwrap_or_else(|| "(unknown host)".to_owned());
    let write = |conn: &mut Conn| {
        conn.exec_drop(
            format!(
                "INSERT INTO {} (minute, host, claimed, finished, released, in_progress, processes)
                 VALUES (?, ?, ?, ?, ?, ?, 1)
                 ON DUPLICATE KEY UPDATE claimed = claimed + VALUES(claimed),
                   finished = finished + VALUES(finished), released = released + VALUES(released),
                   in_progress = in_progress + VALUES(in_progress), processes = processes + 1",
                config.table(TABLE)
            ),
            (into, &host, counts[0], counts[1], counts[2], held),
        )
    };
    let mut result = write(conn);
    if matches!(&result, Err(mysql::Error::MySqlError(e)) if e.code == NO_SUCH_TABLE) {
        // The plugin was not updated yet: the registry is created the same way.
        result = conn
            .query_drop(create_table_sql(config))
            .and_then(|_| write(conn));
    }
    match result {
        Ok(()) => {
            BUCKET.store(minute, Ordering::Relaxed);
            prune(conn, config, now);
        }
        Err(_) => {
            // Kept for the next tick (the heartbeat reports connection trouble itself).
            CLAIMED.fetch_add(counts[0], Ordering::Relaxed);
            FINISHED.fetch_add(counts[1], Ordering::Relaxed);
            RELEASED.fetch_add(counts[2], Ordering::Relaxed);
        }
    }
}

/// Rows a reap released for dead owners, as (the owner's host, how many): added to the
/// `released` of that host's current minute. Written at once, one upsert per host, instead of
/// by the heartbeat thread: a reap that releases anything is rare, and the reaper may be a
/// one-off command with no thread. Never an error for the reap: the history is for display.
pub fn record_reaped(conn: &mut Conn, config: &DbConfig, by_host: &[(String, u64)]) {
    let now = now_seconds();
    let minute = now - now % 60;
    for (host, released) in by_host.iter().filter(|(_, n)| *n > 0) {
        let write = |conn: &mut Conn| {
            conn.exec_drop(
                format!(
                    "INSERT INTO {} (minute, host, released) VALUES (?, ?, ?)
                     ON DUPLICATE KEY UPDATE released = released + VALUES(released)",
                    config.table(TABLE)
                ),
                (minute, host, released),
            )
        };
        if let Err(mysql::Error::MySqlError(e)) = write(conn) {
            if e.code == NO_SUCH_TABLE {
                let _ = conn
                    .query_drop(create_table_sql(config))
                    .and_then(|_| write(conn));
            }
        }
    }
}

/// The released rows' owner hosts counted per host, for `record_reaped` (a row without a
/// host is never released, and is not counted).
pub fn released_by_host<'a>(hosts: impl Iterator<Item = Option<&'a str>>) -> Vec<(String, u64)> {
    let mut counts: Vec<(String, u64)> = Vec::new();
    for host in hosts.flatten() {
        match counts.iter_mut().find(|(h, _)| h == host) {
            Some((_, n)) => *n += 1,
            None => counts.push((host.to_owned(), 1)),
        }
    }
    counts
}

/// Bounds both history tables by age, at most once an hour per process.
fn prune(conn: &mut Conn, config: &DbConfig, now: u64) {
    if now.saturating_sub(LAST_PRUNE.load(Ordering::Relaxed)) < PRUNE_EVERY_SECONDS {
        return;
    }
    LAST_PRUNE.store(now, Ordering::Relaxed);
    let cutoff = now.saturating_sub(RETENTION_SECONDS);
    // A missing table (never installed) is nothing to prune.
    let _ = conn.exec_drop(
        format!(
            "DELETE FROM {} WHERE minute < ? LIMIT {PRUNE_BATCH}",
            config.table(TABLE)
        ),
        (cutoff,),
    );
    let _ = conn.exec_drop(
        format!(
            "DELETE FROM {} WHERE finished_at < ? LIMIT {PRUNE_BATCH}",
            config.table(DURATION_TABLE)
        ),
        (cutoff as f64,),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reaped_rows_are_counted_per_owner_host() {
        let hosts = [Some("server2"), Some("server3"), None, Some("server2")];
        assert_eq!(
            released_by_host(hosts.into_iter()),
            vec![("server2".to_owned(), 2), ("server3".to_owned(), 1)]
        );
        assert!(released_by_host(std::iter::empty()).is_empty());
    }
}

//! Every statement this extension sends to `<prefix>archive_invalidations`, in one place.
//!
//! Claims are exactly Matomo's `startArchive()` write. Everything that undoes a claim (release,
//! complete, reap) is a compare-and-set on the owner, so a process that lost its row (reaped,
//! re-claimed by someone else) can never undo the newer claim.

use mysql::prelude::{FromValue, Queryable};
use mysql::{Conn, Row, Value};

use crate::config::DbConfig;
use crate::connection::Attempt;

pub const TABLE: &str = "archive_invalidations";

/// Matomo's `ArchiveInvalidator::INVALIDATION_STATUS_*`.
pub const STATUS_QUEUED: u8 = 0;
pub const STATUS_IN_PROGRESS: u8 = 1;

type SqlResult<T> = std::result::Result<T, mysql::Error>;

/// Who holds a row, as Matomo records it.
#[derive(Debug, Clone, PartialEq)]
pub struct Owner {
    pub processing_host: Option<String>,
    pub process_id: Option<String>,
}

/// A claim as observed: the owner plus when it claimed. A compare-and-set on all of it can only
/// succeed against the very claim that was looked at.
#[derive(Debug, Clone, PartialEq)]
pub struct Fence {
    pub owner: Owner,
    pub ts_started: Option<String>,
}

/// What happened to one row we tried to give back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseOutcome {
    /// Back to queued, owner cleared.
    Reset,
    /// Another row already covers the same archive: this one was deleted, as Matomo does.
    DeletedDuplicate,
    /// The row no longer matched the fence (finished, released or re-claimed meanwhile).
    LostRace,
}

/// One in-progress row with Matomo's column names.
#[derive(Debug, Clone, PartialEq)]
pub struct InvalidationRow {
    pub idinvalidation: u64,
    pub idarchive: Option<i64>,
    pub name: String,
    pub idsite: i64,
    pub date1: String,
    pub date2: String,
    pub period: i64,
    pub ts_invalidated: Option<String>,
    pub ts_started: Option<String>,
    pub status: i64,
    pub report: Option<String>,
    pub processing_host: Option<String>,
    pub process_id: Option<String>,
    /// Seconds since ts_started on the database clock.
    pub age_seconds: Option<i64>,
    /// ts_started as Unix seconds, read in `claim_zone`.
    pub claimed_at: Option<f64>,
    /// ts_started lies in a DST fold of `claim_zone`: it names two instants.
    pub in_dst_fold: bool,
    /// The time zone ts_started was read in: the registered claimer's, else this session's.
    pub claim_zone: Option<String>,
}

impl InvalidationRow {
    pub fn fence(&self) -> Fence {
        Fence {
            owner: Owner {
                processing_host: self.processing_host.clone(),
                process_id: self.process_id.clone(),
            },
            ts_started: self.ts_started.clone(),
        }
    }
}

/// Filters of `in_progress()` (and the row selection of a reap).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowFilter {
    pub idsites: Option<Vec<i64>>,
    pub hosts: Option<Vec<String>>,
    pub started_after: Option<String>,
    pub started_before: Option<String>,
    /// Also rows in progress without ts_started (a reap reports them as never_started).
    pub include_never_started: bool,
}

/// Matomo's claim: one autocommit compare-and-set from queued to in progress.
///
/// After a reconnect we cannot know whether the first attempt committed before the connection
/// died; if the row is now in progress under our own host and pid, it was that attempt.
pub fn claim(
    conn: &mut Conn,
    config: &DbConfig,
    idinvalidation: i64,
    owner: &Owner,
    attempt: Attempt,
) -> SqlResult<bool> {
    let t = config.table(TABLE);
    conn.exec_drop(
        format!(
            "UPDATE {t} SET status = ?, processing_host = ?, process_id = ?, ts_started = NOW() \
             WHERE idinvalidation = ? AND status = ?"
        ),
        (
            STATUS_IN_PROGRESS,
            &owner.processing_host,
            &owner.process_id,
            idinvalidation,
            STATUS_QUEUED,
        ),
    )?;
    if conn.affected_rows() > 0 {
        return Ok(true);
    }
    if attempt == Attempt::AfterReconnect {
        let ours: Option<u8> = conn.exec_first(
            format!(
                "SELECT 1 FROM {t} WHERE idinvalidation = ? AND status = ? \
                 AND processing_host <=> ? AND process_id <=> ?"
            ),
            (
                idinvalidation,
                STATUS_IN_PROGRESS,
                &owner.processing_host,
                &owner.process_id,
            ),
        )?;
        return Ok(ours.is_some());
    }
    Ok(false)
}

/// The claims among `ids` that `owner` holds right now, in id order, with their fences.
pub fn owned_claims(
    conn: &mut Conn,
    config: &DbConfig,
    ids: &[i64],
    owner: &Owner,
) -> SqlResult<Vec<(u64, Fence)>> {
    let t = config.table(TABLE);
    let mut out = Vec::new();
    for chunk in ids.chunks(1000) {
        let mut params: Vec<Value> = chunk.iter().map(|id| Value::from(*id)).collect();
        params.push(Value::from(STATUS_IN_PROGRESS));
        params.push(Value::from(owner.processing_host.clone()));
        params.push(Value::from(owner.process_id.clone()));
        let rows: Vec<(u64, Option<String>)> = conn.exec(
            format!(
                "SELECT idinvalidation, CAST(ts_started AS CHAR) FROM {t} \
                 WHERE idinvalidation IN ({}) AND status = ? \
                 AND processing_host <=> ? AND process_id <=> ? ORDER BY idinvalidation",
                placeholders(chunk.len())
            ),
            params,
        )?;
        out.extend(rows.into_iter().map(|(id, ts_started)| {
            (
                id,
                Fence {
                    owner: owner.clone(),
                    ts_started,
                },
            )
        }));
    }
    Ok(out)
}

/// Gives one claim back with Matomo's release semantics, fenced on the claim that was observed:
/// deleted when it has a duplicate (re-queueing would archive the same thing twice), otherwise
/// back to queued with the owner cleared.
pub fn release_one(
    conn: &mut Conn,
    config: &DbConfig,
    idinvalidation: u64,
    fence: &Fence,
) -> SqlResult<ReleaseOutcome> {
    let t = config.table(TABLE);
    let duplicate = has_duplicate(conn, config, idinvalidation)?;
    let fenced = "idinvalidation = ? AND status = ? AND processing_host <=> ? \
                  AND process_id <=> ? AND ts_started <=> ?";
    let params = (
        idinvalidation,
        STATUS_IN_PROGRESS,
        &fence.owner.processing_host,
        &fence.owner.process_id,
        &fence.ts_started,
    );
    if duplicate {
        conn.exec_drop(format!("DELETE FROM {t} WHERE {fenced}"), params)?;
        return Ok(if conn.affected_rows() > 0 {
            ReleaseOutcome::DeletedDuplicate
        } else {
            ReleaseOutcome::LostRace
        });
    }
    conn.exec_drop(
        format!(
            "UPDATE {t} SET status = {STATUS_QUEUED}, processing_host = NULL, process_id = NULL, \
             ts_started = NULL WHERE {fenced}"
        ),
        params,
    )?;
    Ok(if conn.affected_rows() > 0 {
        ReleaseOutcome::Reset
    } else {
        ReleaseOutcome::LostRace
    })
}

/// Whether releasing this row would delete it: another row for the same archive (name, site,
/// dates, period, report) is queued, or in progress and started after this one was invalidated.
pub fn has_duplicate(conn: &mut Conn, config: &DbConfig, idinvalidation: u64) -> SqlResult<bool> {
    let t = config.table(TABLE);
    let found: Option<u8> = conn.exec_first(
        format!(
            "SELECT 1 FROM {t} o JOIN {t} r ON r.idinvalidation = ? \
             WHERE o.idinvalidation <> r.idinvalidation \
               AND o.idsite = r.idsite AND o.date1 = r.date1 AND o.period = r.period \
               AND o.date2 = r.date2 AND o.name = r.name \
               AND IFNULL(o.report, '') = IFNULL(r.report, '') \
               AND (o.status = ? OR (o.status = ? AND o.ts_started > r.ts_invalidated)) \
             LIMIT 1"
        ),
        (idinvalidation, STATUS_QUEUED, STATUS_IN_PROGRESS),
    )?;
    Ok(found.is_some())
}

/// Deletes finished claims, only those `owner` still holds. Returns how many went.
pub fn complete(conn: &mut Conn, config: &DbConfig, ids: &[i64], owner: &Owner) -> SqlResult<u64> {
    let t = config.table(TABLE);
    let mut deleted = 0;
    for chunk in ids.chunks(1000) {
        let mut params: Vec<Value> = chunk.iter().map(|id| Value::from(*id)).collect();
        params.push(Value::from(STATUS_IN_PROGRESS));
        params.push(Value::from(owner.processing_host.clone()));
        params.push(Value::from(owner.process_id.clone()));
        conn.exec_drop(
            format!(
                "DELETE FROM {t} WHERE idinvalidation IN ({}) AND status = ? \
                 AND processing_host <=> ? AND process_id <=> ?",
                placeholders(chunk.len())
            ),
            params,
        )?;
        deleted += conn.affected_rows();
    }
    Ok(deleted)
}

/// ts_started as Unix seconds, read in the time zone of the session that wrote it (`zone`),
/// and whether that local time names two instants there (the hour a DST change repeats).
fn claim_time_sql(zone: &str) -> String {
    let utc = format!("CONVERT_TZ(ts_started, {zone}, '+00:00')");
    format!(
        "TIMESTAMPDIFF(MICROSECOND, '1970-01-01', {utc}) / 1e6, \
         (CONVERT_TZ({utc} + INTERVAL 1 HOUR, '+00:00', {zone}) <=> ts_started \
          OR CONVERT_TZ({utc} - INTERVAL 1 HOUR, '+00:00', {zone}) <=> ts_started)"
    )
}

/// What Matomo's `getInvalidationsInProgress()` returns (in progress, ts_started set), oldest
/// claim first, with the age on the database clock. `registry`: the process registry's table,
/// if it exists: a row claimed by a registered process is read in the time zone that process's
/// session wrote it in (what it recorded when it registered), any other in this session's.
pub fn in_progress(
    conn: &mut Conn,
    config: &DbConfig,
    filter: &RowFilter,
    registry: Option<&str>,
) -> SqlResult<Vec<InvalidationRow>> {
    let t = config.table(TABLE);
    let writer_zone = match registry {
        Some(p) => format!(
            "COALESCE((SELECT p.time_zone FROM {p} p WHERE p.host <=> i.processing_host \
             AND p.pid = i.process_id AND p.works_for IS NULL ORDER BY p.idprocess DESC LIMIT 1), \
             @@session.time_zone)"
        ),
        None => "@@session.time_zone".to_owned(),
    };
    let mut inner = format!("SELECT i.*, {writer_zone} AS claim_zone FROM {t} i WHERE status = ?");
    if !filter.include_never_started {
        inner += " AND ts_started IS NOT NULL";
    }
    let mut params = vec![Value::from(STATUS_IN_PROGRESS)];
    if let Some(idsites) = &filter.idsites {
        if idsites.is_empty() {
            return Ok(Vec::new());
        }
        inner += &format!(" AND idsite IN ({})", placeholders(idsites.len()));
        params.extend(idsites.iter().map(|s| Value::from(*s)));
    }
    if let Some(hosts) = &filter.hosts {
        if hosts.is_empty() {
            return Ok(Vec::new());
        }
        inner += &format!(" AND processing_host IN ({})", placeholders(hosts.len()));
        params.extend(hosts.iter().map(|h| Value::from(h.as_str())));
    }
    if let Some(after) = &filter.started_after {
        inner += " AND ts_started > ?";
        params.push(Value::from(after.as_str()));
    }
    if let Some(before) = &filter.started_before {
        inner += " AND ts_started < ?";
        params.push(Value::from(before.as_str()));
    }
    // A zone the server cannot convert (its tables unloaded since) reads as our session's.
    let sql = format!(
        "SELECT idinvalidation, idarchive, name, idsite, CAST(date1 AS CHAR), CAST(date2 AS CHAR), \
                period, CAST(ts_invalidated AS CHAR), CAST(ts_started AS CHAR), status, report, \
                processing_host, process_id, TIMESTAMPDIFF(SECOND, ts_started, NOW()), \
                {}, read_zone \
           FROM (SELECT x.*, IF(CONVERT_TZ(ts_started, claim_zone, '+00:00') IS NULL, \
                                @@session.time_zone, claim_zone) AS read_zone FROM ({inner}) x) y \
          ORDER BY ts_started ASC, idinvalidation ASC",
        claim_time_sql("read_zone")
    );
    let rows: Vec<Row> = conn.exec(sql, params)?;
    rows.into_iter().map(row_from_sql).collect()
}

fn row_from_sql(mut row: Row) -> SqlResult<InvalidationRow> {
    Ok(InvalidationRow {
        idinvalidation: col(&mut row, 0)?,
        idarchive: col(&mut row, 1)?,
        name: col(&mut row, 2)?,
        idsite: col(&mut row, 3)?,
        date1: col(&mut row, 4)?,
        date2: col(&mut row, 5)?,
        period: col(&mut row, 6)?,
        ts_invalidated: col(&mut row, 7)?,
        ts_started: col(&mut row, 8)?,
        status: col(&mut row, 9)?,
        report: col(&mut row, 10)?,
        processing_host: col(&mut row, 11)?,
        process_id: col(&mut row, 12)?,
        age_seconds: col(&mut row, 13)?,
        claimed_at: col(&mut row, 14)?,
        in_dst_fold: col::<Option<i64>>(&mut row, 15)?.unwrap_or(0) != 0,
        claim_zone: col(&mut row, 16)?,
    })
}

/// A column without the driver's panicking conversions.
fn col<T: FromValue>(row: &mut Row, index: usize) -> SqlResult<T> {
    match row.take_opt::<T, usize>(index) {
        Some(Ok(v)) => Ok(v),
        Some(Err(e)) => Err(mysql::Error::FromValueError(e.0)),
        None => Err(mysql::Error::FromValueError(Value::NULL)),
    }
}

fn placeholders(n: usize) -> String {
    let mut s = String::with_capacity(n * 2);
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push('?');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_match_the_count() {
        assert_eq!(placeholders(0), "");
        assert_eq!(placeholders(1), "?");
        assert_eq!(placeholders(3), "?,?,?");
    }
}

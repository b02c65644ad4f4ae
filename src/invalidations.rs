//! Every statement this extension sends to `<prefix>archive_invalidations`, in one place.
//!
//! Claims are exactly Matomo's `startArchive()` write. Everything that undoes a claim (release,
//! complete, reap) is a compare-and-set on the owner, so a process that lost its row (reaped,
//! re-claimed by someone else) can never undo the newer claim.

use std::collections::{HashMap, HashSet};

use mysql::prelude::{FromValue, Queryable};
use mysql::{Conn, Params, Row, Transaction, TxOpts, Value};

use crate::config::DbConfig;
use crate::connection::Attempt;
use crate::error::errno::DEADLOCK;

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

impl Owner {
    /// The owner columns this process writes, from its identity read now (after a fork, the
    /// child's own pid). Only host and pid: this runs on every claim, and the rest of the
    /// identity costs file reads in /proc that a claim does not need.
    pub fn current() -> Owner {
        Owner {
            process_id: Some(std::process::id().to_string()),
            processing_host: crate::identity::host_name(),
        }
    }
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
    /// Seconds since ts_started on the database clock, ts_started read in `claim_zone`.
    pub age_seconds: Option<i64>,
    /// ts_started as Unix seconds, read in `claim_zone`.
    pub claimed_at: Option<f64>,
    /// ts_started lies in a DST fold of `claim_zone`: it names two instants.
    pub in_dst_fold: bool,
    /// The time zone ts_started was read in: the registered claimer's, else this session's.
    pub claim_zone: Option<String>,
    /// Whether idarchive, name, ts_invalidated and report were read (see
    /// `RowFilter::decision_columns_only`); empty otherwise.
    pub archive_details: bool,
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

/// A bound on ts_started, which is a local time of the database.
#[derive(Debug, Clone, PartialEq)]
pub enum TimeBound {
    /// 'YYYY-MM-DD[ HH:MM:SS]' as the database writes ts_started: compared as it is.
    Local(String),
    /// An instant (Unix seconds): turned into the database's local time by the database
    /// (`FROM_UNIXTIME`), so "an hour ago" means the same whatever time zone it runs in.
    Unix(i64),
}

impl TimeBound {
    /// The SQL for this bound (one placeholder) and its parameter.
    fn sql(&self) -> (&'static str, Value) {
        match self {
            TimeBound::Local(s) => ("?", Value::from(s.as_str())),
            TimeBound::Unix(t) => ("FROM_UNIXTIME(?)", Value::from(*t)),
        }
    }
}

/// Filters of `in_progress()` (and the row selection of a reap).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RowFilter {
    pub idsites: Option<Vec<i64>>,
    pub hosts: Option<Vec<String>>,
    pub started_after: Option<TimeBound>,
    pub started_before: Option<TimeBound>,
    /// Also rows in progress without ts_started (a reap reports them as never_started).
    pub include_never_started: bool,
    /// In id order, as a reap walks them, instead of oldest claim first: sorting 10,000 rows
    /// by ts_started cost a third of reading them on a 1M-row table.
    pub by_id: bool,
    /// Oldest claim first, only rows after this one: (ts_started, idinvalidation) of the last
    /// row of the previous page.
    pub after: Option<(String, u64)>,
    /// At most this many rows.
    pub limit: Option<usize>,
    /// Only the columns a reap decides on, which the plugin's index covers (no table row is
    /// read); `read_details` adds the others for the rows that need them.
    pub decision_columns_only: bool,
}

/// Matomo's claim: one autocommit compare-and-set from queued to in progress.
///
/// Our sessions give up on a row lock before they give up on the server (see
/// `connection::connect`): a row another transaction holds longer than that is not claimed,
/// and nothing of the attempt commits later. After a reconnect the first attempt's statement
/// has been stopped and has finished (`connection::run`): if the row is now in progress under
/// our own host and pid, that attempt committed and the claim is ours.
pub fn claim(
    conn: &mut Conn,
    config: &DbConfig,
    idinvalidation: i64,
    owner: &Owner,
    attempt: Attempt,
) -> SqlResult<bool> {
    let t = config.table(TABLE);
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
        if ours.is_some() {
            return Ok(true);
        }
    }
    let mut attempts = 0;
    loop {
        attempts += 1;
        let updated = conn.exec_drop(
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
        );
        return match updated {
            Err(mysql::Error::MySqlError(e))
                if e.code == crate::error::errno::LOCK_WAIT_TIMEOUT =>
            {
                Ok(false)
            }
            // Rolled back: a deadlock victim, or on Galera another node claimed the row first
            // (certification). Asked again, the row is either still queued (ours now) or
            // taken; after a few tries it is somebody else's to hold, never ours.
            Err(mysql::Error::MySqlError(e)) if e.code == DEADLOCK => {
                if attempts < CLAIM_ATTEMPTS {
                    std::thread::sleep(std::time::Duration::from_millis(5 * u64::from(attempts)));
                    continue;
                }
                Ok(false)
            }
            Err(e) => Err(e),
            Ok(()) => Ok(conn.affected_rows() > 0),
        };
    }
}

/// How often a claim rolled back as a deadlock victim (on Galera: beaten by another node) is
/// asked again before it answers that the row is not ours.
const CLAIM_ATTEMPTS: u32 = 3;

/// The character set of `processing_host` in this table, and the name as it comes back after a
/// trip through it on this connection. A name the column (or the connection) cannot hold comes
/// back changed (an emoji through utf8mb3 is stored as '?'): a claim stored under it could never
/// be matched again by its owner. None: no such column (the claim's own error says so).
pub fn host_round_trip(
    conn: &mut Conn,
    config: &DbConfig,
    host: &str,
) -> SqlResult<Option<(String, Option<String>)>> {
    let charset: Option<Option<String>> = conn.exec_first(
        "SELECT CHARACTER_SET_NAME FROM information_schema.COLUMNS \
          WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = 'processing_host'",
        (config.table_name(TABLE),),
    )?;
    let Some(Some(charset)) = charset else {
        return Ok(None);
    };
    // A name the server reported; only characters charset names use go into the SQL.
    if charset.is_empty()
        || !charset
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        return Ok(None);
    }
    let back: Option<Option<String>> =
        conn.exec_first(format!("SELECT CONVERT(? USING {charset})"), (host,))?;
    Ok(Some((charset, back.flatten())))
}

/// Ids per statement when a set of rows is read, locked or written: large enough that a reap of
/// a few thousand orphans is one statement of each kind, small enough for any
/// `max_allowed_packet` (ids are sent as literals, so no 65,535-placeholder limit applies).
const CHUNK: usize = 5_000;

/// Ids per DELETE of finished claims: the statement is cheap per row and costs a parse and a
/// prepare per chunk, so fewer, larger ones (150,000 ids: 0.49 s in chunks of 50,000, 0.68 s in
/// chunks of 5,000); at most about 1 MB of text.
const DELETE_CHUNK: usize = 50_000;

/// Matomo's duplicate rule joins a row `r` to the other rows `o` of the same archive. Text and
/// date comparisons stay in SQL so that they follow the column collations exactly as Matomo's
/// own query does (`'done'` and `'DONE'` are the same name to it).
const SAME_ARCHIVE: &str = "o.idsite = r.idsite AND o.date1 = r.date1 AND o.period = r.period \
    AND o.date2 = r.date2 AND o.name = r.name AND IFNULL(o.report, '') = IFNULL(r.report, '') \
    AND o.idinvalidation <> r.idinvalidation";

/// What releasing one row does under Matomo's rule, decided before anything is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Back to queued, owner and ts_started cleared.
    Requeue,
    /// Deleted: another row already covers the same archive.
    Delete,
}

/// What Matomo's duplicate check would find for one row of a set being released together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TwinFacts {
    pub idinvalidation: u64,
    /// A row of the same archive outside the set is queued, or in progress and started after
    /// this row's ts_invalidated.
    pub outside_duplicate: bool,
    /// The other rows of the set for the same archive (all in progress when the release
    /// starts), each with whether its ts_started is after this row's ts_invalidated.
    pub released_twins: Vec<(u64, bool)>,
}

/// Settles a set of rows released together exactly as Matomo's row-by-row loop would, in id
/// order: when row i is looked at, the rows before it in the set are already queued again (a
/// queued duplicate for row i) or deleted (gone), and the rows after it are still in progress
/// with the ts_started they had. Pure; the result is aligned with `rows`.
pub fn settle(rows: &[TwinFacts]) -> Vec<Settlement> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| rows[i].idinvalidation);
    let mut requeued = HashSet::new();
    let mut out = vec![Settlement::Requeue; rows.len()];
    for i in order {
        let row = &rows[i];
        let duplicate = row.outside_duplicate
            || row.released_twins.iter().any(|&(twin, started_after)| {
                if twin < row.idinvalidation {
                    requeued.contains(&twin)
                } else {
                    started_after
                }
            });
        if duplicate {
            out[i] = Settlement::Delete;
        } else {
            requeued.insert(row.idinvalidation);
        }
    }
    out
}

/// Where Matomo's duplicates of a row can be: rows of the same archive share (idsite, date1,
/// period) exactly (integers and a date, no collation involved), so chunks that never split a
/// slot see every twin a row has within the set being released.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slot {
    pub idsite: i64,
    pub date1: String,
    pub period: i64,
}

/// Splits a set into chunks of about `CHUNK` rows, never splitting a slot.
fn chunks_by_slot(rows: &[(u64, Slot)]) -> Vec<Vec<u64>> {
    let mut sorted: Vec<&(u64, Slot)> = rows.iter().collect();
    sorted.sort_by(|a, b| (&a.1, a.0).cmp(&(&b.1, b.0)));
    let mut chunks: Vec<Vec<u64>> = Vec::new();
    let mut current: Vec<u64> = Vec::new();
    let mut last_slot: Option<&Slot> = None;
    for (id, slot) in sorted {
        if current.len() >= CHUNK && last_slot != Some(slot) {
            chunks.push(std::mem::take(&mut current));
        }
        current.push(*id);
        last_slot = Some(slot);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    chunks
}

/// The duplicate facts of a set of rows (unique ids), one query per chunk: every other row of
/// the same archive, queued or in progress (with Matomo's started-after comparison made by the
/// server), the ones in progress told apart here as inside or outside the set. One pass: the
/// earlier form (in-progress twins, UNION ALL an EXISTS for queued ones) read every row of the
/// set twice, half of a dry run's duplicate check.
///
/// The plan is pinned: `r` first (the ids), `o` reached only through Matomo's index on (idsite,
/// date1, period). `status + 0` keeps an index on status out of it, and no id list is offered
/// for `o`: with an id list, MariaDB was seen driving `o` from it on a freshly grown table
/// (every candidate against every other: 3.3 s for 2,000 rows instead of 8 ms).
/// What Matomo's sequential release would do with each of these rows, by id: the facts read in
/// one pass, settled in id order. The dry run and the release share it, so they cannot differ.
fn settlements<Q: Queryable>(
    q: &mut Q,
    config: &DbConfig,
    rows: &[(u64, Slot)],
) -> SqlResult<HashMap<u64, Settlement>> {
    let facts = twin_facts(q, config, rows)?;
    Ok(facts
        .iter()
        .map(|f| f.idinvalidation)
        .zip(settle(&facts))
        .collect())
}

fn twin_facts<Q: Queryable>(
    q: &mut Q,
    config: &DbConfig,
    rows: &[(u64, Slot)],
) -> SqlResult<Vec<TwinFacts>> {
    let t = config.table(TABLE);
    let mut facts: Vec<TwinFacts> = Vec::with_capacity(rows.len());
    for chunk in chunks_by_slot(rows) {
        let list = literal_ids(&chunk);
        let first = facts.len();
        let index: HashMap<u64, usize> = chunk
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, first + i))
            .collect();
        facts.extend(chunk.iter().map(|&idinvalidation| TwinFacts {
            idinvalidation,
            ..TwinFacts::default()
        }));
        // One pass over the twins of every row, queued and in progress alike: Matomo has no
        // other status, and a queued twin is a duplicate whatever its times.
        let found: Vec<Row> = q.query(format!(
            "SELECT r.idinvalidation, o.idinvalidation, o.status + 0 = {STATUS_QUEUED}, \
                    o.ts_started > r.ts_invalidated \
               FROM {t} r STRAIGHT_JOIN {t} o \
                 ON {SAME_ARCHIVE} AND o.status + 0 IN ({STATUS_QUEUED}, {STATUS_IN_PROGRESS}) \
              WHERE r.idinvalidation IN ({list})"
        ))?;
        for mut row in found {
            let id: u64 = col(&mut row, 0)?;
            let twin: u64 = col(&mut row, 1)?;
            let queued = col::<Option<i64>>(&mut row, 2)? == Some(1);
            let started_after = col::<Option<i64>>(&mut row, 3)? == Some(1);
            let Some(&i) = index.get(&id) else { continue };
            if queued {
                facts[i].outside_duplicate = true;
            } else if index.contains_key(&twin) {
                facts[i].released_twins.push((twin, started_after));
            } else {
                facts[i].outside_duplicate |= started_after;
            }
        }
    }
    Ok(facts)
}

/// What a release of these rows would do, without writing (a dry run): the same facts and the
/// same settlement as `release_fenced`. Aligned with `rows`.
pub fn plan_release(
    conn: &mut Conn,
    config: &DbConfig,
    rows: &[(u64, Slot)],
) -> SqlResult<Vec<Settlement>> {
    let settled = settlements(conn, config, rows)?;
    Ok(rows
        .iter()
        .map(|(id, _)| settled.get(id).copied().unwrap_or(Settlement::Requeue))
        .collect())
}

/// Gives rows back with Matomo's release semantics, each only if it is still the claim that was
/// observed (`Fence`), in one transaction: the rows are locked and re-read (`FOR UPDATE`), those
/// still matching are settled in id order and written with one UPDATE and one DELETE per chunk.
/// The lock makes every outcome exact. Aligned with `rows`.
///
/// `unanswered`: set to what the transaction wrote once all of it is written, and cleared once
/// its COMMIT is answered. Left set when the connection is lost in between (the COMMIT may or
/// may not have landed): `landed` tells which, on a new connection.
///
/// `vetoed` runs first in the transaction and names rows that must not be released after all
/// (their owner's registration beat since it was watched silent): it writes what a concurrent
/// heartbeat writes, so on a cluster only one of the two commits.
pub fn release_fenced(
    conn: &mut Conn,
    config: &DbConfig,
    rows: &[(u64, Fence)],
    mut vetoed: impl FnMut(&mut Transaction<'_>) -> SqlResult<HashSet<u64>>,
    unanswered: &mut Option<HashMap<u64, Settlement>>,
) -> SqlResult<Vec<ReleaseOutcome>> {
    let t = config.table(TABLE);
    *unanswered = None;
    let settled = in_transaction(conn, |tx| {
        let vetoed = vetoed(tx)?;
        let ids = sorted_unique(
            rows.iter()
                .map(|(id, _)| *id)
                .filter(|id| !vetoed.contains(id)),
        );
        let observed: HashMap<u64, &Fence> = rows.iter().map(|(id, f)| (*id, f)).collect();
        let mut held = Vec::new();
        for chunk in ids.chunks(CHUNK) {
            let locked: Vec<Row> = tx.query(format!(
                "SELECT idinvalidation, processing_host, process_id, CAST(ts_started AS CHAR), \
                        idsite, CAST(date1 AS CHAR), period \
                   FROM {t} WHERE idinvalidation IN ({}) AND status = {STATUS_IN_PROGRESS} \
                  ORDER BY idinvalidation FOR UPDATE",
                literal_ids(chunk)
            ))?;
            for mut row in locked {
                let id: u64 = col(&mut row, 0)?;
                let now = Fence {
                    owner: Owner {
                        processing_host: col(&mut row, 1)?,
                        process_id: col(&mut row, 2)?,
                    },
                    ts_started: col(&mut row, 3)?,
                };
                // Exact comparison, stricter than the collation: a doubt keeps the row.
                if observed.get(&id) == Some(&&now) {
                    held.push((id, slot(&mut row, 4)?));
                }
            }
        }
        let settled = release_held(tx, config, &held)?;
        *unanswered = Some(settled.clone());
        Ok(settled)
    })?;
    *unanswered = None;
    Ok(rows
        .iter()
        .map(|(id, _)| match settled.get(id) {
            Some(Settlement::Requeue) => ReleaseOutcome::Reset,
            Some(Settlement::Delete) => ReleaseOutcome::DeletedDuplicate,
            None => ReleaseOutcome::LostRace,
        })
        .collect())
}

/// Whether a release whose COMMIT went unanswered landed: every row it re-queued is queued
/// without an owner and every row it deleted is gone. Our transaction held these rows locked
/// until it ended, so had it been rolled back they would still be in progress as observed
/// (unless their owner or another reaper released them since, in which case they count here
/// as well: they were released either way).
pub fn landed(
    conn: &mut Conn,
    config: &DbConfig,
    wrote: &HashMap<u64, Settlement>,
) -> SqlResult<bool> {
    let t = config.table(TABLE);
    let ids = sorted_unique(wrote.keys().copied());
    let mut seen: HashMap<u64, bool> = HashMap::new();
    for chunk in ids.chunks(CHUNK) {
        let rows: Vec<(u64, bool)> = conn.query(format!(
            "SELECT idinvalidation, (status = {STATUS_QUEUED} AND processing_host IS NULL \
             AND process_id IS NULL AND ts_started IS NULL) FROM {t} WHERE idinvalidation IN ({})",
            literal_ids(chunk)
        ))?;
        seen.extend(rows);
    }
    Ok(wrote.iter().all(|(id, s)| match s {
        Settlement::Requeue => seen.get(id) == Some(&true),
        Settlement::Delete => !seen.contains_key(id),
    }))
}

/// Gives back the rows among `ids` that `owner` holds right now (Matomo's
/// `releaseInProgressInvalidations()`, fenced on the owner), in one transaction. Returns how
/// many rows changed (re-queued or deleted as duplicates).
pub fn release_owned(
    conn: &mut Conn,
    config: &DbConfig,
    ids: &[i64],
    owner: &Owner,
) -> SqlResult<u64> {
    let t = config.table(TABLE);
    let ids = sorted_unique(ids.iter().filter_map(|id| u64::try_from(*id).ok()));
    let settled = in_transaction(conn, |tx| {
        let mut held = Vec::new();
        for chunk in ids.chunks(CHUNK) {
            let locked: Vec<Row> = exec_uncached(
                tx,
                format!(
                    "SELECT idinvalidation, idsite, CAST(date1 AS CHAR), period FROM {t} \
                     WHERE idinvalidation IN ({}) AND status = {STATUS_IN_PROGRESS} \
                       AND processing_host <=> ? AND process_id <=> ? \
                     ORDER BY idinvalidation FOR UPDATE",
                    literal_ids(chunk)
                ),
                (&owner.processing_host, &owner.process_id),
            )?;
            for mut row in locked {
                held.push((col::<u64>(&mut row, 0)?, slot(&mut row, 1)?));
            }
        }
        release_held(tx, config, &held)
    })?;
    Ok(settled.len() as u64)
}

fn slot(row: &mut Row, first: usize) -> SqlResult<Slot> {
    Ok(Slot {
        idsite: col(row, first)?,
        date1: col(row, first + 1)?,
        period: col(row, first + 2)?,
    })
}

/// Settles and writes rows this transaction has locked in progress (unique ids).
fn release_held(
    tx: &mut Transaction<'_>,
    config: &DbConfig,
    held: &[(u64, Slot)],
) -> SqlResult<HashMap<u64, Settlement>> {
    let t = config.table(TABLE);
    let settled = settlements(tx, config, held)?;
    let of = |wanted: Settlement| -> Vec<u64> {
        sorted_unique(
            settled
                .iter()
                .filter(|(_, s)| **s == wanted)
                .map(|(id, _)| *id),
        )
    };
    let (requeue, delete) = (of(Settlement::Requeue), of(Settlement::Delete));
    let mut changed = 0;
    for chunk in requeue.chunks(CHUNK) {
        tx.query_drop(format!(
            "UPDATE {t} SET status = {STATUS_QUEUED}, processing_host = NULL, process_id = NULL, \
             ts_started = NULL WHERE idinvalidation IN ({}) AND status = {STATUS_IN_PROGRESS}",
            literal_ids(chunk)
        ))?;
        changed += tx.affected_rows();
    }
    for chunk in delete.chunks(CHUNK) {
        tx.query_drop(format!(
            "DELETE FROM {t} WHERE idinvalidation IN ({}) AND status = {STATUS_IN_PROGRESS}",
            literal_ids(chunk)
        ))?;
        changed += tx.affected_rows();
    }
    if changed != held.len() as u64 {
        // The rows are locked by this transaction, so this cannot happen; if it did, the
        // per-row report would lie: roll back rather than commit it.
        return Err(mysql::Error::MySqlError(mysql::MySqlError {
            state: "HY000".into(),
            message: format!(
                "release changed {changed} rows of the {} it had locked; rolled back",
                held.len()
            ),
            code: 0,
        }));
    }
    Ok(settled)
}

/// Runs `work` in a transaction and commits it; once more if the server chose it as a
/// deadlock victim (it was rolled back whole, and `work` re-reads what it acts on).
fn in_transaction<T>(
    conn: &mut Conn,
    mut work: impl FnMut(&mut Transaction<'_>) -> SqlResult<T>,
) -> SqlResult<T> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let result = conn
            .start_transaction(TxOpts::default())
            .and_then(|mut tx| {
                let value = work(&mut tx)?;
                tx.commit()?;
                Ok(value)
            });
        match result {
            // On Galera a certification failure at commit says the same: another node wrote
            // a row we wrote. A short pause lets the winner's write arrive before we re-read.
            Err(mysql::Error::MySqlError(e)) if e.code == DEADLOCK && attempts < 5 => {
                std::thread::sleep(std::time::Duration::from_millis(10 * attempts));
                continue;
            }
            other => return other,
        }
    }
}

/// A prepared statement used once: its text carries a list of ids, so it would never be
/// reused, and the driver's statement cache would keep up to 32 of them (about 1 MB each) and
/// as many open on the server for the life of the process.
fn exec_uncached_typed<Q: Queryable, T: mysql::prelude::FromRow>(
    q: &mut Q,
    sql: String,
    params: impl Into<Params>,
) -> SqlResult<Vec<T>> {
    let stmt = q.prep(sql)?;
    let result = q.exec(&stmt, params);
    q.close(stmt)?;
    result
}

fn exec_uncached<Q: Queryable>(
    q: &mut Q,
    sql: String,
    params: impl Into<Params>,
) -> SqlResult<Vec<Row>> {
    exec_uncached_typed(q, sql, params)
}

fn sorted_unique(ids: impl Iterator<Item = u64>) -> Vec<u64> {
    let mut ids: Vec<u64> = ids.collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Integers formatted by us, so safe to inline.
fn literal_ids(ids: &[u64]) -> String {
    let mut s = String::with_capacity(ids.len() * 8);
    for (i, id) in ids.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(&id.to_string());
    }
    s
}

/// Deletes finished claims, only those `owner` still holds, in one transaction (one commit,
/// not one per chunk). Returns how many went.
pub fn complete(conn: &mut Conn, config: &DbConfig, ids: &[i64], owner: &Owner) -> SqlResult<u64> {
    let t = config.table(TABLE);
    let ids = sorted_unique(ids.iter().filter_map(|id| u64::try_from(*id).ok()));
    let delete = |chunk: &[u64]| {
        format!(
            "DELETE FROM {t} WHERE idinvalidation IN ({}) AND status = {STATUS_IN_PROGRESS} \
             AND processing_host <=> ? AND process_id <=> ?",
            literal_ids(chunk)
        )
    };
    let params = (&owner.processing_host, &owner.process_id);
    if ids.len() <= DELETE_CHUNK {
        // One statement is atomic by itself: no transaction around it, whose BEGIN and COMMIT
        // would be two more statements for every archive Matomo completes.
        let mut attempts = 0;
        loop {
            attempts += 1;
            match exec_uncached(conn, delete(&ids), params) {
                Err(mysql::Error::MySqlError(e)) if e.code == DEADLOCK && attempts < 5 => {
                    std::thread::sleep(std::time::Duration::from_millis(10 * attempts));
                }
                other => return other.map(|_| conn.affected_rows()),
            }
        }
    }
    in_transaction(conn, |tx| {
        let mut deleted = 0;
        for chunk in ids.chunks(DELETE_CHUNK) {
            exec_uncached(tx, delete(chunk), params)?;
            deleted += tx.affected_rows();
        }
        Ok(deleted)
    })
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
///
/// Three steps, because a time zone that is not a constant of the statement costs the server a
/// zone lookup per call (about 9 µs; six calls per row took 40 of the 65 ms of reading 10,000
/// rows in one statement): the rows, read in this session's zone; the zone of each distinct
/// owner (a few hundred at most, not one look-up per row); the few rows claimed in another zone,
/// read again in theirs.
pub fn in_progress(
    conn: &mut Conn,
    config: &DbConfig,
    filter: &RowFilter,
    registry: Option<&str>,
) -> SqlResult<Vec<InvalidationRow>> {
    let t = config.table(TABLE);
    let details = if filter.decision_columns_only {
        ("NULL", "''", "NULL", "NULL")
    } else {
        (
            "idarchive",
            "name",
            "CAST(ts_invalidated AS CHAR)",
            "report",
        )
    };
    let mut sql = format!(
        "SELECT idinvalidation, {}, {}, idsite, CAST(date1 AS CHAR), CAST(date2 AS CHAR), \
                period, {}, CAST(ts_started AS CHAR), status, {}, \
                processing_host, process_id, TIMESTAMPDIFF(SECOND, ts_started, NOW()), \
                {}, @@session.time_zone \
           FROM {t} WHERE status = ?",
        details.0,
        details.1,
        details.2,
        details.3,
        claim_time_sql("@@session.time_zone")
    );
    if !filter.include_never_started {
        sql += " AND ts_started IS NOT NULL";
    }
    let mut params = vec![Value::from(STATUS_IN_PROGRESS)];
    if let Some(idsites) = &filter.idsites {
        if idsites.is_empty() {
            return Ok(Vec::new());
        }
        sql += &format!(" AND idsite IN ({})", placeholders(idsites.len()));
        params.extend(idsites.iter().map(|s| Value::from(*s)));
    }
    if let Some(hosts) = &filter.hosts {
        if hosts.is_empty() {
            return Ok(Vec::new());
        }
        sql += &format!(" AND processing_host IN ({})", placeholders(hosts.len()));
        params.extend(hosts.iter().map(|h| Value::from(h.as_str())));
    }
    if let Some(after) = &filter.started_after {
        let (bound, value) = after.sql();
        sql += &format!(" AND ts_started > {bound}");
        params.push(value);
    }
    if let Some(before) = &filter.started_before {
        let (bound, value) = before.sql();
        sql += &format!(" AND ts_started < {bound}");
        params.push(value);
    }
    if let Some((ts_started, id)) = &filter.after {
        sql += " AND (ts_started > ? OR (ts_started = ? AND idinvalidation > ?))";
        params.extend([
            Value::from(ts_started.as_str()),
            Value::from(ts_started.as_str()),
            Value::from(*id),
        ]);
    }
    sql += if filter.by_id {
        " ORDER BY idinvalidation"
    } else {
        " ORDER BY ts_started ASC, idinvalidation ASC"
    };
    if let Some(limit) = filter.limit {
        sql += &format!(" LIMIT {limit}");
    }
    let rows: Vec<Row> = conn.exec(sql, params)?;
    let mut rows: Vec<InvalidationRow> = rows
        .into_iter()
        .map(row_from_sql)
        .collect::<SqlResult<_>>()?;
    for row in &mut rows {
        row.archive_details = !filter.decision_columns_only;
    }
    if let Some(registry) = registry {
        read_in_owner_zones(conn, config, registry, &mut rows)?;
    }
    Ok(rows)
}

/// Reads idarchive, name, ts_invalidated and report of rows read with
/// `decision_columns_only` (a reap's released rows, for its report). A row gone meanwhile keeps
/// them unread.
pub fn read_details(
    conn: &mut Conn,
    config: &DbConfig,
    rows: &mut [&mut InvalidationRow],
) -> SqlResult<()> {
    let t = config.table(TABLE);
    let index: HashMap<u64, usize> = rows
        .iter()
        .enumerate()
        .map(|(i, r)| (r.idinvalidation, i))
        .collect();
    let ids = sorted_unique(index.keys().copied());
    for chunk in ids.chunks(CHUNK) {
        let found: Vec<Row> = conn.query(format!(
            "SELECT idinvalidation, idarchive, name, CAST(ts_invalidated AS CHAR), report \
               FROM {t} WHERE idinvalidation IN ({})",
            literal_ids(chunk)
        ))?;
        for mut found in found {
            let id: u64 = col(&mut found, 0)?;
            let Some(&i) = index.get(&id) else { continue };
            let row = &mut *rows[i];
            row.idarchive = col(&mut found, 1)?;
            row.name = col(&mut found, 2)?;
            row.ts_invalidated = col(&mut found, 3)?;
            row.report = col(&mut found, 4)?;
            row.archive_details = true;
        }
    }
    Ok(())
}

/// The hour a DST change repeats: a local time inside it names two instants this far apart.
const DST_FOLD_SECONDS: i64 = 3600;

/// Owners per statement when their zones are looked up.
const OWNERS_CHUNK: usize = 500;

/// Re-reads the claim time of rows whose registered owner's session wrote ts_started in another
/// zone than this session's. The owner is the latest registration of the row's host and pid
/// that works for nobody, matched by the server (its collation and number conversion); a zone
/// the server cannot convert (its tables unloaded since) reads as this session's.
fn read_in_owner_zones(
    conn: &mut Conn,
    config: &DbConfig,
    registry: &str,
    rows: &mut [InvalidationRow],
) -> SqlResult<()> {
    let mut owners: Vec<(Option<String>, Option<String>)> = rows
        .iter()
        .filter(|r| r.ts_started.is_some())
        .map(|r| (r.processing_host.clone(), r.process_id.clone()))
        .collect();
    owners.sort();
    owners.dedup();
    let mut zone_of: HashMap<(Option<String>, Option<String>), String> = HashMap::new();
    for chunk in owners.chunks(OWNERS_CHUNK) {
        let mut params: Vec<Value> = Vec::with_capacity(chunk.len() * 2);
        let mut union = String::new();
        for (i, (host, pid)) in chunk.iter().enumerate() {
            union += if i == 0 {
                "SELECT ? AS h, ? AS pid"
            } else {
                " UNION ALL SELECT ?, ?"
            };
            params.push(host.as_deref().map_or(Value::NULL, Value::from));
            params.push(pid.as_deref().map_or(Value::NULL, Value::from));
        }
        let found: Vec<(Option<String>, Option<String>, Option<String>)> = exec_uncached_typed(
            conn,
            format!(
                "SELECT h, pid, zone FROM (SELECT o.h, o.pid, (SELECT p.time_zone FROM {registry} p \
                   WHERE p.host <=> o.h AND p.pid = o.pid AND p.works_for IS NULL \
                   ORDER BY p.idprocess DESC LIMIT 1) AS zone FROM ({union}) o) z \
                  WHERE zone IS NOT NULL AND BINARY zone <> BINARY @@session.time_zone \
                    AND CONVERT_TZ(TIMESTAMP'2000-01-01 00:00:00', zone, '+00:00') IS NOT NULL"
            ),
            params,
        )?;
        for (h, pid, zone) in found {
            if let Some(zone) = zone {
                zone_of.insert((h, pid), zone);
            }
        }
    }
    if zone_of.is_empty() {
        return Ok(());
    }
    let t = config.table(TABLE);
    let mut by_zone: HashMap<&str, Vec<u64>> = HashMap::new();
    let mut index: HashMap<u64, usize> = HashMap::new();
    for (i, r) in rows.iter().enumerate() {
        if r.ts_started.is_none() {
            continue;
        }
        let key = (r.processing_host.clone(), r.process_id.clone());
        if let Some(zone) = zone_of.get(&key) {
            by_zone
                .entry(zone.as_str())
                .or_default()
                .push(r.idinvalidation);
            index.insert(r.idinvalidation, i);
        }
    }
    for (zone, ids) in by_zone {
        for chunk in ids.chunks(CHUNK) {
            let found: Vec<Row> = exec_uncached(
                conn,
                format!(
                    "SELECT idinvalidation, CAST(ts_started AS CHAR), {}, \
                            TIMESTAMPDIFF(SECOND, CONVERT_TZ(ts_started, ?, '+00:00'), \
                                          UTC_TIMESTAMP()) \
                       FROM {t} WHERE idinvalidation IN ({})",
                    claim_time_sql("?"),
                    literal_ids(chunk)
                ),
                vec![Value::from(zone); 6],
            )?;
            for mut found in found {
                let id: u64 = col(&mut found, 0)?;
                let ts_started: Option<String> = col(&mut found, 1)?;
                let Some(row) = index.get(&id).map(|&i| &mut rows[i]) else {
                    continue;
                };
                // Re-claimed between the two reads: the first reading stands (the row is then
                // someone else's, and a compare-and-set on it will fail).
                if row.ts_started != ts_started {
                    continue;
                }
                row.claimed_at = col(&mut found, 2)?;
                row.in_dst_fold = col::<Option<i64>>(&mut found, 3)?.unwrap_or(0) != 0;
                row.claim_zone = Some(zone.to_owned());
                // The age too: read in this session's zone, a claim written in a zone behind it
                // looks older by the difference (13 hours past a timeout that has not passed).
                // In a fold the claim may be the later instant: never count the hour.
                if let Some(age) = col::<Option<i64>>(&mut found, 4)? {
                    row.age_seconds = Some(if row.in_dst_fold {
                        age - DST_FOLD_SECONDS
                    } else {
                        age
                    });
                }
            }
        }
    }
    Ok(())
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
        archive_details: true,
    })
}

/// A column without the driver's panicking conversions.
pub(crate) fn col<T: FromValue>(row: &mut Row, index: usize) -> SqlResult<T> {
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

    use Settlement::{Delete, Requeue};

    fn row(id: u64, outside: bool, twins: &[(u64, bool)]) -> TwinFacts {
        TwinFacts {
            idinvalidation: id,
            outside_duplicate: outside,
            released_twins: twins.to_vec(),
        }
    }

    #[test]
    fn a_row_alone_goes_back_to_the_queue_and_one_with_an_outside_twin_is_deleted() {
        assert_eq!(settle(&[row(1, false, &[])]), vec![Requeue]);
        assert_eq!(settle(&[row(1, true, &[])]), vec![Delete]);
        assert_eq!(settle(&[]), Vec::<Settlement>::new());
    }

    #[test]
    fn of_two_twins_the_first_is_deleted_when_the_second_started_after_its_invalidation() {
        // Matomo's loop: row 1 sees row 2 in progress (started after) and is deleted; row 2
        // then has no twin left.
        let rows = [row(1, false, &[(2, true)]), row(2, false, &[(1, true)])];
        assert_eq!(settle(&rows), vec![Delete, Requeue]);
    }

    #[test]
    fn of_two_twins_the_second_is_deleted_when_the_first_went_back_to_the_queue() {
        // Row 2 started before row 1 was invalidated: row 1 is re-queued, and is then the
        // queued duplicate of row 2.
        let rows = [row(1, false, &[(2, false)]), row(2, false, &[(1, false)])];
        assert_eq!(settle(&rows), vec![Requeue, Delete]);
    }

    #[test]
    fn a_chain_is_settled_in_id_order_whatever_order_the_facts_come_in() {
        // 1 is deleted (3 started after it was invalidated); 2 does not see 1 (deleted) nor 3
        // (started before 2 was invalidated): re-queued; 3 then sees 2 queued: deleted.
        let rows = [
            row(3, false, &[(1, false), (2, false)]),
            row(1, false, &[(2, false), (3, true)]),
            row(2, false, &[(1, false), (3, false)]),
        ];
        assert_eq!(settle(&rows), vec![Delete, Delete, Requeue]);
    }

    #[test]
    fn a_row_deleted_for_an_outside_twin_is_no_queued_twin_for_later_rows() {
        let rows = [row(1, true, &[(2, false)]), row(2, false, &[(1, false)])];
        assert_eq!(settle(&rows), vec![Delete, Requeue]);
    }

    /// A tiny model of the table and Matomo's sequential release, to compare `settle` against
    /// on many generated cases.
    #[derive(Clone, Debug)]
    struct ModelRow {
        id: u64,
        key: u8,
        queued: bool,
        ts_invalidated: Option<u8>,
        ts_started: Option<u8>,
    }

    fn started_after(o: &ModelRow, r: &ModelRow) -> bool {
        matches!((o.ts_started, r.ts_invalidated), (Some(s), Some(i)) if s > i)
    }

    fn matomo_sequential(mut table: Vec<ModelRow>, candidates: &[u64]) -> Vec<Settlement> {
        let mut out = Vec::new();
        for &c in candidates {
            let Some(r) = table.iter().find(|r| r.id == c).cloned() else {
                continue;
            };
            let duplicate = table
                .iter()
                .any(|o| o.id != r.id && o.key == r.key && (o.queued || started_after(o, &r)));
            if duplicate {
                table.retain(|o| o.id != c);
                out.push(Delete);
            } else if let Some(row) = table.iter_mut().find(|o| o.id == c) {
                row.queued = true;
                row.ts_started = None;
                out.push(Requeue);
            }
        }
        out
    }

    fn facts_of(table: &[ModelRow], candidates: &[u64]) -> Vec<TwinFacts> {
        candidates
            .iter()
            .filter_map(|&c| table.iter().find(|r| r.id == c))
            .map(|r| {
                let twins = table.iter().filter(|o| o.id != r.id && o.key == r.key);
                let mut f = TwinFacts {
                    idinvalidation: r.id,
                    ..TwinFacts::default()
                };
                for o in twins {
                    if candidates.contains(&o.id) {
                        f.released_twins.push((o.id, started_after(o, r)));
                    } else if o.queued || started_after(o, r) {
                        f.outside_duplicate = true;
                    }
                }
                f
            })
            .collect()
    }

    #[test]
    fn settle_agrees_with_matomos_row_by_row_release_on_generated_tables() {
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for case in 0..5000 {
            let size = 1 + next(9);
            let table: Vec<ModelRow> = (1..=size)
                .map(|id| ModelRow {
                    id,
                    key: next(3) as u8,
                    queued: next(4) == 0,
                    ts_invalidated: (next(6) != 0).then(|| next(5) as u8),
                    ts_started: (next(6) != 0).then(|| next(5) as u8),
                })
                .map(|mut r| {
                    if r.queued {
                        r.ts_started = None;
                    }
                    r
                })
                .collect();
            let candidates: Vec<u64> = table
                .iter()
                .filter(|r| !r.queued && next(3) != 0)
                .map(|r| r.id)
                .collect();
            let expected = matomo_sequential(table.clone(), &candidates);
            let got = settle(&facts_of(&table, &candidates));
            assert_eq!(
                got, expected,
                "case {case}: {table:?}, releasing {candidates:?}"
            );
        }
    }

    #[test]
    fn chunks_never_split_the_rows_that_can_be_twins() {
        let slot = |idsite| Slot {
            idsite,
            date1: "2026-11-28".into(),
            period: 1,
        };
        let mut rows: Vec<(u64, Slot)> = (0..CHUNK as u64 + 10).map(|id| (id, slot(1))).collect();
        rows.extend((0..CHUNK as u64).map(|i| (100_000 + i, slot(2 + (i % 3) as i64))));
        let chunks = chunks_by_slot(&rows);
        assert_eq!(
            chunks.len(),
            2,
            "the first slot stays whole though larger than a chunk"
        );
        assert_eq!(chunks[0].len(), CHUNK + 10);
        assert_eq!(chunks.iter().map(Vec::len).sum::<usize>(), rows.len());
        assert!(chunks_by_slot(&[]).is_empty());
    }

    #[test]
    fn ids_are_inlined_as_plain_integers() {
        assert_eq!(literal_ids(&[]), "");
        assert_eq!(
            literal_ids(&[7, 18446744073709551615]),
            "7,18446744073709551615"
        );
        assert_eq!(sorted_unique([3, 1, 3, 2].into_iter()), vec![1, 2, 3]);
    }

    #[test]
    fn placeholders_match_the_count() {
        assert_eq!(placeholders(0), "");
        assert_eq!(placeholders(1), "?");
        assert_eq!(placeholders(3), "?,?,?");
    }
}

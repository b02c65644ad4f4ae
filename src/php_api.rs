//! The PHP boundary: argument conversion in, arrays out, errors through `php_exceptions`.
//! No decisions are made here.

use ext_php_rs::boxed::ZBox;
use ext_php_rs::prelude::*;
use ext_php_rs::types::{ArrayKey, ZendHashTable, Zval};

use crate::claims;
use crate::config::DbConfig;
use crate::error::{Error, Result};
use crate::filters;
use crate::identity::Identity;
use crate::invalidations::InvalidationRow;
use crate::liveness::Decision;
use crate::options::{id_list, Key, Value};
use crate::reap::Action;
use crate::schema::SchemaOptions;

/// Nested arrays deeper than this are refused rather than walked (nothing we take nests deeper
/// than two levels).
const MAX_DEPTH: usize = 4;

fn to_entries(function: &str, array: Option<&ZendHashTable>) -> Result<Vec<(Key, Value)>> {
    match array {
        None => Ok(Vec::new()),
        Some(ht) => array_entries(function, ht, 0),
    }
}

fn array_entries(function: &str, ht: &ZendHashTable, depth: usize) -> Result<Vec<(Key, Value)>> {
    ht.iter()
        .map(|(key, zval)| {
            let key = match key {
                ArrayKey::Long(i) => Key::Int(i),
                ArrayKey::String(s) => Key::Str(s),
                other => Key::Str(other.to_string()),
            };
            Ok((key, to_value(function, zval, depth)?))
        })
        .collect()
}

fn to_value(function: &str, zval: &Zval, depth: usize) -> Result<Value> {
    let z = zval.dereference();
    if z.is_null() {
        Ok(Value::Null)
    } else if let Some(b) = z.bool() {
        Ok(Value::Bool(b))
    } else if let Some(n) = z.long() {
        Ok(Value::Int(n))
    } else if let Some(f) = z.double() {
        Ok(Value::Float(f))
    } else if z.is_string() {
        z.string()
            .map(Value::Str)
            .ok_or_else(|| Error::invalid(format!("{function}(): strings must be valid UTF-8")))
    } else if let Some(ht) = z.array() {
        if depth >= MAX_DEPTH {
            return Err(Error::invalid(format!(
                "{function}(): arrays nest too deeply"
            )));
        }
        Ok(Value::Array(array_entries(function, ht, depth + 1)?))
    } else {
        Err(Error::wrong_type(format!(
            "{function}(): only scalars and arrays are accepted, {:?} given",
            z.get_type()
        )))
    }
}

fn ht_result(
    build: impl FnOnce(&mut ZendHashTable) -> ext_php_rs::error::Result<()>,
) -> PhpResult<ZBox<ZendHashTable>> {
    let mut ht = ZendHashTable::new();
    build(&mut ht).map_err(|e| {
        PhpException::from_message(format!("could not build the result array: {e}"))
    })?;
    Ok(ht)
}

/// Connection settings, as in the `[database]` section of Matomo's config.ini.php.
#[php_function]
#[php(name = "Matomo\\ArchiveClaim\\configure")]
pub fn configure(database: &ZendHashTable) -> PhpResult<()> {
    let entries = to_entries("configure", Some(database))?;
    claims::configure(DbConfig::from_matomo(&entries)?);
    Ok(())
}

/// Host, pid and what makes this process start unique.
#[php_function]
#[php(name = "Matomo\\ArchiveClaim\\identity")]
pub fn identity() -> PhpResult<ZBox<ZendHashTable>> {
    let me = Identity::current();
    ht_result(|ht| {
        ht.insert("host", me.host)?;
        ht.insert("pid", i64::from(me.pid))?;
        ht.insert("started_at", me.started_at)?;
        ht.insert("start_ticks", me.start_ticks.map(|n| n as i64))?;
        ht.insert("boot_id", me.boot_id)?;
        ht.insert("pid_namespace", me.pid_namespace.map(|n| n as i64))?;
        ht.insert("works_for", me.works_for.map(i64::from))?;
        Ok(())
    })
}

/// Matomo's `Model::startArchive()`, natively: true iff this call moved the row from queued to
/// in progress under this host and pid.
#[php_function]
#[php(name = "Matomo\\ArchiveClaim\\claim_invalidation")]
pub fn claim_invalidation(idinvalidation: i64) -> PhpResult<bool> {
    Ok(claims::claim(idinvalidation)?)
}

/// Gives this process's claims back (re-queued, or deleted when a duplicate exists).
#[php_function]
#[php(name = "Matomo\\ArchiveClaim\\release_invalidations")]
pub fn release_invalidations(ids: &ZendHashTable) -> PhpResult<i64> {
    let entries = to_entries("release_invalidations", Some(ids))?;
    let ids = id_list("release_invalidations", &entries)?;
    Ok(claims::release(&ids)? as i64)
}

/// Deletes this process's finished claims.
#[php_function]
#[php(name = "Matomo\\ArchiveClaim\\complete_invalidations")]
pub fn complete_invalidations(ids: &ZendHashTable) -> PhpResult<i64> {
    let entries = to_entries("complete_invalidations", Some(ids))?;
    let ids = id_list("complete_invalidations", &entries)?;
    Ok(claims::complete(&ids)? as i64)
}

/// Rows in progress, oldest claim first.
#[php_function]
#[php(name = "Matomo\\ArchiveClaim\\in_progress")]
pub fn in_progress(filters: Option<&ZendHashTable>) -> PhpResult<ZBox<ZendHashTable>> {
    let entries = to_entries("in_progress", filters)?;
    let mut filter = filters::parse_filter("in_progress", &entries)?;
    let mut remaining = filter.limit.unwrap_or(filters::DEFAULT_IN_PROGRESS_LIMIT);
    let mut list = ZendHashTable::new();
    // In chunks, each read (and judged against a registry read after it) on its own and turned
    // into PHP arrays before the next: the extension holds at most one chunk, and the answer
    // grows in PHP's memory, under memory_limit. No database call is in flight while PHP
    // allocates, so a memory_limit error leaves no connection half-used.
    let mut row_bytes = ROW_BYTES_GUESS;
    let mut built = 0usize;
    while remaining > 0 {
        let want = remaining.min(filters::IN_PROGRESS_CHUNK);
        // Checked before, not left to PHP: in this PHP an allocation past memory_limit inside
        // an extension's call did not end the call, and it ran on to the process's hard limit,
        // where PHP was killed without running shutdown functions.
        if let Some(left) = crate::php_module::memory_left() {
            if left
                < want
                    .saturating_mul(row_bytes)
                    .saturating_add(MEMORY_HEADROOM)
            {
                return Err(Error::Configuration(format!(
                    "in_progress(): {built} rows so far, and {want} more would pass memory_limit \
                     ({} MiB left); nothing was changed. Ask for fewer with 'limit' and page with \
                     'after' (the last row of the previous page), or raise memory_limit",
                    left >> 20
                ))
                .into());
            }
        }
        let before = crate::php_module::memory_left();
        filter.limit = Some(want);
        let rows = claims::in_progress(&filter)?;
        let got = rows.len();
        if let Some((row, _)) = rows.last() {
            filter.after = row.ts_started.clone().map(|ts| (ts, row.idinvalidation));
        }
        for (row, decision) in rows {
            let ht = row_array(row, &decision).map_err(result_error)?;
            list.push(ht).map_err(result_error)?;
        }
        if let (Some(before), Some(after)) = (before, crate::php_module::memory_left()) {
            // What this PHP actually spent per row (the allocator takes whole chunks, so this
            // is coarse), never below the guess.
            if let Some(per_row) = before.saturating_sub(after).checked_div(got) {
                row_bytes = row_bytes.max(per_row);
            }
        }
        built += got;
        remaining -= got;
        if got < want {
            break;
        }
    }
    Ok(list)
}

/// PHP memory one row of `in_progress()` takes (measured: about 1.6 KiB on PHP 8.2), before a
/// chunk has been measured.
const ROW_BYTES_GUESS: usize = 2048;

/// Room left for PHP itself after an answer is built: one allocator chunk and a margin.
const MEMORY_HEADROOM: usize = 4 << 20;

fn result_error(e: ext_php_rs::error::Error) -> PhpException {
    PhpException::from_message(format!("could not build the result array: {e}"))
}

/// Finds in-progress rows whose owner is proven dead (or timed out, or on a host declared
/// dead) and gives them back to the queue; returns a report of every row looked at.
#[php_function]
#[php(name = "Matomo\\ArchiveClaim\\reap_orphans")]
pub fn reap_orphans(options: Option<&ZendHashTable>) -> PhpResult<ZBox<ZendHashTable>> {
    let entries = to_entries("reap_orphans", options)?;
    let options = claims::parse_reap_options(&entries)?;
    let report = claims::reap_orphans(&options)?;
    ht_result(|ht| {
        ht.insert("dry_run", report.dry_run)?;
        ht.insert("examined", report.entries.len() as i64)?;
        ht.insert("released", report.released() as i64)?;
        for &action in Action::ALL {
            ht.insert(action.as_str(), report.count(action) as i64)?;
        }
        let mut rows = ZendHashTable::new();
        for entry in report.entries {
            let mut r = row_array(entry.row, &entry.decision)?;
            r.insert("action", entry.action.as_str())?;
            rows.push(r)?;
        }
        ht.insert("rows", rows)?;
        ht.insert(
            "forgotten_registrations",
            report.forgotten_registrations as i64,
        )?;
        Ok(())
    })
}

/// The rows this process's heartbeat thread released since the previous call, oldest first,
/// each as a reap report row (with `action`), so the caller can log them.
#[php_function]
#[php(name = "Matomo\\ArchiveClaim\\background_releases")]
pub fn background_releases() -> PhpResult<ZBox<ZendHashTable>> {
    let entries = crate::heartbeat::take_releases();
    ht_result(|list| {
        for entry in entries {
            let mut r = row_array(entry.row, &entry.decision)?;
            r.insert("action", entry.action.as_str())?;
            list.push(r)?;
        }
        Ok(())
    })
}

/// Registers this process and starts its heartbeat now, instead of at its first claim.
#[php_function]
#[php(name = "Matomo\\ArchiveClaim\\register_process")]
pub fn register_process() -> PhpResult<ZBox<ZendHashTable>> {
    let r = claims::register()?;
    ht_result(|ht| {
        ht.insert("idprocess", r.idprocess as i64)?;
        ht.insert("host", r.identity.host)?;
        ht.insert("pid", i64::from(r.identity.pid))?;
        ht.insert("started_at", r.identity.started_at)?;
        ht.insert("start_ticks", r.identity.start_ticks.map(|n| n as i64))?;
        ht.insert("boot_id", r.identity.boot_id)?;
        ht.insert("pid_namespace", r.identity.pid_namespace.map(|n| n as i64))?;
        ht.insert("works_for", r.identity.works_for.map(i64::from))?;
        ht.insert("heartbeat_interval", r.settings.interval.as_secs() as i64)?;
        ht.insert("lease", r.settings.lease.as_secs() as i64)?;
        ht.insert("auto_reap", r.settings.auto_reap)?;
        let status = crate::heartbeat::status().unwrap_or_default();
        ht.insert("beats", status.beats as i64)?;
        ht.insert("reaping", status.reaping)?;
        ht.insert("reap_runs", status.reap_runs as i64)?;
        ht.insert("released", status.released as i64)?;
        ht.insert("errors", status.errors as i64)?;
        ht.insert("last_error", status.last_error)?;
        ht.insert("last_error_age", status.last_error_age)?;
        ht.insert("log", status.log)?;
        Ok(())
    })
}

/// Stops this process's heartbeat and removes its registration; false if it had none.
#[php_function]
#[php(name = "Matomo\\ArchiveClaim\\unregister_process")]
pub fn unregister_process() -> bool {
    claims::unregister()
}

/// A row with Matomo's column names, its age and its owner's liveness verdict.
fn row_array(
    row: InvalidationRow,
    decision: &Decision,
) -> ext_php_rs::error::Result<ZBox<ZendHashTable>> {
    // Sized for its 16 keys and a reap's `action`: no rehash while it fills (a reap report of
    // 10,000 rows grew each of its arrays twice).
    let mut ht = ZendHashTable::with_capacity(17);
    // A reap reads idarchive, name, ts_invalidated and report for the rows it releases only.
    let details = row.archive_details;
    ht.insert("idinvalidation", row.idinvalidation as i64)?;
    if details {
        ht.insert("idarchive", row.idarchive)?;
        ht.insert("name", row.name)?;
    }
    ht.insert("idsite", row.idsite)?;
    ht.insert("date1", row.date1)?;
    ht.insert("date2", row.date2)?;
    ht.insert("period", row.period)?;
    if details {
        ht.insert("ts_invalidated", row.ts_invalidated)?;
    }
    ht.insert("ts_started", row.ts_started)?;
    ht.insert("status", row.status)?;
    if details {
        ht.insert("report", row.report)?;
    }
    ht.insert("processing_host", row.processing_host)?;
    ht.insert("process_id", row.process_id)?;
    ht.insert("age_seconds", row.age_seconds)?;
    ht.insert("verdict", decision.verdict.as_str())?;
    ht.insert("reason", decision.reason.as_str())?;
    Ok(ht)
}

/// Adds what claims need to an existing Matomo database; returns what it changed.
#[php_function]
#[php(name = "Matomo\\ArchiveClaim\\install_schema")]
pub fn install_schema(options: Option<&ZendHashTable>) -> PhpResult<ZBox<ZendHashTable>> {
    let entries = to_entries("install_schema", options)?;
    let options = SchemaOptions::parse(&entries)?;
    let report = claims::install_schema(&options)?;
    ht_result(|ht| {
        ht.insert("table", report.table)?;
        ht.insert("dry_run", options.dry_run)?;
        ht.insert("changes", report.changes)?;
        Ok(())
    })
}

// PHP's own `ZEND_API` for attributes; ext-php-rs binds no part of it.
/// Adds every function above to the module (the generated wrappers are private to this file).
pub fn register_functions(module: ModuleBuilder) -> ModuleBuilder {
    module
        .function(wrap_function!(configure))
        .function(wrap_function!(identity))
        .function(wrap_function!(claim_invalidation))
        .function(wrap_function!(release_invalidations))
        .function(wrap_function!(complete_invalidations))
        .function(wrap_function!(in_progress))
        .function(wrap_function!(install_schema))
        .function(wrap_function!(reap_orphans))
        .function(wrap_function!(register_process))
        .function(wrap_function!(unregister_process))
        .function(wrap_function!(background_releases))
}

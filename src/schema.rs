//! `install_schema()`: brings a Matomo database up to what claims need (Matomo 5.3's owner
//! columns, the process registry, the owner index unless declined), idempotently, and says what it changed.
//! Only additive changes to what is Matomo's: nothing of it is dropped or rewritten (only our own
//! index of an earlier version is replaced by the current one).

use mysql::prelude::Queryable;
use mysql::Conn;

use crate::config::DbConfig;
use crate::error::Result;
use crate::invalidations::TABLE;
use crate::options::{Key, Options, Value};
use crate::registry;

type SqlResult<T> = std::result::Result<T, mysql::Error>;

/// The two columns Matomo 5.3.0 added, with Matomo's exact definitions.
const OWNER_COLUMNS: &[(&str, &str)] = &[
    ("processing_host", "VARCHAR(100) NULL DEFAULT NULL"),
    ("process_id", "VARCHAR(15) NULL DEFAULT NULL"),
];

/// Serves `status = 1 AND processing_host = ?` (reaping one host, the operator view); Matomo
/// indexes neither column.
pub const OWNER_INDEX: &str = "index_archive_claim_status_host";

/// Its columns: status and host first (what it is looked up by), then what a reap decides on,
/// so that reading the rows in progress touches no table row (10,000 rows of a 1M-row table:
/// 20 ms of primary-key look-ups through `(status, processing_host)`, 6 ms covered). A claim
/// rewrites the row's index entry either way (it changes status); the entry grows by about 15
/// bytes.
pub const OWNER_INDEX_COLUMNS: &[&str] = &[
    "status",
    "processing_host",
    "process_id",
    "ts_started",
    "idsite",
    "date1",
    "date2",
    "period",
];

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SchemaOptions {
    pub add_index: bool,
    pub dry_run: bool,
}

impl SchemaOptions {
    /// install_schema()'s options: `index` (true unless given false: the plugin adds the index
    /// by default, and so does every other way in), `dry_run`.
    pub fn parse(entries: &[(Key, Value)]) -> Result<SchemaOptions> {
        let o = Options::new("install_schema", entries, &["index", "dry_run"])?;
        Ok(SchemaOptions {
            add_index: o.bool("index")?.unwrap_or(true),
            dry_run: o.bool("dry_run")?.unwrap_or(false),
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SchemaReport {
    pub table: String,
    /// Human-readable, one entry per change made (or that would be made in a dry run).
    pub changes: Vec<String>,
}

/// What is missing, as facts; `None` when the table itself does not exist.
#[derive(Debug, Clone, PartialEq)]
pub struct TableShape {
    pub columns: Vec<String>,
    pub indexes: Vec<String>,
    /// The columns of `OWNER_INDEX`, in order (empty without it).
    pub owner_index: Vec<String>,
}

pub fn table_shape(conn: &mut Conn, table_name: &str) -> SqlResult<Option<TableShape>> {
    let exists: Option<u8> = conn.exec_first(
        "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
        (table_name,),
    )?;
    if exists.is_none() {
        return Ok(None);
    }
    let columns: Vec<String> = conn.exec(
        "SELECT COLUMN_NAME FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
        (table_name,),
    )?;
    let indexes: Vec<String> = conn.exec(
        "SELECT DISTINCT INDEX_NAME FROM information_schema.STATISTICS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?",
        (table_name,),
    )?;
    let owner_index: Vec<String> = conn.exec(
        "SELECT COLUMN_NAME FROM information_schema.STATISTICS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND INDEX_NAME = ? ORDER BY SEQ_IN_INDEX",
        (table_name, OWNER_INDEX),
    )?;
    Ok(Some(TableShape {
        columns,
        indexes,
        owner_index,
    }))
}

/// Whether an index starts with `status` (ours, or one an operator made): without one, every
/// look for in-progress rows scans the whole invalidations table.
pub fn status_is_indexed(conn: &mut Conn, config: &DbConfig) -> SqlResult<bool> {
    let found: Option<u8> = conn.exec_first(
        "SELECT 1 FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() \
         AND TABLE_NAME = ? AND COLUMN_NAME = 'status' AND SEQ_IN_INDEX = 1 LIMIT 1",
        (config.table_name(TABLE),),
    )?;
    Ok(found.is_some())
}

/// The ALTER clauses a table of this shape needs, with a description of each. Pure.
pub fn plan(shape: &TableShape, options: &SchemaOptions) -> Vec<(String, String)> {
    let has = |name: &str| shape.columns.iter().any(|c| c.eq_ignore_ascii_case(name));
    let mut plan: Vec<(String, String)> = OWNER_COLUMNS
        .iter()
        .filter(|(name, _)| !has(name))
        .map(|(name, def)| {
            (
                format!("ADD COLUMN `{name}` {def}"),
                format!("added column {name} {def}"),
            )
        })
        .collect();
    if options.add_index {
        let listed = OWNER_INDEX_COLUMNS.join(", ");
        let add = format!(
            "ADD INDEX `{OWNER_INDEX}` ({})",
            OWNER_INDEX_COLUMNS
                .iter()
                .map(|c| format!("`{c}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let current = shape.owner_index.len() == OWNER_INDEX_COLUMNS.len()
            && shape
                .owner_index
                .iter()
                .zip(OWNER_INDEX_COLUMNS)
                .all(|(have, want)| have.eq_ignore_ascii_case(want));
        if !shape.indexes.iter().any(|i| i == OWNER_INDEX) {
            plan.push((add, format!("added index {OWNER_INDEX} ({listed})")));
        } else if !current {
            // Our own index of an earlier version, (status, processing_host): replaced in the
            // same ALTER, so the table is never without one.
            plan.push((
                format!("DROP INDEX `{OWNER_INDEX}`, {add}"),
                format!("widened index {OWNER_INDEX} to ({listed})"),
            ));
        }
    }
    plan
}

/// Outcome of `install`: `Ok(None)` when the invalidations table does not exist.
pub fn install(
    conn: &mut Conn,
    config: &DbConfig,
    options: &SchemaOptions,
) -> SqlResult<Option<SchemaReport>> {
    let table_name = config.table_name(TABLE);
    let Some(shape) = table_shape(conn, &table_name)? else {
        return Ok(None);
    };
    let plan = plan(&shape, options);
    if !plan.is_empty() && !options.dry_run {
        let clauses: Vec<&str> = plan.iter().map(|(sql, _)| sql.as_str()).collect();
        conn.query_drop(format!(
            "ALTER TABLE {} {}",
            config.table(TABLE),
            clauses.join(", ")
        ))?;
    }
    let mut changes: Vec<String> = plan.into_iter().map(|(_, what)| what).collect();
    let registry_name = config.table_name(registry::TABLE);
    match table_shape(conn, &registry_name)? {
        None => {
            if !options.dry_run {
                conn.query_drop(registry::create_table_sql(config))?;
            }
            changes.push(format!(
                "created table {registry_name} (the process registry)"
            ));
        }
        Some(shape)
            if !shape
                .columns
                .iter()
                .any(|c| c == registry::CURRENT_SHAPE_COLUMN) =>
        {
            // An earlier version's registry (heartbeats as DATETIME in the session's time
            // zone). It holds only live processes' registrations, which they make again; until
            // then their rows are judged as unregistered claims, never released on a lease.
            if !options.dry_run {
                conn.query_drop(format!("DROP TABLE {}", config.table(registry::TABLE)))?;
                conn.query_drop(registry::create_table_sql(config))?;
            }
            changes.push(format!(
                "rebuilt table {registry_name} (the process registry) with heartbeats in UTC epoch seconds"
            ));
        }
        Some(shape) => {
            // The heartbeat threads' counters (0.3): beats go on without them meanwhile.
            let missing: Vec<&(&str, &str)> = registry::COUNTER_COLUMNS
                .iter()
                .chain(registry::LEASE_COLUMNS)
                .chain(registry::WATCH_COLUMNS)
                .filter(|(name, _)| !shape.columns.iter().any(|c| c.eq_ignore_ascii_case(name)))
                .collect();
            if !missing.is_empty() {
                if !options.dry_run {
                    let clauses: Vec<String> = missing
                        .iter()
                        .map(|(name, def)| format!("ADD COLUMN `{name}` {def}"))
                        .collect();
                    conn.query_drop(format!(
                        "ALTER TABLE {} {}",
                        config.table(registry::TABLE),
                        clauses.join(", ")
                    ))?;
                }
                let names: Vec<&str> = missing.iter().map(|(name, _)| *name).collect();
                changes.push(format!(
                    "added columns {} to {registry_name} (the heartbeat's version and fence, \
                     the lease and what each heartbeat thread did)",
                    names.join(", ")
                ));
            }
        }
    }
    changes.extend(crate::load::install(conn, config, options.dry_run)?);
    Ok(Some(SchemaReport {
        table: table_name,
        changes,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(columns: &[&str], indexes: &[&str]) -> TableShape {
        TableShape {
            columns: columns.iter().map(|s| s.to_string()).collect(),
            indexes: indexes.iter().map(|s| s.to_string()).collect(),
            owner_index: if indexes.contains(&OWNER_INDEX) {
                OWNER_INDEX_COLUMNS.iter().map(|s| s.to_string()).collect()
            } else {
                Vec::new()
            },
        }
    }

    #[test]
    fn a_pre_5_3_table_gets_both_columns_with_matomos_types() {
        let p = plan(
            &shape(&["idinvalidation", "status"], &["PRIMARY"]),
            &SchemaOptions::default(),
        );
        assert_eq!(p.len(), 2);
        assert_eq!(
            p[0].0,
            "ADD COLUMN `processing_host` VARCHAR(100) NULL DEFAULT NULL"
        );
        assert_eq!(
            p[1].0,
            "ADD COLUMN `process_id` VARCHAR(15) NULL DEFAULT NULL"
        );
    }

    #[test]
    fn a_current_table_needs_nothing_unless_the_index_is_asked_for() {
        let s = shape(&["status", "processing_host", "process_id"], &["PRIMARY"]);
        assert!(plan(&s, &SchemaOptions::default()).is_empty());
        let with_index = SchemaOptions {
            add_index: true,
            ..Default::default()
        };
        assert_eq!(plan(&s, &with_index).len(), 1);
        let indexed = shape(&["status", "processing_host", "process_id"], &[OWNER_INDEX]);
        assert!(plan(&indexed, &with_index).is_empty());
    }

    #[test]
    fn the_narrow_index_of_an_earlier_version_is_widened_in_one_statement() {
        let mut narrow = shape(&["status", "processing_host", "process_id"], &[OWNER_INDEX]);
        narrow.owner_index = vec!["status".into(), "processing_host".into()];
        let with_index = SchemaOptions {
            add_index: true,
            ..Default::default()
        };
        let p = plan(&narrow, &with_index);
        assert_eq!(p.len(), 1);
        assert!(p[0].0.starts_with(&format!("DROP INDEX `{OWNER_INDEX}`, ADD INDEX `{OWNER_INDEX}` (`status`, `processing_host`, `process_id`")));
        assert!(p[0].1.starts_with("widened index"));
        assert!(plan(&narrow, &SchemaOptions::default()).is_empty());
    }
}

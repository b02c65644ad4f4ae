//! The operations behind the PHP functions: who we are + one connection + the table's SQL.
//! Nothing here knows about PHP.

use std::cell::Cell;
use std::time::{Duration, Instant};

use crate::connection;
use crate::error::{Error, Result};
use crate::heartbeat::{self, RegisterError, Registered};
use crate::identity::Identity;
use crate::invalidations::{self, InvalidationRow, Owner, RowFilter};
use crate::liveness::Decision;
use crate::options::{Key, Options, Value};
use crate::reap::{self, ReapError, ReapOptions, ReapReport};
use crate::request_scope::{self, ClaimOutcome};
use crate::schema::{self, SchemaOptions, SchemaReport};
use crate::settings::HeartbeatSettings;

/// After a failed registration, claims go on unregistered (judged as a stock claimer's) and try
/// to register again after this long.
const REGISTRATION_RETRY_AFTER: Duration = Duration::from_secs(30);

thread_local! {
    /// (pid, when) of the last failed implicit registration: claims do not retry it each time.
    static REGISTRATION_FAILED: Cell<Option<(u32, Instant)>> = const { Cell::new(None) };
}

/// Registers before a claim unless a recent attempt failed. Only a lost connection is an error
/// (the claim is retried on a new one); any other failure leaves the process unregistered.
fn register_before_claim(
    conn: &mut mysql::Conn,
    config: &crate::config::DbConfig,
) -> std::result::Result<(), mysql::Error> {
    let pid = std::process::id();
    let backing_off = REGISTRATION_FAILED
        .get()
        .is_some_and(|(p, at)| p == pid && at.elapsed() < REGISTRATION_RETRY_AFTER);
    if backing_off {
        return Ok(());
    }
    match heartbeat::ensure_registered(conn, config) {
        Ok(_) => {
            REGISTRATION_FAILED.set(None);
            Ok(())
        }
        Err(RegisterError::Sql(e)) if connection::is_connection_lost(&e) => Err(e),
        Err(_) => {
            REGISTRATION_FAILED.set(Some((pid, Instant::now())));
            Ok(())
        }
    }
}

/// New connection settings. A registration made in another database is withdrawn first: the
/// next claim registers where it claims.
pub fn configure(config: crate::config::DbConfig) {
    if connection::configured().is_some_and(|old| *old != config) {
        heartbeat::stop();
    }
    connection::configure(config);
}

/// The owner columns this process writes, from its identity read now (after a fork, the
/// child's own pid).
pub fn current_owner() -> Owner {
    // Only host and pid: this runs on every claim, and the rest of the identity costs file
    // reads in /proc that a claim does not need.
    Owner {
        process_id: Some(std::process::id().to_string()),
        processing_host: crate::identity::host_name(),
    }
}

pub fn claim(idinvalidation: i64) -> Result<bool> {
    if idinvalidation < 1 {
        return Err(Error::invalid(format!(
            "claim_invalidation(): idinvalidation must be 1 or more, got {idinvalidation}"
        )));
    }
    let owner = current_owner();
    let mut reached_server = false; // request_scope: a failure before the UPDATE sent nothing
    let result = connection::run("claim_invalidation", |conn, config, attempt| {
        // Registered before the claim, so a registration is never younger than its claims.
        register_before_claim(conn, config)?;
        // A registered process claims only while its lease is fresh (beating here if its
        // heartbeat thread cannot): a reaper elsewhere must never see a claim of ours made
        // after our heartbeat went stale.
        heartbeat::fence_claim(conn, config)?;
        reached_server = true;
        invalidations::claim(conn, config, idinvalidation, &owner, attempt)
    });
    // request_scope: remember what this request holds, to give it back when the request ends.
    request_scope::claim_attempted(
        connection::configured(),
        idinvalidation,
        match &result {
            Ok(true) => ClaimOutcome::Won,
            // The statement may have committed before the error: ours until proven otherwise
            // (the release at request end is fenced on our host and pid).
            Err(_) if reached_server => ClaimOutcome::Unknown,
            Ok(false) | Err(_) => ClaimOutcome::Lost,
        },
    );
    result
}

/// Registers this process and starts its heartbeat now (hosts such as the Matomo plugin that
/// want to be visible before their first claim).
pub fn register() -> Result<Registered> {
    connection::run("register_process", |conn, config, _| {
        Ok(heartbeat::ensure_registered(conn, config))
    })?
    .map_err(|e| match e {
        RegisterError::HeartbeatCannotConnect(Error::Connection {
            target,
            detail,
            code,
        }) => Error::Connection {
            target,
            detail: format!(
                "the heartbeat's own connection failed ({detail}); this process stays unregistered \
                 and its claims are judged as a stock Matomo claimer's"
            ),
            code,
        },
        RegisterError::HeartbeatCannotConnect(other) => other,
        RegisterError::Sql(e) => Error::Query {
            during: "register_process",
            code: match &e {
                mysql::Error::MySqlError(m) => m.code,
                _ => 0,
            },
            message: e.to_string(),
        },
    })
}

/// Stops the heartbeat and removes the registration; false if there was none.
pub fn unregister() -> bool {
    heartbeat::stop()
}

/// Finds and releases orphans (see `liveness` for the rules).
pub fn reap_orphans(options: &ReapOptions) -> Result<ReapReport> {
    let me = Identity::current();
    connection::run("reap_orphans", |conn, config, _| {
        match reap::reap(conn, config, &me, options) {
            Ok(report) => Ok(Ok(report)),
            Err(ReapError::Refused(e)) => Ok(Err(e)),
            Err(ReapError::Sql(e)) => Err(e),
        }
    })?
}

pub fn parse_reap_options(entries: &[(Key, Value)]) -> Result<ReapOptions> {
    let settings = HeartbeatSettings::from_ini();
    Ok(ReapOptions {
        host_name_shared: settings.host_name_shared,
        ..ReapOptions::parse(entries, settings.lease.as_secs_f64())?
    })
}

/// Gives this request's claims among `ids` back; returns how many rows changed (re-queued or
/// deleted as duplicates), as Matomo's `releaseInProgressInvalidations()` does. Rows under this
/// host and pid that an earlier request left are not this request's (see `request_scope`).
pub fn release(ids: &[i64]) -> Result<u64> {
    // request_scope: only ids this request claimed.
    let ids = request_scope::claimed_by_this_request(connection::configured().as_deref(), ids);
    if ids.is_empty() {
        return Ok(0);
    }
    let owner = current_owner();
    // One transaction: a retry after a reconnect finds the rows the first attempt released (if
    // it committed) no longer ours, so each row is counted once.
    let changed = connection::run("release_invalidations", |conn, config, _| {
        invalidations::release_owned(conn, config, &ids, &owner)
    })?;
    request_scope::settled(connection::configured().as_deref(), &ids);
    Ok(changed)
}

/// Deletes this request's finished claims among `ids`; returns how many were deleted.
pub fn complete(ids: &[i64]) -> Result<u64> {
    // request_scope: only ids this request claimed.
    let ids = request_scope::claimed_by_this_request(connection::configured().as_deref(), ids);
    if ids.is_empty() {
        return Ok(0);
    }
    let owner = current_owner();
    let mut deleted = 0;
    connection::run("complete_invalidations", |conn, config, _| {
        deleted += invalidations::complete(conn, config, &ids, &owner)?;
        Ok(())
    })?;
    request_scope::settled(connection::configured().as_deref(), &ids);
    Ok(deleted)
}

/// In-progress rows, each with its liveness verdict (nothing is released).
pub fn in_progress(filter: &RowFilter) -> Result<Vec<(InvalidationRow, Decision)>> {
    let me = Identity::current();
    let settings = HeartbeatSettings::from_ini();
    let options = ReapOptions {
        host_name_shared: settings.host_name_shared,
        ..ReapOptions::proof_only(settings.lease.as_secs_f64())
    };
    connection::run("in_progress", |conn, config, _| {
        let (rows, observer) = reap::rows_then_registry(conn, config, &me, &options, filter)?;
        let decisions = reap::assess(&observer, &rows);
        Ok(rows.into_iter().zip(decisions).collect())
    })
}

pub fn install_schema(options: &SchemaOptions) -> Result<SchemaReport> {
    let mut table = String::new();
    let report = connection::run("install_schema", |conn, config, _| {
        table = config.table_name(invalidations::TABLE);
        schema::install(conn, config, options)
    })?;
    report.ok_or_else(|| {
        Error::Schema(format!(
            "install_schema(): table `{table}` does not exist in this database; is tables_prefix \
             right, and is Matomo installed here?"
        ))
    })
}

pub const FILTER_KEYS: &[&str] = &["idsites", "hosts", "started_after", "started_before"];

pub fn parse_filter(function: &'static str, entries: &[(Key, Value)]) -> Result<RowFilter> {
    let o = Options::new(function, entries, FILTER_KEYS)?;
    Ok(RowFilter {
        idsites: o.ids("idsites")?,
        hosts: o.strings("hosts")?,
        started_after: datetime(&o, "started_after")?,
        started_before: datetime(&o, "started_before")?,
        include_never_started: false,
        by_id: false,
        decision_columns_only: false,
    })
}

pub fn parse_schema_options(entries: &[(Key, Value)]) -> Result<SchemaOptions> {
    let o = Options::new("install_schema", entries, &["index", "dry_run"])?;
    Ok(SchemaOptions {
        add_index: o.bool("index")?.unwrap_or(false),
        dry_run: o.bool("dry_run")?.unwrap_or(false),
    })
}

/// 'YYYY-MM-DD HH:MM:SS' or 'YYYY-MM-DD' on the database clock, as Matomo writes ts_started.
pub fn datetime(o: &Options, key: &str) -> Result<Option<String>> {
    let Some(s) = o.string(key)? else {
        return Ok(None);
    };
    if is_datetime(s) {
        Ok(Some(s.to_owned()))
    } else {
        Err(Error::invalid(format!(
            "{}(): option '{key}' must look like '2026-11-29 03:00:00' (database time), got '{}'",
            o.function(),
            s.chars().take(40).collect::<String>()
        )))
    }
}

/// 'YYYY-MM-DD' or 'YYYY-MM-DD HH:MM:SS' naming a real calendar time: '2026-13-45 99:99:99' has
/// the shape but MariaDB would compare it as a string and match every row.
fn is_datetime(s: &str) -> bool {
    let shape = |pattern: &str| {
        s.len() == pattern.len()
            && s.bytes().zip(pattern.bytes()).all(|(c, p)| match p {
                b'9' => c.is_ascii_digit(),
                other => c == other,
            })
    };
    if !(shape("9999-99-99") || shape("9999-99-99 99:99:99")) {
        return false;
    }
    let field = |range: std::ops::Range<usize>| s.get(range).and_then(|f| f.parse::<u32>().ok());
    let (Some(year), Some(month), Some(day)) = (field(0..4), field(5..7), field(8..10)) else {
        return false;
    };
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    let time_ok = s.len() == 10
        || matches!((field(11..13), field(14..16), field(17..19)),
            (Some(h), Some(m), Some(sec)) if h < 24 && m < 60 && sec < 60);
    year >= 1000 && (1..=days).contains(&day) && time_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(k: &str, v: Value) -> (Key, Value) {
        (Key::Str(k.into()), v)
    }

    #[test]
    fn filters_parse_and_refuse_what_is_wrong() {
        let f = parse_filter(
            "in_progress",
            &[
                s("idsites", Value::Array(vec![(Key::Int(0), Value::Int(3))])),
                s("started_before", Value::Str("2026-11-29 03:00:00".into())),
            ],
        )
        .expect("valid");
        assert_eq!(f.idsites, Some(vec![3]));
        assert_eq!(f.started_before.as_deref(), Some("2026-11-29 03:00:00"));
        assert!(is_datetime("2024-02-29") && is_datetime("2026-12-31 23:59:59"));

        for bad in [
            vec![s("idsite", Value::Int(1))],
            vec![s("idsites", Value::Int(1))],
            vec![s("started_after", Value::Str("yesterday".into()))],
            vec![s(
                "started_after",
                Value::Str("2026-11-29' OR 1=1 --".into()),
            )],
            vec![s("started_after", Value::Str("2026-13-45 99:99:99".into()))],
            vec![s("started_before", Value::Str("2026-02-29".into()))],
            vec![s(
                "started_before",
                Value::Str("2026-11-29 24:00:00".into()),
            )],
            vec![s(
                "hosts",
                Value::Array(vec![(Key::Int(0), Value::Str(String::new()))]),
            )],
        ] {
            assert!(parse_filter("in_progress", &bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn claims_refuse_ids_below_one_before_touching_the_database() {
        // No configuration exists in this test process: the id check must come first.
        assert!(matches!(claim(0), Err(Error::InvalidArgument(_))));
        assert!(matches!(claim(-5), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn database_calls_without_configuration_say_how_to_configure() {
        assert!(matches!(claim(1), Err(Error::NotConfigured)));
    }
}

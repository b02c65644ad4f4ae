//! The operations behind the PHP functions: who we are + one connection + the table's SQL.
//! Nothing here knows about PHP.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use crate::connection::{self, WorkError};
use crate::error::{Error, Result};
use crate::heartbeat::{self, RegisterError, Registered};
use crate::identity::Identity;
use crate::invalidations::{self, InvalidationRow, Owner, RowFilter};
use crate::liveness::Decision;
use crate::options::{Key, Value};
use crate::reap::{self, ReapOptions, ReapReport};
use crate::request_scope::{self, ClaimOutcome};
use crate::schema::{self, SchemaOptions, SchemaReport};
use crate::settings::HeartbeatSettings;

/// After a failed registration, claims go on unregistered (judged as a stock claimer's) and try
/// to register again after half a lease (30 s by default): often enough that a process whose
/// database was read-only for a while soon has heartbeat recovery again, seldom enough that a
/// lasting failure (a connection limit) costs the server little.
fn registration_retry_after() -> Duration {
    HeartbeatSettings::from_ini().lease / 2
}

thread_local! {
    /// (pid, when) of the last failed implicit registration: claims do not retry it each time.
    static REGISTRATION_FAILED: Cell<Option<(u32, Instant)>> = const { Cell::new(None) };
    /// (database and table, host name) already found storable: checked once, not per claim.
    static HOST_STORABLE: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
}

/// Refuses a host name that `processing_host` (or this connection's charset) cannot hold as it
/// is: the row would record another name (an emoji becomes '?' in utf8mb3), which our release,
/// completion and reaper could never match again, so the claim would stay in progress.
fn check_host_storable(
    conn: &mut mysql::Conn,
    config: &crate::config::DbConfig,
    owner: &Owner,
) -> std::result::Result<(), WorkError> {
    let Some(host) = owner.processing_host.as_deref() else {
        return Ok(());
    };
    let key = (
        format!(
            "{}/{}/{}",
            config.target(),
            config.dbname,
            config.table_name(invalidations::TABLE)
        ),
        host.to_owned(),
    );
    if HOST_STORABLE.with_borrow(|known| known.as_ref() == Some(&key)) {
        return Ok(());
    }
    let Some((charset, back)) = invalidations::host_round_trip(conn, config, host)?
        .filter(|(_, back)| back.as_deref() != Some(host))
    else {
        HOST_STORABLE.set(Some(key));
        return Ok(());
    };
    let shown = back.unwrap_or_default();
    // A utf8mb4 column holds any name: then the connection's charset is what lost it.
    let refusal = if charset.eq_ignore_ascii_case("utf8mb4") {
        Error::Configuration(format!(
            "claim_invalidation(): this host's name '{host}' would be stored as '{shown}': the \
             connection's charset ({}) cannot carry it; nothing was claimed. Set [database] \
             charset = utf8mb4, or give this host an ASCII name",
            config.charset.as_deref().unwrap_or("the server's default")
        ))
    } else {
        Error::Schema(format!(
            "claim_invalidation(): this host's name '{host}' would be stored as '{shown}' in \
             `{}`.processing_host ({charset}), and a claim under a name we cannot match again \
             could never be released; nothing was claimed. Convert the table to utf8mb4 (ALTER \
             TABLE ... CONVERT TO CHARACTER SET utf8mb4), or give this host an ASCII name",
            config.table_name(invalidations::TABLE)
        ))
    };
    Err(WorkError::Final(refusal))
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
        .is_some_and(|(p, at)| p == pid && at.elapsed() < registration_retry_after());
    if backing_off {
        return Ok(());
    }
    match heartbeat::ensure_registered(conn, config, Identity::current) {
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

pub fn claim(idinvalidation: i64) -> Result<bool> {
    if idinvalidation < 1 {
        return Err(Error::invalid(format!(
            "claim_invalidation(): idinvalidation must be 1 or more, got {idinvalidation}"
        )));
    }
    let owner = Owner::current();
    let mut reached_server = false; // request_scope: a failure before the UPDATE sent nothing
    let result = connection::run("claim_invalidation", |conn, config, attempt| {
        check_host_storable(conn, config, &owner)?;
        // Registered before the claim, so a registration is never younger than its claims.
        register_before_claim(conn, config)?;
        // A registered process claims only while its lease is fresh (beating here if its
        // heartbeat thread cannot): a reaper elsewhere must never see a claim of ours made
        // after our heartbeat went stale.
        heartbeat::fence_claim(conn, config)?;
        reached_server = true;
        Ok(invalidations::claim(
            conn,
            config,
            idinvalidation,
            &owner,
            attempt,
        )?)
    });
    if matches!(result, Ok(true)) {
        crate::load::claimed();
    }
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
    if let Some(r) = heartbeat::current() {
        return Ok(r);
    }
    let me = Identity::current();
    if me.is_archiving_child() {
        // An archiving child claims nothing: it registers on its heartbeat's connection and
        // never opens its own; a detached one (runid= on its command line, which /proc shows
        // whatever became of its parent) at its first beat, a batch of one (whose parent is
        // known only from its ancestry at start) at once.
        let config = connection::settings()?;
        let defer = crate::identity::names_whom_it_works_for();
        return heartbeat::ensure_child_registered(&config, me, defer).map_err(registration_error);
    }
    // Not retried after a reconnect: the first attempt may have registered.
    connection::run("register_process", |conn, config, _| {
        heartbeat::ensure_registered(conn, config, || me.clone())
            .map_err(|e| WorkError::Final(registration_error(e)))
    })
}

fn registration_error(e: RegisterError) -> Error {
    match e {
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
    }
}

/// Stops the heartbeat and removes the registration; false if there was none.
pub fn unregister() -> bool {
    heartbeat::stop()
}

/// Finds and releases orphans (see `liveness` for the rules).
pub fn reap_orphans(options: &ReapOptions) -> Result<ReapReport> {
    let me = Identity::current();
    // Only a watch proves a silence elsewhere: a registered process's heartbeat thread keeps
    // one from now on even where it does not reap by itself, so that a later call can release
    // what this one can only report as not watched long enough. A process that is not
    // registered (a one-off command) is not registered by this call: a dry run writes nothing.
    crate::watch::want();
    // Across a reconnect: what the first attempt released stays in the report.
    let mut carried = reap::Carried::default();
    connection::run("reap_orphans", |conn, config, _| {
        reap::reap(conn, config, &me, options, &mut carried)
    })
}

pub fn parse_reap_options(entries: &[(Key, Value)]) -> Result<ReapOptions> {
    let settings = HeartbeatSettings::from_ini();
    let mut options = ReapOptions::parse(entries, settings.lease.as_secs_f64())?;
    options.policy.host_name_shared = settings.host_name_shared;
    Ok(options)
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
    let owner = Owner::current();
    // One transaction: a retry after a reconnect finds the rows the first attempt released (if
    // it committed) no longer ours, so each row is counted once.
    let changed = connection::run("release_invalidations", |conn, config, _| {
        Ok(invalidations::release_owned(conn, config, &ids, &owner)?)
    })?;
    request_scope::settled(connection::configured().as_deref(), &ids);
    crate::load::released(ids.len(), changed);
    Ok(changed)
}

/// Deletes this request's finished claims among `ids`; returns how many were deleted.
pub fn complete(ids: &[i64]) -> Result<u64> {
    // request_scope: only ids this request claimed.
    let ids = request_scope::claimed_by_this_request(connection::configured().as_deref(), ids);
    if ids.is_empty() {
        return Ok(0);
    }
    let owner = Owner::current();
    let mut deleted = 0;
    connection::run("complete_invalidations", |conn, config, _| {
        deleted += invalidations::complete(conn, config, &ids, &owner)?;
        Ok(())
    })?;
    request_scope::settled(connection::configured().as_deref(), &ids);
    crate::load::finished(ids.len(), deleted);
    Ok(deleted)
}

/// In-progress rows, each with its liveness verdict (nothing is released).
pub fn in_progress(filter: &RowFilter) -> Result<Vec<(InvalidationRow, Decision)>> {
    let me = Identity::current();
    let settings = HeartbeatSettings::from_ini();
    let mut options = ReapOptions::proof_only(settings.lease.as_secs_f64());
    options.policy.host_name_shared = settings.host_name_shared;
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
        Ok(schema::install(conn, config, options)?)
    })?;
    report.ok_or_else(|| {
        Error::Schema(format!(
            "install_schema(): table `{table}` does not exist in this database; is tables_prefix \
             right, and is Matomo installed here?"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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

//! Reaping: gather the facts about in-progress rows in a few queries, decide each with
//! `liveness::decide`, and give the dead ones back together with Matomo's release semantics,
//! fenced on the claim that was observed (see `invalidations::release_fenced`) and, for an
//! owner found dead by its silence, on the heartbeat that was watched (`registry::fence`).

use std::collections::{HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use mysql::prelude::Queryable;
use mysql::Conn;

use crate::config::DbConfig;
use crate::connection::WorkError;
use crate::error::{Error, Result};
use crate::identity::{self, Identity};
use crate::invalidations::{
    self, Fence, InvalidationRow, ReleaseOutcome, RowFilter, Settlement, Slot,
};
use crate::liveness::{
    self, ClaimFacts, Context, Decision, LocalProcess, LocalView, Machine, Policy, Reason,
    Registration, Verdict,
};
use crate::options::{Key, Options, Value};
use crate::registry;

type SqlResult<T> = std::result::Result<T, mysql::Error>;

/// Matomo's `[General] archive_failure_recovery_timeout` default.
pub const DEFAULT_TIMEOUT: i64 = 86400;

/// A reap as asked for: which rows to look at, and how to judge them.
#[derive(Debug, Clone, PartialEq)]
pub struct ReapOptions {
    pub dry_run: bool,
    /// Release the rows of declared hosts even while they heartbeat.
    pub force: bool,
    /// The rows looked at (the rows outside are not even read): the filters of Matomo's
    /// `core:reset-invalidations`.
    pub rows: RowFilter,
    pub policy: Policy,
}

pub const OPTION_KEYS: &[&str] = &[
    "dry_run",
    "timeout",
    "site_timeouts",
    "declare_hosts_dead",
    "force",
    "idsites",
    "only_hosts",
    "started_after",
    "started_before",
    "lease",
];

/// The rows a reap reads: in id order, as Matomo releases them; with no time window, also the
/// rows without ts_started (reported as never_started, never released).
fn reap_rows(filter: RowFilter) -> RowFilter {
    RowFilter {
        include_never_started: filter.started_after.is_none() && filter.started_before.is_none(),
        by_id: true,
        decision_columns_only: true,
        ..filter
    }
}

impl ReapOptions {
    /// Only what can be proven, as the heartbeat thread reaps: no timeout, no declared hosts.
    pub fn proof_only(lease_seconds: f64) -> ReapOptions {
        ReapOptions {
            dry_run: false,
            force: false,
            rows: reap_rows(RowFilter::default()),
            policy: Policy::proof_only(lease_seconds),
        }
    }

    pub fn parse(entries: &[(Key, Value)], default_lease: f64) -> Result<ReapOptions> {
        // The old name of declare_hosts_dead: in in_progress() 'hosts' filters, so a call copied
        // from there would declare live servers dead. Refused by name, before anything else.
        if entries
            .iter()
            .any(|(k, _)| matches!(k, Key::Str(name) if name == "hosts"))
        {
            return Err(Error::invalid(
                "reap_orphans(): option 'hosts' was renamed: to declare hosts dead (all their rows \
                 released) use 'declare_hosts_dead'; to look only at some hosts' rows use \
                 'only_hosts'. Nothing was released.",
            ));
        }
        let o = Options::new("reap_orphans", entries, OPTION_KEYS)?;
        let mut site_timeouts = HashMap::new();
        match o.get("site_timeouts") {
            None => {}
            Some(Value::Array(items)) => {
                for (k, v) in items {
                    let site = match k {
                        Key::Int(n) if *n >= 1 => *n,
                        other => {
                            return Err(Error::invalid(format!(
                                "reap_orphans(): site_timeouts keys must be site ids, got {other}"
                            )))
                        }
                    };
                    let seconds = match v {
                        Value::Int(n) if *n >= 1 => *n,
                        Value::Str(s) => s.trim().parse::<i64>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                            Error::invalid(format!(
                                "reap_orphans(): site_timeouts[{site}] must be a positive number of seconds"
                            ))
                        })?,
                        _ => {
                            return Err(Error::invalid(format!(
                                "reap_orphans(): site_timeouts[{site}] must be a positive number of seconds"
                            )))
                        }
                    };
                    site_timeouts.insert(site, seconds);
                }
            }
            Some(v) => {
                return Err(Error::wrong_type(format!(
                    "reap_orphans(): option 'site_timeouts' must be an array of idsite => seconds, {} given",
                    v.type_name()
                )))
            }
        }
        Ok(ReapOptions {
            dry_run: o.bool("dry_run")?.unwrap_or(false),
            force: o.bool("force")?.unwrap_or(false),
            rows: reap_rows(RowFilter {
                idsites: o.ids("idsites")?,
                hosts: o.strings("only_hosts")?,
                started_after: crate::filters::datetime(&o, "started_after")?,
                started_before: crate::filters::datetime(&o, "started_before")?,
                ..RowFilter::default()
            }),
            policy: Policy {
                lease_seconds: o
                    .int_in("lease", 1, crate::settings::MAX_SECONDS as i64)?
                    .map(|s| s as f64)
                    .unwrap_or(default_lease),
                timeout_seconds: Some(
                    o.int_in("timeout", 1, i64::from(u32::MAX))?
                        .unwrap_or(DEFAULT_TIMEOUT),
                ),
                site_timeouts,
                hosts_declared_dead: o.strings("declare_hosts_dead")?.unwrap_or_default(),
                host_name_shared: false,
            },
        })
    }
}

string_enum! {
    /// What a reap did with a row.
    pub enum Action {
        /// Given back to the queue.
        Reset = "reset",
        /// Deleted: another row already covers its archive (Matomo's release semantics).
        DeletedDuplicate = "deleted_duplicate",
        /// Left alone (not dead).
        Kept = "kept",
        /// Dead, but re-claimed or settled by someone else before our fenced write.
        LostRace = "lost_race",
        /// Dry run: would be given back.
        WouldReset = "would_reset",
        /// Dry run: would be deleted as a duplicate.
        WouldDelete = "would_delete",
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReapEntry {
    pub row: InvalidationRow,
    pub decision: Decision,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReapReport {
    pub dry_run: bool,
    pub entries: Vec<ReapEntry>,
    /// Registrations of dead processes deleted after their rows were settled.
    pub forgotten_registrations: u64,
}

impl ReapReport {
    pub fn count(&self, action: Action) -> usize {
        self.entries.iter().filter(|e| e.action == action).count()
    }

    pub fn released(&self) -> usize {
        self.count(Action::Reset) + self.count(Action::DeletedDuplicate)
    }
}

/// What the deciding process knows about itself, the database clock and the registry, measured
/// now.
pub struct Observer {
    pub context: Context,
    /// Registrations by host name (a row names its owner's host).
    pub registrations: HashMap<Option<String>, Vec<Registration>>,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Measures the database clock (and our offset to it), reads the registry, and sees which
/// machines still reap and whether this host name is shared by other pid namespaces.
pub fn observe(
    conn: &mut Conn,
    config: &DbConfig,
    me: &Identity,
    options: &ReapOptions,
) -> SqlResult<Observer> {
    let before = now();
    let db_now: Option<f64> = conn.query_first(format!("SELECT {}", registry::DB_NOW))?;
    let after = now();
    let db_now = db_now.unwrap_or(after);
    // MySQL 8 has no information_schema.GLOBAL_STATUS; SHOW works on both. Without it, no
    // allowance for a restart (ages count from the last beat, as before).
    let uptime: Option<f64> = conn
        .query_first::<(String, String), _>("SHOW GLOBAL STATUS LIKE 'Uptime'")
        .ok()
        .flatten()
        .and_then(|(_, v)| v.parse().ok());
    // Only the registrations that can matter: of the hosts looked at, of hosts declared dead, and
    // of our own host name (another pid namespace using it).
    let wanted: Option<Vec<String>> = options.rows.hosts.as_ref().map(|only| {
        let mut hosts: Vec<String> = only
            .iter()
            .chain(&options.policy.hosts_declared_dead)
            .cloned()
            .collect();
        hosts.extend(me.host.clone());
        hosts.sort();
        hosts.dedup();
        hosts
    });
    let registry = registry::all(conn, config, wanted.as_deref())?;
    let registrations = registry.unwrap_or_default();
    let mut context = Context {
        host: me.host.clone(),
        boot_id: me.boot_id.clone(),
        pid_namespace: me.pid_namespace,
        now: db_now,
        // Uptime is whole seconds: count the start as late as it can have been.
        database_started_at: uptime.map_or(0.0, |u| db_now - u),
        clock_offset: db_now - (before + after) / 2.0,
        clock_uncertainty: (after - before) / 2.0,
        shared_host_names: Vec::new(),
        machines_with_live_reaper: Vec::new(),
        policy: options.policy.clone(),
    };
    let mut shared_host_names: Vec<String> = Vec::new();
    if options.policy.host_name_shared {
        shared_host_names.extend(me.host.clone());
    }
    let mine = Machine {
        host: me.host.clone(),
        boot_id: me.boot_id.clone(),
        pid_namespace: me.pid_namespace,
    };
    let fresh = |r: &Registration| r.is_fresh(&context);
    let mut machines_with_live_reaper = Vec::new();
    for (i, r) in registrations.iter().enumerate() {
        if r.reaps && fresh(r) && !context.is_this_machine(r) {
            machines_with_live_reaper.push(Machine::of(r));
        }
        // A host name is shared when two pid namespaces of one kernel use it (containers,
        // even one restarted), or two machines heartbeat under it now: its pids then name no
        // single process. Our own namespace counts even when we are not registered.
        let Some(host) = &r.host else { continue };
        let others = registrations[..i]
            .iter()
            .map(|o| (Machine::of(o), fresh(o)))
            .chain((r.host == me.host).then(|| (mine.clone(), true)));
        let shared = others.into_iter().any(|(m, m_fresh)| {
            m.host == r.host
                && m != Machine::of(r)
                && ((m.boot_id.is_some() && m.boot_id == r.boot_id) || (m_fresh && fresh(r)))
        });
        if shared && !shared_host_names.contains(host) {
            shared_host_names.push(host.clone());
        }
    }
    context.shared_host_names = shared_host_names;
    context.machines_with_live_reaper = machines_with_live_reaper;
    let mut by_host: HashMap<Option<String>, Vec<Registration>> = HashMap::new();
    for r in registrations {
        by_host.entry(r.host.clone()).or_default().push(r);
    }
    Ok(Observer {
        context,
        registrations: by_host,
    })
}

/// The rows, then the registry: a process registers before its first claim, so every row read
/// has its owner's registration in what is read after it (read the other way round, a process
/// that registered and claimed in between would be judged as unregistered).
pub fn rows_then_registry(
    conn: &mut Conn,
    config: &DbConfig,
    me: &Identity,
    options: &ReapOptions,
    filter: &RowFilter,
) -> SqlResult<(Vec<InvalidationRow>, Observer)> {
    let registry_table =
        registry::exists_table(conn, config)?.then(|| config.table(registry::TABLE));
    let rows = invalidations::in_progress(conn, config, filter, registry_table.as_deref())?;
    Ok((rows, observe(conn, config, me, options)?))
}

/// This machine's processes, through /proc. A zombie counts as gone: it has died and only
/// waits for its parent to collect it (a killed archiver whose parent has not yet done so).
#[derive(Default)]
pub struct ProcFs {
    /// pid -> whether a live archiving child works for it; read once, at first need.
    children: once_cell::unsync::OnceCell<std::collections::HashSet<u32>>,
    /// Live archiving children that name nobody; read once, at first need (a reap asks for
    /// every local row it finds dead).
    unnamed: once_cell::unsync::OnceCell<Vec<u32>>,
}

impl LocalView for ProcFs {
    fn process(&self, pid: u32) -> LocalProcess {
        match identity::process_status(&pid.to_string()) {
            Some(s) if identity::is_dead_state(s.state) => LocalProcess::Gone,
            Some(s) => LocalProcess::Running {
                start_ticks: s.start_ticks,
                started_at: s.started_at,
            },
            None if identity::pid_exists(pid) => LocalProcess::Unreadable,
            None => LocalProcess::Gone,
        }
    }

    fn unnamed_children(&self) -> &[u32] {
        self.unnamed
            .get_or_init(identity::unnamed_archiving_children)
    }

    fn has_child_working_for(&self, owner: u32) -> Option<bool> {
        if identity::proc_hides_other_users() {
            return None;
        }
        Some(
            self.children
                .get_or_init(|| {
                    identity::archiving_children()
                        .into_iter()
                        .map(|(_, owner)| owner)
                        .collect()
                })
                .contains(&owner),
        )
    }
}

fn facts(row: &InvalidationRow) -> ClaimFacts {
    ClaimFacts {
        idsite: row.idsite,
        host: row.processing_host.clone(),
        process_id: row.process_id.clone(),
        claimed_at: row.claimed_at,
        in_dst_fold: row.in_dst_fold,
        claim_zone: row.claim_zone.clone(),
        age_seconds: row.age_seconds,
    }
}

fn registrations_of<'a>(observer: &'a Observer, row: &InvalidationRow) -> &'a [Registration] {
    observer
        .registrations
        .get(&row.processing_host)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// The liveness verdict of each row (what `in_progress()` shows).
pub fn assess(observer: &Observer, rows: &[InvalidationRow]) -> Vec<Decision> {
    let local = ProcFs::default();
    rows.iter()
        .map(|row| {
            liveness::liveness(
                &facts(row),
                registrations_of(observer, row),
                &local,
                &observer.context,
            )
        })
        .collect()
}

/// Registrations whose process is proven gone: on this machine, its pid is gone or names a
/// later process; elsewhere, its heartbeat was watched silent for a lease and no process there
/// reaps any more.
pub fn dead_registrations(observer: &Observer, local: &impl LocalView) -> Vec<u64> {
    let ctx = &observer.context;
    observer
        .registrations
        .values()
        .flatten()
        .filter(|r| {
            if ctx.is_this_machine(r) {
                match local.process(r.pid) {
                    LocalProcess::Gone => true,
                    LocalProcess::Running { start_ticks, .. } => Some(start_ticks) != r.start_ticks,
                    LocalProcess::Unreadable => false,
                }
            } else {
                r.is_stale(ctx) && !ctx.machines_with_live_reaper.contains(&Machine::of(r))
            }
        })
        .map(|r| r.idprocess)
        .collect()
}

/// Hosts an operator declared dead that still heartbeat: refused unless forced.
fn check_declared_hosts(observer: &Observer, options: &ReapOptions) -> Result<()> {
    if options.force {
        return Ok(());
    }
    for host in &options.policy.hosts_declared_dead {
        let of_host = || {
            observer
                .registrations
                .get(&Some(host.clone()))
                .into_iter()
                .flatten()
        };
        let freshest = of_host()
            .map(|r| r.heartbeat_age(&observer.context))
            .fold(f64::INFINITY, f64::min);
        // Any sign of life refuses: a beat the watch saw, or a timestamp that reads fresh.
        if of_host().any(|r| r.looks_alive(&observer.context)) {
            return Err(Error::Refused(format!(
                "reap_orphans(): host '{host}' is alive: a process there heartbeat {freshest:.1} s ago \
                 (lease {} s). Nothing was released. Pass 'force' => true to release its rows anyway.",
                options.policy.lease_seconds
            )));
        }
    }
    Ok(())
}

/// What earlier attempts of one reap released, for the attempt after a lost connection: a
/// retry reads the rows anew and would no longer see them (they are not in progress now), yet
/// the report must say what the whole call did.
#[derive(Default)]
pub struct Carried {
    /// Releases whose commit was answered.
    released: Vec<ReapEntry>,
    /// A release whose COMMIT went unanswered: its rows and what it wrote.
    unanswered: Option<Unanswered>,
}

/// The dead rows of a release whose COMMIT went unanswered, and what it wrote to each.
type Unanswered = (Vec<(InvalidationRow, Decision)>, HashMap<u64, Settlement>);

/// Finds and releases orphans; `WorkError::Final(Error::Refused)` when a declared host is alive.
/// `carried`: what earlier attempts of this call released (empty on a first attempt).
pub fn reap(
    conn: &mut Conn,
    config: &DbConfig,
    me: &Identity,
    options: &ReapOptions,
    carried: &mut Carried,
) -> std::result::Result<ReapReport, WorkError> {
    if let Some((rows, wrote)) = carried.unanswered.take() {
        if invalidations::landed(conn, config, &wrote)? {
            for (row, decision) in rows {
                let action = match wrote.get(&row.idinvalidation) {
                    Some(Settlement::Requeue) => Action::Reset,
                    Some(Settlement::Delete) => Action::DeletedDuplicate,
                    None => continue, // a lost race then: this attempt reads it again
                };
                carried.released.push(ReapEntry {
                    row,
                    decision,
                    action,
                });
            }
        }
    }
    let local = ProcFs::default();
    let (mut rows, observer) = rows_then_registry(conn, config, me, options, &options.rows)?;
    check_declared_hosts(&observer, options).map_err(WorkError::Final)?;
    // Matomo releases row by row in id order; duplicates are judged against what came before.
    rows.sort_by_key(|r| r.idinvalidation);

    let decided: Vec<(InvalidationRow, Decision)> = rows
        .into_iter()
        .map(|row| {
            let decision = liveness::decide(
                &facts(&row),
                registrations_of(&observer, &row),
                &local,
                &observer.context,
            );
            (row, decision)
        })
        .collect();
    let mut decided = decided;
    // The report's other columns, for the rows to be released only (kept rows show what
    // they were decided on), read before anything is written.
    let mut dead: Vec<&mut InvalidationRow> = decided
        .iter_mut()
        .filter(|(_, d)| d.verdict == Verdict::Dead)
        .map(|(row, _)| row)
        .collect();
    if !dead.is_empty() {
        invalidations::read_details(conn, config, &mut dead)?;
    }
    let mut unanswered = None;
    let guards = heartbeat_guards(&observer, &decided);
    let actions = match release_dead(
        conn,
        config,
        &decided,
        &guards,
        options.dry_run,
        &mut unanswered,
    ) {
        Ok(actions) => actions,
        Err(e) => {
            if let Some(wrote) = unanswered {
                let dead = decided
                    .iter()
                    .filter(|(_, d)| d.verdict == Verdict::Dead)
                    .cloned()
                    .collect();
                carried.unanswered = Some((dead, wrote));
            }
            return Err(e.into());
        }
    };
    let mut entries = Vec::with_capacity(decided.len());
    for ((row, decision), action) in decided.into_iter().zip(actions) {
        let entry = ReapEntry {
            row,
            decision,
            action,
        };
        if matches!(action, Action::Reset | Action::DeletedDuplicate) {
            // Committed: whatever fails from here on, this call did release it.
            carried.released.push(entry);
        } else {
            entries.push(entry);
        }
    }
    // Registry hygiene: a dead process's registration goes once no row names it.
    let forgotten_registrations = if options.dry_run {
        0
    } else {
        registry::forget(conn, config, &dead_registrations(&observer, &local))?
    };
    if !options.dry_run {
        crate::load::record_reaped(
            conn,
            config,
            &crate::load::released_by_host(
                carried
                    .released
                    .iter()
                    .map(|e| e.row.processing_host.as_deref()),
            ),
        );
    }
    entries.extend(carried.released.iter().cloned());
    entries.sort_by_key(|e| e.row.idinvalidation);
    Ok(ReapReport {
        dry_run: options.dry_run,
        entries,
        forgotten_registrations,
    })
}

/// A registration whose watched silence a release rests on: the release commits only if its
/// heartbeat is still the one watched.
#[derive(Debug, Clone, PartialEq)]
pub struct Guard {
    pub idprocess: u64,
    pub token: crate::watch::BeatToken,
    /// The rows released on its silence.
    pub rows: Vec<u64>,
}

/// The guards of the rows found dead by silence (`heartbeat_stale`): every registration of
/// the owner and of the children working for it, on other machines (a local one was judged by
/// the kernel). If any of them beats before the release commits, the row stays.
fn heartbeat_guards(observer: &Observer, decided: &[(InvalidationRow, Decision)]) -> Vec<Guard> {
    let mut by_registration: HashMap<u64, Guard> = HashMap::new();
    for (row, decision) in decided {
        if decision.verdict != Verdict::Dead || decision.reason != Reason::HeartbeatStale {
            continue;
        }
        let Some(pid) = row.process_id.as_deref().and_then(liveness::plausible_pid) else {
            continue;
        };
        for r in registrations_of(observer, row) {
            if (r.pid == pid || r.works_for == Some(pid)) && !observer.context.is_this_machine(r) {
                by_registration
                    .entry(r.idprocess)
                    .or_insert_with(|| Guard {
                        idprocess: r.idprocess,
                        token: r.token,
                        rows: Vec::new(),
                    })
                    .rows
                    .push(row.idinvalidation);
            }
        }
    }
    let mut guards: Vec<Guard> = by_registration.into_values().collect();
    // One order for every reaper: two releases never wait on each other's registry rows.
    guards.sort_by_key(|g| g.idprocess);
    guards
}

/// The action for each decided row (aligned with `decided`, which is in id order): the dead
/// ones are released together as a set, Matomo's row-by-row semantics kept (see
/// `invalidations::settle`); a dry run settles the same set and writes nothing.
fn release_dead(
    conn: &mut Conn,
    config: &DbConfig,
    decided: &[(InvalidationRow, Decision)],
    guards: &[Guard],
    dry_run: bool,
    unanswered: &mut Option<HashMap<u64, Settlement>>,
) -> SqlResult<Vec<Action>> {
    let dead: Vec<&InvalidationRow> = decided
        .iter()
        .filter(|(_, d)| d.verdict == Verdict::Dead)
        .map(|(row, _)| row)
        .collect();
    let outcomes: Vec<Action> = if dead.is_empty() {
        Vec::new()
    } else if dry_run {
        let slots: Vec<(u64, Slot)> = dead
            .iter()
            .map(|r| {
                let slot = Slot {
                    idsite: r.idsite,
                    date1: r.date1.clone(),
                    period: r.period,
                };
                (r.idinvalidation, slot)
            })
            .collect();
        invalidations::plan_release(conn, config, &slots)?
            .into_iter()
            .map(|s| match s {
                Settlement::Requeue => Action::WouldReset,
                Settlement::Delete => Action::WouldDelete,
            })
            .collect()
    } else {
        let fenced: Vec<(u64, Fence)> =
            dead.iter().map(|r| (r.idinvalidation, r.fence())).collect();
        let vetoed = |tx: &mut mysql::Transaction<'_>| -> SqlResult<HashSet<u64>> {
            let mut vetoed = HashSet::new();
            for guard in guards {
                if !registry::fence(tx, config, guard.idprocess, guard.token)? {
                    vetoed.extend(&guard.rows);
                }
            }
            Ok(vetoed)
        };
        invalidations::release_fenced(conn, config, &fenced, vetoed, unanswered)?
            .into_iter()
            .map(|o| match o {
                ReleaseOutcome::Reset => Action::Reset,
                ReleaseOutcome::DeletedDuplicate => Action::DeletedDuplicate,
                ReleaseOutcome::LostRace => Action::LostRace,
            })
            .collect()
    };
    let mut outcomes = outcomes.into_iter();
    Ok(decided
        .iter()
        .map(|(_, d)| {
            if d.verdict == Verdict::Dead {
                // One outcome per dead row by construction; a missing one would mean nothing
                // was written for it.
                outcomes.next().unwrap_or(Action::Kept)
            } else {
                Action::Kept
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::invalidations::TimeBound;
    use crate::liveness::Reason;
    use crate::watch::{BeatToken, Silence};

    fn held(id: u64, host: &str, pid: &str) -> InvalidationRow {
        InvalidationRow {
            idinvalidation: id,
            idarchive: None,
            name: "done".into(),
            idsite: 1,
            date1: "2026-11-28".into(),
            date2: "2026-11-28".into(),
            period: 1,
            ts_invalidated: None,
            ts_started: Some("2026-12-07 05:00:00".into()),
            status: 1,
            report: None,
            processing_host: Some(host.into()),
            process_id: Some(pid.into()),
            age_seconds: Some(100),
            claimed_at: Some(1_800_000_000.0),
            in_dst_fold: false,
            claim_zone: Some("SYSTEM".into()),
            archive_details: false,
        }
    }

    fn registered(idprocess: u64, host: &str, pid: u32, boot: &str) -> Registration {
        Registration {
            idprocess,
            host: Some(host.into()),
            pid,
            boot_id: Some(boot.into()),
            pid_namespace: Some(1),
            start_ticks: Some(10),
            time_zone: Some("SYSTEM".into()),
            works_for: None,
            reaps: false,
            registered_at: 1_799_999_000.0,
            last_heartbeat: 1_800_000_050.0,
            lease_seconds: None,
            token: BeatToken::new(Some(idprocess * 10), 1_800_000_050.0),
            silence: Silence::Watched {
                unchanged_for: 90.0,
                saw_beat: true,
            },
        }
    }

    #[test]
    fn a_release_on_silence_is_fenced_on_every_registration_of_the_owner_and_its_children() {
        let mut child = registered(3, "server2", 200, "boot-2");
        child.works_for = Some(100);
        let registrations = vec![
            registered(1, "server2", 100, "boot-2"),
            registered(2, "server2", 100, "boot-old"),
            child,
            registered(4, "server2", 300, "boot-2"),
        ];
        let observer = Observer {
            context: Context {
                host: Some("server1".into()),
                boot_id: Some("boot-1".into()),
                pid_namespace: Some(1),
                now: 1_800_000_100.0,
                database_started_at: 0.0,
                clock_offset: 0.0,
                clock_uncertainty: 0.0,
                shared_host_names: Vec::new(),
                machines_with_live_reaper: Vec::new(),
                policy: Policy::proof_only(60.0),
            },
            registrations: HashMap::from([(Some("server2".to_owned()), registrations)]),
        };
        let dead_by_silence = Decision {
            verdict: Verdict::Dead,
            reason: Reason::HeartbeatStale,
        };
        let dead_by_timeout = Decision {
            verdict: Verdict::Dead,
            reason: Reason::Timeout,
        };
        let decided = vec![
            (held(10, "server2", "100"), dead_by_silence),
            (held(11, "server2", "300"), dead_by_timeout),
        ];
        let guards = heartbeat_guards(&observer, &decided);
        let fenced: Vec<(u64, BeatToken, Vec<u64>)> = guards
            .into_iter()
            .map(|g| (g.idprocess, g.token, g.rows))
            .collect();
        // The owner's two registrations and its child's, each on the token watched; the row
        // released by the timeout rests on no silence and is fenced on none.
        assert_eq!(
            fenced,
            vec![
                (1, BeatToken::new(Some(10), 1_800_000_050.0), vec![10]),
                (2, BeatToken::new(Some(20), 1_800_000_050.0), vec![10]),
                (3, BeatToken::new(Some(30), 1_800_000_050.0), vec![10]),
            ]
        );
    }

    fn s(k: &str, v: Value) -> (Key, Value) {
        (Key::Str(k.into()), v)
    }

    #[test]
    fn options_default_to_matomos_timeout_and_the_ini_lease() {
        let o = ReapOptions::parse(&[], 60.0).expect("valid");
        assert_eq!(o.policy.timeout_seconds, Some(86400));
        assert_eq!(o.policy.lease_seconds, 60.0);
        assert!(o.rows.by_id && o.rows.include_never_started);
        assert!(!o.dry_run && !o.force);
    }

    #[test]
    fn options_parse_every_key() {
        let o = ReapOptions::parse(
            &[
                s("dry_run", Value::Bool(true)),
                s("timeout", Value::Int(3600)),
                s(
                    "site_timeouts",
                    Value::Array(vec![(Key::Int(7), Value::Str("600".into()))]),
                ),
                s(
                    "declare_hosts_dead",
                    Value::Array(vec![(Key::Int(0), Value::Str("server2".into()))]),
                ),
                s("force", Value::Bool(true)),
                s("idsites", Value::Array(vec![(Key::Int(0), Value::Int(7))])),
                s(
                    "only_hosts",
                    Value::Array(vec![(Key::Int(0), Value::Str("server2".into()))]),
                ),
                s("started_before", Value::Str("2026-11-29 03:00:00".into())),
                s("lease", Value::Int(30)),
            ],
            60.0,
        )
        .expect("valid");
        assert!(o.dry_run && o.force);
        assert_eq!(o.policy.timeout_seconds, Some(3600));
        assert_eq!(o.policy.site_timeouts.get(&7), Some(&600));
        assert_eq!(o.policy.hosts_declared_dead, vec!["server2".to_string()]);
        assert_eq!(o.rows.idsites, Some(vec![7]));
        assert_eq!(o.policy.lease_seconds, 30.0);
        assert_eq!(o.rows.hosts, Some(vec!["server2".to_string()]));
        assert_eq!(
            o.rows.started_before,
            Some(TimeBound::Local("2026-11-29 03:00:00".into()))
        );
        assert!(o.rows.by_id && !o.rows.include_never_started);
    }

    #[test]
    fn bad_options_are_refused() {
        for bad in [
            vec![s("dryrun", Value::Bool(true))],
            vec![s("timeout", Value::Int(0))],
            vec![s("site_timeouts", Value::Int(5))],
            vec![s(
                "site_timeouts",
                Value::Array(vec![(Key::Str("x".into()), Value::Int(5))]),
            )],
            vec![s(
                "site_timeouts",
                Value::Array(vec![(Key::Int(1), Value::Int(-5))]),
            )],
            vec![s("declare_hosts_dead", Value::Str("server2".into()))],
            vec![s("lease", Value::Int(0))],
            vec![s("started_after", Value::Str("1 hour ago".into()))],
        ] {
            assert!(ReapOptions::parse(&bad, 60.0).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_old_name_of_declare_hosts_dead_is_refused_naming_the_new_one() {
        let hosts = Value::Array(vec![(Key::Int(0), Value::Str("server2".into()))]);
        let err = ReapOptions::parse(&[s("hosts", hosts)], 60.0)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("declare_hosts_dead"), "{err}");
        assert!(err.contains("only_hosts"), "{err}");
    }

    #[test]
    fn this_process_is_running_and_a_missing_pid_is_gone() {
        let procs = ProcFs::default();
        assert!(matches!(
            procs.process(std::process::id()),
            LocalProcess::Running { .. }
        ));
        assert_eq!(procs.process(u32::MAX - 7), LocalProcess::Gone);
        assert_eq!(procs.has_child_working_for(std::process::id()), Some(false));
    }
}

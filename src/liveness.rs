//! Is the owner of an in-progress row alive? The decision as a pure function of facts.
//!
//! The rule: release only on **proof of death**, never on doubt.
//! 1. A registered owner (it registered in `archive_claim_process` and heartbeats):
//!    - some heartbeat fresh, owner on this very machine (host, boot, pid namespace): look at the
//!      process: gone, or its pid now belongs to a process that started later -> dead;
//!    - some heartbeat fresh, owner elsewhere -> alive;
//!    - every heartbeat older than the lease -> dead (unless we can see its process running on
//!      this very machine: then only its heartbeat failed).
//! 2. An unregistered owner (stock Matomo, or claimed before the extension was loaded):
//!    - on this host: no such pid -> dead; a process with that pid that started after the claim
//!      -> the pid was reused -> dead; otherwise alive;
//!    - on another host -> unknown.
//! 3. Timeout backstop (as Matomo): claimed longer ago than the recovery timeout -> released
//!    whatever the above said. Rows never started (ts_started NULL) are left alone.
//! 4. Hosts an operator declares dead are released (the caller refuses a host that still
//!    heartbeats unless forced).
//!
//! Why a later start time proves reuse: the owner held pid p when it claimed, so any other
//! process holding p must have started after the owner died, which is after the claim.

use std::collections::HashMap;

/// Linux's PID_MAX_LIMIT (2^22): no pid is larger. Matomo stores a random number when
/// getmypid() is disabled, which is not a pid we can reason about.
pub const PID_MAX: u64 = 4_194_304;

/// How much later than the claim a process must have started to prove pid reuse: ts_started
/// is truncated to the second, and /proc's boot time is whole seconds too.
pub const REUSE_MARGIN_SECONDS: f64 = 2.0;

/// Two start times of one process, read from /proc at different moments, differ by the
/// rounding of the boot time at most.
pub const SAME_START_TOLERANCE_SECONDS: f64 = 1.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Dead,
    Alive,
    Unknown,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Dead => "dead",
            Verdict::Alive => "alive",
            Verdict::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// No process has the owner's pid (on the owner's machine, seen from there).
    PidGone,
    /// The pid belongs to a process that started after the claim.
    PidReused,
    /// Every registration of the owner stopped heartbeating longer than the lease ago.
    HeartbeatStale,
    /// Older than the recovery timeout (Matomo's backstop).
    Timeout,
    /// An operator said this host is dead.
    HostDeclaredDead,
    /// A registration of the owner heartbeats (and, if local, its process runs).
    HeartbeatFresh,
    /// Unregistered owner on this host, and its process runs.
    PidAlive,
    /// Unregistered owner on another host: nothing can be proven from here.
    RemoteUnregistered,
    /// process_id is not a pid (or host is unknown).
    ImplausiblePid,
    /// ts_started is NULL: Matomo never reaps those, nor do we.
    NeverStarted,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::PidGone => "pid_gone",
            Reason::PidReused => "pid_reused",
            Reason::HeartbeatStale => "heartbeat_stale",
            Reason::Timeout => "timeout",
            Reason::HostDeclaredDead => "host_declared_dead",
            Reason::HeartbeatFresh => "heartbeat_fresh",
            Reason::PidAlive => "pid_alive",
            Reason::RemoteUnregistered => "remote_unregistered",
            Reason::ImplausiblePid => "implausible_pid",
            Reason::NeverStarted => "never_started",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub reason: Reason,
}

impl Decision {
    fn of(verdict: Verdict, reason: Reason) -> Decision {
        Decision { verdict, reason }
    }

    /// Whether the row should be given back to the queue.
    pub fn release(&self) -> bool {
        self.verdict == Verdict::Dead
    }
}

/// One in-progress row, as far as liveness is concerned.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimFacts {
    pub idsite: i64,
    pub host: Option<String>,
    pub process_id: Option<String>,
    /// ts_started as Unix seconds on the database clock (whole seconds).
    pub claimed_at: Option<f64>,
    /// Seconds since ts_started on the database clock.
    pub age_seconds: Option<i64>,
}

/// One registered process start with that host and pid.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    pub boot_id: Option<String>,
    pub pid_namespace: Option<u64>,
    /// The process's start, Unix seconds, on its own machine's clock.
    pub started_at: Option<f64>,
    /// When it registered, Unix seconds on the database clock.
    pub registered_at: f64,
    /// Seconds since its last heartbeat, on the database clock.
    pub heartbeat_age: f64,
}

/// What this machine's process table says about a pid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LocalProcess {
    /// No process with that pid in our pid namespace.
    Gone,
    /// A process with that pid, started at this Unix time (our clock).
    Running { started_at: f64 },
    /// /proc could not tell (for example hidepid): no proof either way.
    Unreadable,
}

/// Who is deciding, and with what policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Context {
    pub host: Option<String>,
    pub boot_id: Option<String>,
    pub pid_namespace: Option<u64>,
    /// Database clock minus our clock, seconds, measured in this call.
    pub clock_offset: f64,
    /// Uncertainty of that offset (half the round trip), seconds.
    pub clock_uncertainty: f64,
    /// A heartbeat older than this is stale.
    pub lease_seconds: f64,
    /// Recovery timeout (None: no backstop, as in automatic reaping).
    pub timeout_seconds: Option<i64>,
    pub site_timeouts: HashMap<i64, i64>,
    pub hosts_declared_dead: Vec<String>,
}

impl Context {
    fn timeout_for(&self, idsite: i64) -> Option<i64> {
        self.site_timeouts
            .get(&idsite)
            .copied()
            .or(self.timeout_seconds)
    }

    fn is_this_host(&self, host: &str) -> bool {
        self.host.as_deref() == Some(host)
    }

    fn is_this_machine(&self, host: &str, r: &Registration) -> bool {
        self.is_this_host(host)
            && r.boot_id.is_some()
            && r.boot_id == self.boot_id
            && r.pid_namespace.is_some()
            && r.pid_namespace == self.pid_namespace
    }
}

/// The pid in a `process_id` column, if it is one.
pub fn plausible_pid(process_id: &str) -> Option<u32> {
    let digits = !process_id.is_empty()
        && process_id.len() <= 7
        && process_id.bytes().all(|b| b.is_ascii_digit())
        && !process_id.starts_with('0');
    let pid: u64 = if digits {
        process_id.parse().ok()?
    } else {
        return None;
    };
    (1..=PID_MAX).contains(&pid).then_some(pid as u32)
}

/// The liveness verdict alone (what `in_progress()` shows): no timeout, no declared hosts.
pub fn liveness(
    row: &ClaimFacts,
    registrations: &[Registration],
    local: impl Fn(u32) -> LocalProcess,
    ctx: &Context,
) -> Decision {
    use Reason::*;
    use Verdict::*;

    let Some(claimed_at) = row.claimed_at else {
        return Decision::of(Unknown, NeverStarted);
    };
    let (Some(host), Some(pid)) = (
        row.host.as_deref(),
        row.process_id.as_deref().and_then(plausible_pid),
    ) else {
        return Decision::of(Unknown, ImplausiblePid);
    };

    // A registration made after the claim cannot be the claimer: it is a later process that
    // got the same pid (registration happens before a process's first claim).
    let owners: Vec<&Registration> = registrations
        .iter()
        .filter(|r| r.registered_at <= claimed_at + REUSE_MARGIN_SECONDS)
        .collect();

    if !owners.is_empty() {
        let fresh: Vec<&&Registration> = owners
            .iter()
            .filter(|r| r.heartbeat_age < ctx.lease_seconds)
            .collect();
        if fresh.is_empty() {
            // A stale heartbeat is proof only where we cannot look: a process we can see
            // running on this machine, with the very start time it registered, is alive
            // (its heartbeat thread or connection is what failed).
            let still_running_here = owners.iter().any(|r| {
                ctx.is_this_machine(host, r)
                    && matches!((local(pid), r.started_at), (LocalProcess::Running { started_at }, Some(s))
                        if (started_at - s).abs() <= SAME_START_TOLERANCE_SECONDS)
            });
            if still_running_here {
                return Decision::of(Alive, PidAlive);
            }
            return Decision::of(Dead, HeartbeatStale);
        }
        let mut local_death = None;
        for r in &fresh {
            if !ctx.is_this_machine(host, r) {
                return Decision::of(Alive, HeartbeatFresh);
            }
            match (local(pid), r.started_at) {
                (LocalProcess::Gone, _) => local_death = Some(PidGone),
                (LocalProcess::Running { started_at }, Some(registered_start))
                    if (started_at - registered_start).abs() > SAME_START_TOLERANCE_SECONDS =>
                {
                    local_death = Some(PidReused)
                }
                _ => return Decision::of(Alive, HeartbeatFresh),
            }
        }
        return Decision::of(Dead, local_death.unwrap_or(HeartbeatStale));
    }

    if !ctx.is_this_host(host) {
        return Decision::of(Unknown, RemoteUnregistered);
    }
    match local(pid) {
        LocalProcess::Gone => Decision::of(Dead, PidGone),
        LocalProcess::Running { started_at } => {
            let started_on_db_clock = started_at + ctx.clock_offset;
            if started_on_db_clock > claimed_at + REUSE_MARGIN_SECONDS + ctx.clock_uncertainty {
                Decision::of(Dead, PidReused)
            } else {
                Decision::of(Alive, PidAlive)
            }
        }
        LocalProcess::Unreadable => Decision::of(Unknown, PidAlive),
    }
}

/// The full reaping decision: liveness, then an operator's declaration, then the timeout.
pub fn decide(
    row: &ClaimFacts,
    registrations: &[Registration],
    local: impl Fn(u32) -> LocalProcess,
    ctx: &Context,
) -> Decision {
    let verdict = liveness(row, registrations, local, ctx);
    if verdict.release() || verdict.reason == Reason::NeverStarted {
        return verdict;
    }
    if let Some(host) = &row.host {
        if ctx.hosts_declared_dead.iter().any(|h| h == host) {
            return Decision::of(Verdict::Dead, Reason::HostDeclaredDead);
        }
    }
    match (ctx.timeout_for(row.idsite), row.age_seconds) {
        (Some(timeout), Some(age)) if age > timeout => Decision::of(Verdict::Dead, Reason::Timeout),
        _ => verdict,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLAIMED: f64 = 1_800_000_000.0;

    fn ctx() -> Context {
        Context {
            host: Some("server1".into()),
            boot_id: Some("boot-a".into()),
            pid_namespace: Some(4026531836),
            clock_offset: 0.0,
            clock_uncertainty: 0.001,
            lease_seconds: 60.0,
            timeout_seconds: Some(86400),
            site_timeouts: HashMap::new(),
            hosts_declared_dead: Vec::new(),
        }
    }

    fn row(host: &str, pid: &str) -> ClaimFacts {
        ClaimFacts {
            idsite: 1,
            host: Some(host.into()),
            process_id: Some(pid.into()),
            claimed_at: Some(CLAIMED),
            age_seconds: Some(30),
        }
    }

    fn registration(heartbeat_age: f64) -> Registration {
        Registration {
            boot_id: Some("boot-a".into()),
            pid_namespace: Some(4026531836),
            started_at: Some(CLAIMED - 100.0),
            registered_at: CLAIMED - 50.0,
            heartbeat_age,
        }
    }

    fn elsewhere(mut r: Registration) -> Registration {
        r.boot_id = Some("boot-b".into());
        r
    }

    fn gone(_: u32) -> LocalProcess {
        LocalProcess::Gone
    }

    fn running_since(started_at: f64) -> impl Fn(u32) -> LocalProcess {
        move |_| LocalProcess::Running { started_at }
    }

    fn check(d: Decision, verdict: Verdict, reason: Reason) {
        assert_eq!((d.verdict, d.reason), (verdict, reason));
    }

    // --- registered owners -------------------------------------------------------------

    #[test]
    fn registered_local_owner_that_runs_is_alive() {
        let d = decide(
            &row("server1", "100"),
            &[registration(2.0)],
            running_since(CLAIMED - 100.0),
            &ctx(),
        );
        check(d, Verdict::Alive, Reason::HeartbeatFresh);
    }

    #[test]
    fn registered_local_owner_whose_pid_is_gone_is_dead_despite_a_fresh_heartbeat() {
        let d = decide(&row("server1", "100"), &[registration(2.0)], gone, &ctx());
        check(d, Verdict::Dead, Reason::PidGone);
    }

    #[test]
    fn registered_local_owner_whose_pid_now_belongs_to_a_younger_process_is_dead() {
        let d = decide(
            &row("server1", "100"),
            &[registration(2.0)],
            running_since(CLAIMED + 10.0),
            &ctx(),
        );
        check(d, Verdict::Dead, Reason::PidReused);
    }

    #[test]
    fn registered_remote_owner_with_a_fresh_heartbeat_is_alive() {
        let d = decide(
            &row("server2", "100"),
            &[elsewhere(registration(59.0))],
            gone,
            &ctx(),
        );
        check(d, Verdict::Alive, Reason::HeartbeatFresh);
    }

    #[test]
    fn the_same_host_name_in_another_boot_or_pid_namespace_is_not_local() {
        let mut other_ns = registration(1.0);
        other_ns.pid_namespace = Some(1);
        let d = decide(&row("server1", "100"), &[other_ns], gone, &ctx());
        check(d, Verdict::Alive, Reason::HeartbeatFresh);
        let d = decide(
            &row("server1", "100"),
            &[elsewhere(registration(1.0))],
            gone,
            &ctx(),
        );
        check(d, Verdict::Alive, Reason::HeartbeatFresh);
    }

    #[test]
    fn every_heartbeat_older_than_the_lease_is_death() {
        let regs = [
            elsewhere(registration(61.0)),
            elsewhere(registration(600.0)),
        ];
        check(
            decide(&row("server2", "100"), &regs, gone, &ctx()),
            Verdict::Dead,
            Reason::HeartbeatStale,
        );
        // Exactly at the lease is already stale; just under it is fresh.
        check(
            decide(
                &row("server2", "100"),
                &[elsewhere(registration(60.0))],
                gone,
                &ctx(),
            ),
            Verdict::Dead,
            Reason::HeartbeatStale,
        );
        check(
            decide(
                &row("server2", "100"),
                &[elsewhere(registration(59.9))],
                gone,
                &ctx(),
            ),
            Verdict::Alive,
            Reason::HeartbeatFresh,
        );
    }

    #[test]
    fn a_stale_local_owner_whose_process_still_runs_is_alive() {
        let d = decide(
            &row("server1", "100"),
            &[registration(600.0)],
            running_since(CLAIMED - 100.0),
            &ctx(),
        );
        check(d, Verdict::Alive, Reason::PidAlive);
        let d = decide(
            &row("server1", "100"),
            &[registration(600.0)],
            running_since(CLAIMED + 50.0),
            &ctx(),
        );
        check(d, Verdict::Dead, Reason::HeartbeatStale);
    }

    #[test]
    fn one_fresh_registration_among_stale_ones_keeps_the_row() {
        let regs = [elsewhere(registration(500.0)), elsewhere(registration(3.0))];
        check(
            decide(&row("server2", "100"), &regs, gone, &ctx()),
            Verdict::Alive,
            Reason::HeartbeatFresh,
        );
    }

    #[test]
    fn a_registration_made_after_the_claim_is_a_later_process_not_the_owner() {
        // The owner never registered (stock Matomo) and died; a new process with its pid
        // registered later and heartbeats: that must not keep the orphan alive.
        let mut later = elsewhere(registration(1.0));
        later.registered_at = CLAIMED + 30.0;
        check(
            decide(&row("server2", "100"), &[later.clone()], gone, &ctx()),
            Verdict::Unknown,
            Reason::RemoteUnregistered,
        );
        // Within the DATETIME second (and margin) it may be the owner.
        later.registered_at = CLAIMED + 1.5;
        check(
            decide(&row("server2", "100"), &[later], gone, &ctx()),
            Verdict::Alive,
            Reason::HeartbeatFresh,
        );
    }

    #[test]
    fn a_local_registered_owner_with_an_unreadable_proc_stays_alive() {
        let d = decide(
            &row("server1", "100"),
            &[registration(1.0)],
            |_| LocalProcess::Unreadable,
            &ctx(),
        );
        check(d, Verdict::Alive, Reason::HeartbeatFresh);
    }

    // --- unregistered owners -----------------------------------------------------------

    #[test]
    fn unregistered_local_owner_whose_pid_is_gone_is_dead() {
        check(
            decide(&row("server1", "100"), &[], gone, &ctx()),
            Verdict::Dead,
            Reason::PidGone,
        );
    }

    #[test]
    fn unregistered_local_owner_that_runs_since_before_the_claim_is_alive() {
        let d = decide(
            &row("server1", "100"),
            &[],
            running_since(CLAIMED - 3600.0),
            &ctx(),
        );
        check(d, Verdict::Alive, Reason::PidAlive);
    }

    #[test]
    fn a_pid_started_after_the_claim_was_reused() {
        let d = decide(
            &row("server1", "100"),
            &[],
            running_since(CLAIMED + 30.0),
            &ctx(),
        );
        check(d, Verdict::Dead, Reason::PidReused);
    }

    #[test]
    fn a_pid_started_within_the_datetime_second_of_the_claim_is_no_proof_of_reuse() {
        for delta in [0.0, 0.5, 0.999, 1.9] {
            let d = decide(
                &row("server1", "100"),
                &[],
                running_since(CLAIMED + delta),
                &ctx(),
            );
            check(d, Verdict::Alive, Reason::PidAlive);
        }
    }

    #[test]
    fn the_clock_offset_to_the_database_is_applied() {
        // Our clock is 100 s behind the database: a process that started 50 s "after" the
        // claim by our clock started 50 s before it on the database's.
        let mut c = ctx();
        c.clock_offset = 100.0;
        let d = decide(
            &row("server1", "100"),
            &[],
            running_since(CLAIMED - 150.0),
            &c,
        );
        check(d, Verdict::Alive, Reason::PidAlive);
        let d = decide(
            &row("server1", "100"),
            &[],
            running_since(CLAIMED - 50.0),
            &c,
        );
        check(d, Verdict::Dead, Reason::PidReused);
    }

    #[test]
    fn unregistered_remote_owner_is_unknown_and_kept_until_the_timeout() {
        check(
            decide(&row("server2", "100"), &[], gone, &ctx()),
            Verdict::Unknown,
            Reason::RemoteUnregistered,
        );
        let mut old = row("server2", "100");
        old.age_seconds = Some(86401);
        check(
            decide(&old, &[], gone, &ctx()),
            Verdict::Dead,
            Reason::Timeout,
        );
    }

    #[test]
    fn process_ids_that_are_not_pids_are_unknown() {
        for pid in [
            "1234567890123456789",
            "0",
            "abc",
            "",
            "-5",
            "0012",
            "4194305",
        ] {
            let d = decide(&row("server1", pid), &[], gone, &ctx());
            check(d, Verdict::Unknown, Reason::ImplausiblePid);
        }
        assert_eq!(plausible_pid("4194304"), Some(4194304));
        assert_eq!(plausible_pid("1"), Some(1));
    }

    #[test]
    fn a_null_host_proves_nothing() {
        let mut r = row("x", "100");
        r.host = None;
        check(
            decide(&r, &[], gone, &ctx()),
            Verdict::Unknown,
            Reason::ImplausiblePid,
        );
    }

    // --- policy: never started, declared dead, timeout -----------------------------------

    #[test]
    fn rows_never_started_are_left_alone_even_when_old_or_declared_dead() {
        let mut r = row("server2", "100");
        r.claimed_at = None;
        r.age_seconds = None;
        let mut c = ctx();
        c.hosts_declared_dead = vec!["server2".into()];
        check(
            decide(&r, &[], gone, &c),
            Verdict::Unknown,
            Reason::NeverStarted,
        );
    }

    #[test]
    fn a_declared_dead_host_is_released() {
        let mut c = ctx();
        c.hosts_declared_dead = vec!["server2".into()];
        check(
            decide(&row("server2", "100"), &[], gone, &c),
            Verdict::Dead,
            Reason::HostDeclaredDead,
        );
        check(
            decide(&row("server3", "100"), &[], gone, &c),
            Verdict::Unknown,
            Reason::RemoteUnregistered,
        );
    }

    #[test]
    fn the_timeout_backstop_overrides_alive_and_has_per_site_overrides() {
        let mut old = row("server1", "100");
        old.age_seconds = Some(90000);
        check(
            decide(&old, &[], running_since(CLAIMED - 10.0), &ctx()),
            Verdict::Dead,
            Reason::Timeout,
        );

        let mut c = ctx();
        c.site_timeouts.insert(1, 100_000);
        check(
            decide(&old, &[], running_since(CLAIMED - 10.0), &c),
            Verdict::Alive,
            Reason::PidAlive,
        );
        c.site_timeouts.insert(1, 60);
        let mut young = row("server2", "100");
        young.age_seconds = Some(61);
        check(
            decide(&young, &[], gone, &c),
            Verdict::Dead,
            Reason::Timeout,
        );
        young.age_seconds = Some(60);
        check(
            decide(&young, &[], gone, &c),
            Verdict::Unknown,
            Reason::RemoteUnregistered,
        );
    }

    #[test]
    fn without_a_timeout_only_proof_releases() {
        let mut c = ctx();
        c.timeout_seconds = None;
        let mut old = row("server2", "100");
        old.age_seconds = Some(10_000_000);
        check(
            decide(&old, &[], gone, &c),
            Verdict::Unknown,
            Reason::RemoteUnregistered,
        );
    }

    #[test]
    fn proof_of_death_is_reported_before_the_timeout() {
        let mut old = row("server1", "100");
        old.age_seconds = Some(90000);
        check(
            decide(&old, &[], gone, &ctx()),
            Verdict::Dead,
            Reason::PidGone,
        );
    }

    #[test]
    fn liveness_alone_ignores_policy() {
        let mut old = row("server2", "100");
        old.age_seconds = Some(90000);
        let mut c = ctx();
        c.hosts_declared_dead = vec!["server2".into()];
        check(
            liveness(&old, &[], gone, &c),
            Verdict::Unknown,
            Reason::RemoteUnregistered,
        );
    }
}

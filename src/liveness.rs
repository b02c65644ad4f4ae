//! Is the owner of an in-progress row alive? The decision as a pure function of facts.
//!
//! The rule: release only on **proof of death**, never on doubt. A live claim is never released:
//! not when a clock steps or a time zone changes, a pid is reused, containers share a host name,
//! a heartbeat cannot connect, the work runs in a child process, the database fails over, or
//! the nodes of a cluster disagree about the time.
//!
//! 0. **Work in a child.** Matomo's claims belong to the `core:archive` parent while detached
//!    `climulti:request` children do the archiving: while a child working for the owner lives
//!    (seen in /proc on this host, or a registration of a child elsewhere not watched silent),
//!    the claim is alive, whatever became of the parent.
//! 1. **Registered owner** (it registered in `archive_claim_process` and heartbeats):
//!    - on this very machine (host, boot, pid namespace) its process is looked at in the
//!      kernel's own frame: the pid with the registered start ticks runs -> alive; the pid is gone,
//!      or now names a later process -> that registration is dead;
//!    - elsewhere: dead only once this process's watcher has seen its heartbeat token stay the
//!      same for a full lease (see `watch`), and only where the owner's host has gone silent: a
//!      host that still runs a reaper judges its own processes, which it can see. No clock of
//!      the database enters it: until watched that long, the row is kept.
//!    - a dead registration speaks only for rows claimed during its life: a registered process
//!      claims only while its lease is fresh, so no claim of its comes later than one lease
//!      after its last heartbeat. Later rows are judged as unregistered.
//! 2. **Unregistered owner** (stock Matomo, or a row no registration speaks for):
//!    - on this host: no such pid -> dead; the pid now names a process that started after the
//!      claim by more than any clock or time zone can explain -> reused -> dead; otherwise alive.
//!      Where the host name is shared by several pid namespaces (containers), a pid proves
//!      nothing: unknown.
//!    - on another host -> unknown.
//! 3. Timeout backstop (as Matomo): claimed longer ago than the recovery timeout -> released
//!    whatever the above said. Rows never started (ts_started NULL) are left alone.
//! 4. Hosts an operator declares dead are released (the caller refuses a host that still
//!    heartbeats unless forced).
//!
//! Time: `ts_started` is a DATETIME in the claimer's session time zone: read in the zone a
//! registered claimer recorded it is exact, except in a DST fold; a stock claimer's zone is
//! unknown. Every comparison with it carries an uncertainty that says so. Heartbeat timestamps
//! only ever keep a row (a display hint when nothing was watched), never release one.
//!
//! Why a later start proves reuse: the owner held pid p when it claimed, so any other process
//! holding p must have started after the owner died, which is after the claim.

use std::collections::HashMap;

use crate::watch::{BeatToken, Silence};

/// Linux's PID_MAX_LIMIT (2^22): no pid is larger. Matomo stores a random number when
/// getmypid() is disabled, which is not a pid we can reason about.
pub const PID_MAX: u64 = 4_194_304;

/// ts_started is truncated to the second, and /proc's boot time is whole seconds too.
pub const REUSE_MARGIN_SECONDS: f64 = 2.0;

/// How far a DATETIME written in one session's time zone may be off when read in another's:
/// zones run from UTC-12 to UTC+14. A claim of an unknown writer is compared with this margin.
pub const TIME_ZONE_SPREAD_SECONDS: f64 = 26.0 * 3600.0;

/// A DATETIME inside a DST fold (the hour that happens twice) names two instants an hour apart.
pub const DST_FOLD_SECONDS: f64 = 3600.0;

string_enum! {
    pub enum Verdict {
        Dead = "dead",
        Alive = "alive",
        Unknown = "unknown",
    }
}

string_enum! {
    pub enum Reason {
        /// No process has the owner's pid (on the owner's machine, seen from there).
        PidGone = "pid_gone",
        /// The pid belongs to a process that started after the claim.
        PidReused = "pid_reused",
        /// This process watched every registration of the owner keep the same heartbeat for a
        /// full lease, and its host has gone silent.
        HeartbeatStale = "heartbeat_stale",
        /// The owner's heartbeat has not been watched for a full lease yet (this process just
        /// started watching, reconnected, or has no watcher): nothing is proven.
        NotWatchedLongEnough = "not_watched_long_enough",
        /// Older than the recovery timeout (Matomo's backstop).
        Timeout = "timeout",
        /// An operator said this host is dead.
        HostDeclaredDead = "host_declared_dead",
        /// A registration of the owner heartbeats (and, if local, its process runs).
        HeartbeatFresh = "heartbeat_fresh",
        /// The owner's process runs (unregistered, or registered with a heartbeat that failed).
        PidAlive = "pid_alive",
        /// A Matomo archiving child of the owner still runs.
        ChildWorking = "child_working",
        /// The owner's heartbeat is stale but its host still runs a reaper: that host, which can
        /// see its processes, decides.
        OwnerHostAlive = "owner_host_alive",
        /// Unregistered owner on another host: nothing can be proven from here.
        RemoteUnregistered = "remote_unregistered",
        /// Several pid namespaces use this host name: a pid alone names no process.
        HostNameShared = "host_name_shared",
        /// /proc could not tell whether the owner runs (for example hidepid).
        ProcUnreadable = "proc_unreadable",
        /// An archiving child that names nobody (a batch of one) runs on this host and has not
        /// registered yet: it may be working for the dead owner.
        UnregisteredChild = "unregistered_child",
        /// process_id is not a pid (or host is unknown).
        ImplausiblePid = "implausible_pid",
        /// ts_started is NULL: Matomo never reaps those, nor do we.
        NeverStarted = "never_started",
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
    /// ts_started as Unix seconds, read in `claim_zone`.
    pub claimed_at: Option<f64>,
    /// ts_started lies in a DST fold of `claim_zone` (it names two instants).
    pub in_dst_fold: bool,
    /// The time zone ts_started was read in (exact if its writer's session used it).
    pub claim_zone: Option<String>,
    /// Seconds since ts_started on the database clock.
    pub age_seconds: Option<i64>,
}

/// One registered process start, as the registry has it, with what this process's watcher
/// has seen of its heartbeat.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    pub idprocess: u64,
    pub host: Option<String>,
    pub pid: u32,
    pub boot_id: Option<String>,
    pub pid_namespace: Option<u64>,
    pub start_ticks: Option<u64>,
    /// The session time zone its claims' ts_started were written in.
    pub time_zone: Option<String>,
    /// The pid (same host) of the process whose claims it works on, if it is a child.
    pub works_for: Option<u32>,
    /// Whether its heartbeat thread reaps for its host.
    pub reaps: bool,
    /// Unix seconds on the clock of the database server (or cluster node) that wrote them:
    /// shown, and compared with ts_started written by the same process, never used to call a
    /// heartbeat stale.
    pub registered_at: f64,
    pub last_heartbeat: f64,
    /// The lease the process itself keeps (None: not recorded, an older registry).
    pub lease_seconds: Option<f64>,
    /// Its heartbeat as read now (changes at every beat).
    pub token: BeatToken,
    /// What this process's watcher has seen of that token.
    pub silence: Silence,
}

impl Registration {
    /// Seconds since its last beat by the database's clock, for display and as a hint that
    /// only ever keeps a row: time the database was down (a restart) is nobody's silence.
    pub fn heartbeat_age(&self, ctx: &Context) -> f64 {
        ctx.now - self.last_heartbeat.max(ctx.database_started_at)
    }

    /// How long after its last beat it may have claimed: it claims only within its own lease
    /// (`heartbeat::fence_claim`), so a longer window of the reaper's would lay a later
    /// process's claim (the same pid reused) to it.
    pub fn claims_within(&self, ctx: &Context) -> f64 {
        self.lease_seconds
            .filter(|l| l.is_finite() && *l > 0.0)
            .map_or(ctx.policy.lease_seconds, |own| {
                own.min(ctx.policy.lease_seconds)
            })
    }

    /// The silence that makes it stale: the reaper's lease, or the process's own when that is
    /// longer (it beats less often: a gap between its beats is no silence).
    pub fn stale_after(&self, ctx: &Context) -> f64 {
        self.lease_seconds
            .filter(|l| l.is_finite())
            .map_or(ctx.policy.lease_seconds, |own| {
                own.max(ctx.policy.lease_seconds)
            })
    }

    /// Proven stale: watched unchanged for a full lease. Nothing else makes a registration
    /// stale, however old its timestamp reads.
    pub fn is_stale(&self, ctx: &Context) -> bool {
        self.silence.is_silent_for(self.stale_after(ctx))
    }

    /// Not proven stale: it may be alive, and everything that depends on it is kept.
    pub fn is_fresh(&self, ctx: &Context) -> bool {
        !self.is_stale(ctx)
    }

    /// Positive evidence of life for a verdict: the watch saw it beat within the lease, or
    /// (nothing watched long enough) its timestamp reads fresh. Only ever used to say "alive"
    /// rather than "unknown"; both keep the row.
    pub fn looks_alive(&self, ctx: &Context) -> bool {
        let lease = self.stale_after(ctx);
        self.silence.seen_beating_within(lease) || self.heartbeat_age(ctx) < lease
    }
}

/// Where a registered process runs: host name, boot and pid namespace (its pids are unique there).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Machine {
    pub host: Option<String>,
    pub boot_id: Option<String>,
    pub pid_namespace: Option<u64>,
}

impl Machine {
    pub fn of(r: &Registration) -> Machine {
        Machine {
            host: r.host.clone(),
            boot_id: r.boot_id.clone(),
            pid_namespace: r.pid_namespace,
        }
    }
}

/// What this machine's process table says about a pid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LocalProcess {
    /// No process with that pid in our pid namespace (or only a zombie).
    Gone,
    /// A process with that pid: its start in ticks after boot, and as Unix seconds on our
    /// clock as it reads now.
    Running { start_ticks: u64, started_at: f64 },
    /// /proc could not tell (for example hidepid): no proof either way.
    Unreadable,
}

/// Looks at this machine's processes.
pub trait LocalView {
    fn process(&self, pid: u32) -> LocalProcess;
    /// Whether a Matomo archiving child (`climulti:request ... runid=<owner>`) of `owner` runs;
    /// None when /proc hides other users' processes, so a child could run unseen.
    fn has_child_working_for(&self, owner: u32) -> Option<bool>;
    /// Archiving children that name nobody on their command line (a batch of one): whom they
    /// work for is known only once they register.
    fn unnamed_children(&self) -> &[u32] {
        &[]
    }
}

/// Who is deciding, and with what policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Context {
    pub host: Option<String>,
    pub boot_id: Option<String>,
    pub pid_namespace: Option<u64>,
    /// The database clock now, Unix seconds.
    pub now: f64,
    /// When the database server last started (its clock): nobody could beat before.
    pub database_started_at: f64,
    /// Database clock minus our clock, seconds, measured in this call.
    pub clock_offset: f64,
    /// Uncertainty of that offset (half the round trip), seconds.
    pub clock_uncertainty: f64,
    /// Host names several pid namespaces use (containers): seen in the registry, or this
    /// host's name declared by the operator. A pid on them names no single process.
    pub shared_host_names: Vec<String>,
    /// Machines where a process with a fresh heartbeat reaps for its host.
    pub machines_with_live_reaper: Vec<Machine>,
    /// What the caller chose; the fields above are measured.
    pub policy: Policy,
}

/// The caller's part of the context: how long a lease is, which backstop applies, which hosts
/// an operator declared dead.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// A heartbeat older than this is stale.
    pub lease_seconds: f64,
    /// Recovery timeout (None: no backstop, as in automatic reaping).
    pub timeout_seconds: Option<i64>,
    pub site_timeouts: HashMap<i64, i64>,
    pub hosts_declared_dead: Vec<String>,
    /// The operator says this host's name is used by several pid namespaces (php.ini).
    pub host_name_shared: bool,
}

impl Policy {
    /// Only what can be proven, as the heartbeat thread reaps: no timeout, no declared hosts.
    pub fn proof_only(lease_seconds: f64) -> Policy {
        Policy {
            lease_seconds,
            timeout_seconds: None,
            site_timeouts: HashMap::new(),
            hosts_declared_dead: Vec::new(),
            host_name_shared: false,
        }
    }
}

impl Context {
    fn timeout_for(&self, idsite: i64) -> Option<i64> {
        self.policy
            .site_timeouts
            .get(&idsite)
            .copied()
            .or(self.policy.timeout_seconds)
    }

    fn is_this_host(&self, host: &str) -> bool {
        self.host.as_deref() == Some(host)
    }

    fn is_shared(&self, host: &str) -> bool {
        self.shared_host_names.iter().any(|h| h == host)
    }

    fn has_live_reaper(&self, r: &Registration) -> bool {
        let machine = Machine::of(r);
        self.machines_with_live_reaper.contains(&machine)
    }

    /// Same host name, same boot, same pid namespace: its pids are our pids.
    pub fn is_this_machine(&self, r: &Registration) -> bool {
        r.host.is_some()
            && r.host == self.host
            && r.boot_id.is_some()
            && r.boot_id == self.boot_id
            && r.pid_namespace.is_some()
            && r.pid_namespace == self.pid_namespace
    }

    /// How far the row's claimed_at may be from the instant of the claim, had a session in
    /// `writer_zone` written it (None: an unknown writer, whose zone may be any).
    fn claim_time_uncertainty(&self, row: &ClaimFacts, writer_zone: Option<&str>) -> f64 {
        let zone = match writer_zone {
            Some(z) if Some(z) == row.claim_zone.as_deref() => 0.0,
            _ => TIME_ZONE_SPREAD_SECONDS,
        };
        let fold = if row.in_dst_fold {
            DST_FOLD_SECONDS
        } else {
            0.0
        };
        REUSE_MARGIN_SECONDS + self.clock_uncertainty + zone + fold
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

/// What became of one registration of the owner.
#[derive(Debug, Clone, Copy, PartialEq)]
enum OwnerState {
    /// Local, and its very process runs (whatever its heartbeat says).
    RunningHere { heartbeat_fresh: bool },
    /// Elsewhere, and not watched silent for a full lease: it may be alive. `looks_alive`:
    /// seen beating, or its timestamp reads fresh (a hint for the verdict, not a proof).
    NotProvenStale { looks_alive: bool },
    /// Local and its process is gone or its pid names a later process.
    DeadHere(Reason),
    /// Elsewhere, watched silent for a full lease.
    StaleElsewhere,
}

impl OwnerState {
    /// Alive (Some(true)), dead (Some(false)), or nothing proven either way (None).
    fn alive(&self) -> Option<bool> {
        match self {
            OwnerState::RunningHere { .. } | OwnerState::NotProvenStale { looks_alive: true } => {
                Some(true)
            }
            OwnerState::NotProvenStale { looks_alive: false } => None,
            OwnerState::DeadHere(_) | OwnerState::StaleElsewhere => Some(false),
        }
    }
}

fn owner_state(r: &Registration, pid: u32, local: &impl LocalView, ctx: &Context) -> OwnerState {
    let by_watch = || {
        if r.is_stale(ctx) {
            OwnerState::StaleElsewhere
        } else {
            OwnerState::NotProvenStale {
                looks_alive: r.looks_alive(ctx),
            }
        }
    };
    if !ctx.is_this_machine(r) {
        return by_watch();
    }
    match local.process(pid) {
        LocalProcess::Running { start_ticks, .. } if Some(start_ticks) == r.start_ticks => {
            OwnerState::RunningHere {
                heartbeat_fresh: r.looks_alive(ctx),
            }
        }
        LocalProcess::Running { .. } => OwnerState::DeadHere(Reason::PidReused),
        LocalProcess::Gone => OwnerState::DeadHere(Reason::PidGone),
        // Cannot look: fall back on the watch, as for a process elsewhere.
        LocalProcess::Unreadable => by_watch(),
    }
}

/// The liveness verdict alone (what `in_progress()` shows): no timeout, no declared hosts.
/// `registrations` are those of the row's host (the caller narrows by host; this function
/// picks the owner's and its children's).
pub fn liveness(
    row: &ClaimFacts,
    registrations: &[Registration],
    local: &impl LocalView,
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
    let of_host = |r: &&Registration| r.host.as_deref() == Some(host);
    let this_host = ctx.is_this_host(host);

    // 0. A child working for the owner keeps the claim alive.
    let children_unseen = if this_host {
        match local.has_child_working_for(pid) {
            Some(true) => return Decision::of(Alive, ChildWorking),
            Some(false) => false,
            None => true,
        }
    } else {
        false
    };
    // A batch-of-one child that has not registered yet may be working for this owner: nothing
    // on its command line or in the registry says for whom.
    // Asked only where a local death is about to be declared (it reads /proc).
    let child_unattributed = || {
        this_host
            && local.unnamed_children().iter().any(|child| {
                !registrations
                    .iter()
                    .any(|r| r.pid == *child && ctx.is_this_machine(r))
            })
    };
    // A death seen here proves nothing where a child may work unseen, or where another pid
    // namespace uses the host name (the row may be a process's there, with the same pid).
    let local_death = |reason: Reason| {
        if children_unseen {
            Decision::of(Unknown, ProcUnreadable)
        } else if child_unattributed() {
            Decision::of(Unknown, UnregisteredChild)
        } else if ctx.is_shared(host) {
            Decision::of(Unknown, HostNameShared)
        } else {
            Decision::of(Dead, reason)
        }
    };
    let children: Vec<Option<bool>> = registrations
        .iter()
        .filter(of_host)
        .filter(|r| r.works_for == Some(pid))
        .map(|r| owner_state(r, r.pid, local, ctx).alive())
        .collect();
    if children.contains(&Some(true)) {
        return Decision::of(Alive, ChildWorking);
    }
    // A child whose silence is not proven yet may still be working.
    let child_undecided = children.contains(&None);

    // 1. Registered owner.
    let owners: Vec<(&Registration, OwnerState)> = registrations
        .iter()
        .filter(of_host)
        .filter(|r| r.pid == pid)
        .map(|r| (r, owner_state(r, pid, local, ctx)))
        .collect();
    for (_, state) in &owners {
        match state {
            OwnerState::RunningHere {
                heartbeat_fresh: true,
            }
            | OwnerState::NotProvenStale { looks_alive: true } => {
                return Decision::of(Alive, HeartbeatFresh)
            }
            // Its process runs: only its heartbeat failed.
            OwnerState::RunningHere {
                heartbeat_fresh: false,
            } => return Decision::of(Alive, PidAlive),
            OwnerState::NotProvenStale { looks_alive: false }
            | OwnerState::DeadHere(_)
            | OwnerState::StaleElsewhere => {}
        }
    }
    if child_undecided
        || owners
            .iter()
            .any(|(_, s)| *s == OwnerState::NotProvenStale { looks_alive: false })
    {
        return Decision::of(Unknown, NotWatchedLongEnough);
    }
    // Every registration is dead; those that speak for this row were alive when it was claimed:
    // a registered process registers before its first claim and claims only within its lease
    // after a beat, so its rows, read in its zone, lie between the two. A row outside was
    // written by another process with that pid (or in another zone), and is judged as such.
    let speaking: Vec<&(&Registration, OwnerState)> = owners
        .iter()
        .filter(|(r, _)| {
            let uncertainty = ctx.claim_time_uncertainty(row, r.time_zone.as_deref());
            claimed_at + uncertainty >= r.registered_at
                && claimed_at + uncertainty <= r.last_heartbeat + r.claims_within(ctx)
        })
        .collect();
    if !speaking.is_empty() {
        let dead_here = speaking.iter().find_map(|(r, s)| match s {
            OwnerState::DeadHere(reason) => Some((*r, *reason)),
            _ => None,
        });
        match dead_here {
            Some((_, PidGone)) => return local_death(PidGone),
            Some((owner, _)) => {
                // The pid names a later process than the registered owner (its start ticks
                // differ: the kernel's own frame). Had that later process claimed the row
                // itself, the claim would be younger than its start. The row speaks for the
                // registration, so it was written in the zone the registration recorded: read
                // in that zone, a claim older than the later process's start is the dead one's.
                if let LocalProcess::Running { started_at, .. } = local.process(pid) {
                    let uncertainty = ctx.claim_time_uncertainty(row, owner.time_zone.as_deref());
                    if started_at + ctx.clock_offset > claimed_at + uncertainty {
                        return local_death(PidReused);
                    }
                }
                // The later process may have claimed it: judge it as unregistered, below.
            }
            None => {
                if speaking.iter().any(|(r, _)| ctx.has_live_reaper(r)) {
                    return Decision::of(Unknown, OwnerHostAlive);
                }
                if ctx.is_shared(host) {
                    return Decision::of(Unknown, HostNameShared);
                }
                return Decision::of(Dead, HeartbeatStale);
            }
        }
    }

    // 2. Unregistered owner.
    if !this_host {
        return Decision::of(Unknown, RemoteUnregistered);
    }
    if ctx.is_shared(host) {
        return Decision::of(Unknown, HostNameShared);
    }
    match local.process(pid) {
        LocalProcess::Gone => local_death(PidGone),
        LocalProcess::Running { started_at, .. } => {
            let uncertainty = ctx.claim_time_uncertainty(row, None);
            if started_at + ctx.clock_offset > claimed_at + uncertainty {
                local_death(PidReused)
            } else {
                Decision::of(Alive, PidAlive)
            }
        }
        LocalProcess::Unreadable => Decision::of(Unknown, ProcUnreadable),
    }
}

/// The full reaping decision: liveness, then an operator's declaration, then the timeout.
pub fn decide(
    row: &ClaimFacts,
    registrations: &[Registration],
    local: &impl LocalView,
    ctx: &Context,
) -> Decision {
    let verdict = liveness(row, registrations, local, ctx);
    if verdict.release() || verdict.reason == Reason::NeverStarted {
        return verdict;
    }
    if let Some(host) = &row.host {
        if ctx.policy.hosts_declared_dead.iter().any(|h| h == host) {
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

    const NOW: f64 = 1_800_000_100.0;
    const CLAIMED: f64 = 1_800_000_000.0;
    const TICKS: u64 = 5_000;

    fn ctx() -> Context {
        Context {
            host: Some("server1".into()),
            boot_id: Some("boot-a".into()),
            pid_namespace: Some(4026531836),
            now: NOW,
            database_started_at: NOW - 86400.0,
            clock_offset: 0.0,
            clock_uncertainty: 0.001,
            shared_host_names: Vec::new(),
            machines_with_live_reaper: Vec::new(),
            policy: Policy {
                timeout_seconds: Some(86400),
                ..Policy::proof_only(60.0)
            },
        }
    }

    fn row(host: &str, pid: &str) -> ClaimFacts {
        ClaimFacts {
            idsite: 1,
            host: Some(host.into()),
            process_id: Some(pid.into()),
            claimed_at: Some(CLAIMED),
            in_dst_fold: false,
            claim_zone: Some("SYSTEM".into()),
            age_seconds: Some(100),
        }
    }

    /// Process 100 on server1 (this machine), registered before the claim, last beat
    /// `heartbeat_age` seconds ago.
    fn registration(heartbeat_age: f64) -> Registration {
        Registration {
            idprocess: 1,
            host: Some("server1".into()),
            pid: 100,
            boot_id: Some("boot-a".into()),
            pid_namespace: Some(4026531836),
            start_ticks: Some(TICKS),
            time_zone: Some("SYSTEM".into()),
            works_for: None,
            reaps: true,
            // Registered before its claim and before its last beat.
            registered_at: (NOW - heartbeat_age).min(CLAIMED) - 50.0,
            last_heartbeat: NOW - heartbeat_age,
            lease_seconds: None,
            token: BeatToken::new(Some(7), NOW - heartbeat_age),
            // A watcher that has watched all along saw it last change at its last beat.
            silence: Silence::Watched {
                unchanged_for: heartbeat_age,
                saw_beat: true,
            },
        }
    }

    fn on(host: &str, mut r: Registration) -> Registration {
        r.host = Some(host.into());
        r.boot_id = Some(format!("boot-of-{host}"));
        r
    }

    /// A machine seen through fixed answers.
    struct Procs {
        processes: HashMap<u32, LocalProcess>,
        children_of: Vec<u32>,
        /// /proc hides other users' processes.
        hidden: bool,
    }

    impl LocalView for Procs {
        fn process(&self, pid: u32) -> LocalProcess {
            self.processes
                .get(&pid)
                .copied()
                .unwrap_or(LocalProcess::Gone)
        }
        fn has_child_working_for(&self, owner: u32) -> Option<bool> {
            if self.hidden {
                return None;
            }
            Some(self.children_of.contains(&owner))
        }
    }

    fn nothing_runs() -> Procs {
        Procs {
            processes: HashMap::new(),
            children_of: Vec::new(),
            hidden: false,
        }
    }

    /// Pid 100 runs, started at `started_at` (our clock) with `start_ticks`.
    fn pid_100(start_ticks: u64, started_at: f64) -> Procs {
        Procs {
            processes: HashMap::from([(
                100,
                LocalProcess::Running {
                    start_ticks,
                    started_at,
                },
            )]),
            children_of: Vec::new(),
            hidden: false,
        }
    }

    /// The registered process 100 itself.
    fn owner_runs() -> Procs {
        pid_100(TICKS, CLAIMED - 100.0)
    }

    fn check(d: Decision, verdict: Verdict, reason: Reason) {
        assert_eq!((d.verdict, d.reason), (verdict, reason));
    }

    // --- registered owners on this machine: the kernel's frame ---------------------------

    #[test]
    fn a_registered_local_owner_that_runs_is_alive() {
        let d = decide(
            &row("server1", "100"),
            &[registration(2.0)],
            &owner_runs(),
            &ctx(),
        );
        check(d, Verdict::Alive, Reason::HeartbeatFresh);
    }

    #[test]
    fn a_registered_local_owner_whose_pid_is_gone_is_dead_despite_a_fresh_heartbeat() {
        let d = decide(
            &row("server1", "100"),
            &[registration(2.0)],
            &nothing_runs(),
            &ctx(),
        );
        check(d, Verdict::Dead, Reason::PidGone);
    }

    #[test]
    fn a_registered_local_owner_whose_pid_names_a_process_started_after_the_claim_is_dead() {
        // Killed with -9 after its claim; a later process got its pid (other start ticks: the
        // kernel's frame). The row speaks for the registration, so it was written in the zone
        // the registration recorded: a process that started after it cannot have claimed it.
        let later = pid_100(TICKS + 20_000, CLAIMED + 5.0);
        let d = decide(&row("server1", "100"), &[registration(2.0)], &later, &ctx());
        check(d, Verdict::Dead, Reason::PidReused);
    }

    #[test]
    fn a_row_claimed_before_the_registration_is_not_the_registered_owners() {
        // A stock process with the pid claimed after a SET GLOBAL time_zone five hours back:
        // read in the dead owner's zone its claim predates the owner's registration, so the
        // registration does not speak for it, and the process holding the pid (started
        // seconds ago, no proof against a zone) keeps it.
        let mut row = row("server1", "100");
        row.claimed_at = Some(CLAIMED - 5.0 * 3600.0);
        let later = pid_100(TICKS + 20_000, CLAIMED + 5.0);
        let d = decide(&row, &[registration(2.0)], &later, &ctx());
        check(d, Verdict::Alive, Reason::PidAlive);
    }

    #[test]
    fn a_later_process_that_started_before_the_claim_may_have_made_it_and_keeps_it() {
        // The pid went to a later process that started before the row's claim time: it may
        // have claimed the row itself (a stock claimer), so the row is judged as its.
        let later = pid_100(TICKS + 20_000, CLAIMED - 1.0);
        let d = decide(&row("server1", "100"), &[registration(2.0)], &later, &ctx());
        check(d, Verdict::Alive, Reason::PidAlive);
        // Read in another zone than the registration's, the claim time proves nothing.
        let mut other_zone = row("server1", "100");
        other_zone.claim_zone = Some("+05:00".into());
        let just_after = pid_100(TICKS + 20_000, CLAIMED + 5.0);
        let d = decide(&other_zone, &[registration(2.0)], &just_after, &ctx());
        check(d, Verdict::Alive, Reason::PidAlive);
    }

    #[test]
    fn a_clock_step_cannot_fake_a_reuse_of_a_registered_owner() {
        // The wall clock jumped: /proc's boot time moved, so the owner's start reads days
        // later than it was. Its start ticks did not change: it is the same process.
        let stepped = pid_100(TICKS, CLAIMED + 5.0 * 86400.0);
        let d = decide(
            &row("server1", "100"),
            &[registration(2.0)],
            &stepped,
            &ctx(),
        );
        check(d, Verdict::Alive, Reason::HeartbeatFresh);
        let mut c = ctx();
        c.clock_offset = -86400.0;
        check(
            decide(&row("server1", "100"), &[registration(2.0)], &stepped, &c),
            Verdict::Alive,
            Reason::HeartbeatFresh,
        );
    }

    #[test]
    fn a_local_owner_whose_heartbeat_failed_but_whose_process_runs_is_alive() {
        let d = decide(
            &row("server1", "100"),
            &[registration(600.0)],
            &owner_runs(),
            &ctx(),
        );
        check(d, Verdict::Alive, Reason::PidAlive);
    }

    #[test]
    fn a_local_registered_owner_with_an_unreadable_proc_is_judged_by_its_heartbeat() {
        let hidden = Procs {
            processes: HashMap::from([(100, LocalProcess::Unreadable)]),
            children_of: Vec::new(),
            hidden: false,
        };
        let d = decide(
            &row("server1", "100"),
            &[registration(1.0)],
            &hidden,
            &ctx(),
        );
        check(d, Verdict::Alive, Reason::HeartbeatFresh);
        let d = decide(
            &row("server1", "100"),
            &[registration(100.0)],
            &hidden,
            &ctx(),
        );
        check(d, Verdict::Dead, Reason::HeartbeatStale);
    }

    #[test]
    fn a_process_that_beats_less_often_is_judged_by_its_own_longer_lease() {
        // Its beat 100 s ago is stale under the reaper's 60 s lease, not under its own 300 s.
        let hidden = Procs {
            processes: HashMap::from([(100, LocalProcess::Unreadable)]),
            children_of: Vec::new(),
            hidden: false,
        };
        let own = |lease: Option<f64>| Registration {
            lease_seconds: lease,
            ..registration(100.0)
        };
        let d = decide(&row("server1", "100"), &[own(Some(300.0))], &hidden, &ctx());
        check(d, Verdict::Alive, Reason::HeartbeatFresh);
        // A shorter own lease (or none recorded) never shortens the reaper's.
        for lease in [Some(30.0), None, Some(f64::NAN)] {
            let d = decide(&row("server1", "100"), &[own(lease)], &hidden, &ctx());
            check(d, Verdict::Dead, Reason::HeartbeatStale);
        }
    }

    // --- a stale registration and a later process with its pid (case: pid reuse) ----------

    #[test]
    fn a_dead_registration_does_not_speak_for_a_claim_made_after_its_life() {
        // Process 100 registered and died an hour ago; a stock php-fpm worker got pid 100
        // and claimed just now. That live claim is not the dead registration's.
        let mut dead = registration(3600.0);
        dead.registered_at = NOW - 7200.0;
        let mut r = row("server1", "100");
        r.claimed_at = Some(NOW - 5.0);
        let stock = pid_100(TICKS + 300_000, NOW - 600.0);
        check(
            decide(&r, &[dead], &stock, &ctx()),
            Verdict::Alive,
            Reason::PidAlive,
        );
    }

    #[test]
    fn a_later_process_that_may_have_claimed_keeps_the_row_even_within_the_lease() {
        // Killed 10 s after its last beat; pid 100 went to a stock process that claimed at
        // once: the row is within the dead registration's lease window, but the process now
        // holding the pid started before the claim, so it may be the claimer.
        let dead = registration(30.0);
        let mut r = row("server1", "100");
        r.claimed_at = Some(NOW - 15.0);
        let stock = pid_100(TICKS + 1_000, NOW - 20.0);
        check(
            decide(&r, std::slice::from_ref(&dead), &stock, &ctx()),
            Verdict::Alive,
            Reason::PidAlive,
        );
        // Once that process is gone too, whoever claimed is dead.
        check(
            decide(&r, &[dead], &nothing_runs(), &ctx()),
            Verdict::Dead,
            Reason::PidGone,
        );
    }

    #[test]
    fn a_registered_remote_owner_with_a_fresh_heartbeat_is_alive() {
        let d = decide(
            &row("server2", "100"),
            &[on("server2", registration(59.0))],
            &nothing_runs(),
            &ctx(),
        );
        check(d, Verdict::Alive, Reason::HeartbeatFresh);
    }

    #[test]
    fn every_heartbeat_older_than_the_lease_of_a_silent_host_is_death() {
        let regs = [
            on("server2", registration(61.0)),
            on("server2", registration(600.0)),
        ];
        check(
            decide(&row("server2", "100"), &regs, &nothing_runs(), &ctx()),
            Verdict::Dead,
            Reason::HeartbeatStale,
        );
        for (age, verdict) in [(60.0, Verdict::Dead), (59.9, Verdict::Alive)] {
            let d = decide(
                &row("server2", "100"),
                &[on("server2", registration(age))],
                &nothing_runs(),
                &ctx(),
            );
            assert_eq!(d.verdict, verdict, "heartbeat {age} s old, lease 60 s");
        }
    }

    #[test]
    fn an_old_heartbeat_is_no_proof_until_a_watch_has_seen_it_unchanged_for_a_lease() {
        // After a failover or an outage that hit everyone, every heartbeat reads old while
        // every archiver is alive: a reaper that just (re)connected has watched nothing.
        let mut after_outage = on("server2", registration(100.0));
        after_outage.silence = Silence::NotWatched;
        let decided = |r: &Registration| {
            decide(
                &row("server2", "100"),
                std::slice::from_ref(r),
                &nothing_runs(),
                &ctx(),
            )
        };
        check(
            decided(&after_outage),
            Verdict::Unknown,
            Reason::NotWatchedLongEnough,
        );
        // Watched, but for less than a lease.
        after_outage.silence = Silence::Watched {
            unchanged_for: 59.0,
            saw_beat: false,
        };
        check(
            decided(&after_outage),
            Verdict::Unknown,
            Reason::NotWatchedLongEnough,
        );
        after_outage.silence = Silence::Watched {
            unchanged_for: 60.0,
            saw_beat: false,
        };
        check(
            decided(&after_outage),
            Verdict::Dead,
            Reason::HeartbeatStale,
        );
    }

    #[test]
    fn no_database_clock_makes_a_watched_heartbeat_stale_or_fresh() {
        // A reaper on a cluster node whose clock runs 90 s ahead reads every heartbeat 90 s
        // older: it still beats, so it is alive.
        let mut beating = on("server2", registration(2.0));
        let mut ahead = ctx();
        ahead.now = NOW + 90.0;
        check(
            decide(
                &row("server2", "100"),
                &[beating.clone()],
                &nothing_runs(),
                &ahead,
            ),
            Verdict::Alive,
            Reason::HeartbeatFresh,
        );
        // A node 90 s behind reads a dead owner's last beat as fresh: the watch decides.
        beating.last_heartbeat = NOW + 85.0;
        beating.silence = Silence::Watched {
            unchanged_for: 61.0,
            saw_beat: true,
        };
        check(
            decide(&row("server2", "100"), &[beating], &nothing_runs(), &ctx()),
            Verdict::Dead,
            Reason::HeartbeatStale,
        );
    }

    #[test]
    fn a_stale_owner_on_a_host_that_still_reaps_is_left_to_that_host() {
        let stale = on("server2", registration(120.0));
        let mut c = ctx();
        c.machines_with_live_reaper = vec![Machine::of(&stale)];
        check(
            decide(&row("server2", "100"), &[stale], &nothing_runs(), &c),
            Verdict::Unknown,
            Reason::OwnerHostAlive,
        );
    }

    #[test]
    fn one_fresh_registration_among_stale_ones_keeps_the_row() {
        let regs = [
            on("server2", registration(500.0)),
            on("server2", registration(3.0)),
        ];
        check(
            decide(&row("server2", "100"), &regs, &nothing_runs(), &ctx()),
            Verdict::Alive,
            Reason::HeartbeatFresh,
        );
    }

    #[test]
    fn a_stale_registration_speaks_only_for_claims_within_a_lease_of_its_last_beat() {
        let stale = on("server2", registration(600.0));
        // Claimed 30 s after its last beat: a self-fencing process may have made that claim.
        let mut r = row("server2", "100");
        r.claimed_at = Some(stale.last_heartbeat + 30.0);
        check(
            decide(&r, std::slice::from_ref(&stale), &nothing_runs(), &ctx()),
            Verdict::Dead,
            Reason::HeartbeatStale,
        );
        // Claimed five minutes after it went silent: not its claim.
        r.claimed_at = Some(stale.last_heartbeat + 300.0);
        check(
            decide(&r, &[stale], &nothing_runs(), &ctx()),
            Verdict::Unknown,
            Reason::RemoteUnregistered,
        );
    }

    #[test]
    fn a_stale_registration_speaks_only_within_its_own_lease_when_that_is_shorter() {
        // It kept a 10 s lease, so it made no claim 30 s after its last beat: a later process
        // with its pid (a stock claimer) did, though the reaper's 60 s window would take it in.
        let mut stale = on("server2", registration(600.0));
        stale.lease_seconds = Some(10.0);
        let mut r = row("server2", "100");
        r.claimed_at = Some(stale.last_heartbeat + 30.0);
        check(
            decide(&r, std::slice::from_ref(&stale), &nothing_runs(), &ctx()),
            Verdict::Unknown,
            Reason::RemoteUnregistered,
        );
        r.claimed_at = Some(stale.last_heartbeat + 5.0);
        check(
            decide(&r, &[stale], &nothing_runs(), &ctx()),
            Verdict::Dead,
            Reason::HeartbeatStale,
        );
    }

    #[test]
    fn a_claim_is_laid_to_a_dead_registration_only_when_no_time_zone_or_dst_fold_can_move_it() {
        let stale = on("server2", registration(600.0));
        let mut r = row("server2", "100");
        r.claimed_at = Some(stale.last_heartbeat + 30.0);
        // In a DST fold the claim may have been an hour later: perhaps after its life.
        r.in_dst_fold = true;
        check(
            decide(&r, std::slice::from_ref(&stale), &nothing_runs(), &ctx()),
            Verdict::Unknown,
            Reason::RemoteUnregistered,
        );
        // Read in another zone than its writer's (say its tables could not convert it): the same.
        r.in_dst_fold = false;
        let mut other_zone = stale;
        other_zone.time_zone = Some("+01:00".into());
        check(
            decide(&r, &[other_zone], &nothing_runs(), &ctx()),
            Verdict::Unknown,
            Reason::RemoteUnregistered,
        );
    }

    #[test]
    fn the_same_host_name_in_another_boot_or_pid_namespace_is_not_this_machine() {
        let mut other_ns = registration(1.0);
        other_ns.pid_namespace = Some(1);
        check(
            decide(&row("server1", "100"), &[other_ns], &nothing_runs(), &ctx()),
            Verdict::Alive,
            Reason::HeartbeatFresh,
        );
        let mut other_boot = registration(1.0);
        other_boot.boot_id = Some("boot-b".into());
        check(
            decide(
                &row("server1", "100"),
                &[other_boot],
                &nothing_runs(),
                &ctx(),
            ),
            Verdict::Alive,
            Reason::HeartbeatFresh,
        );
    }

    // --- work in a child ---------------------------------------------------------------

    #[test]
    fn a_local_archiving_child_keeps_the_claim_of_a_dead_parent() {
        let children = Procs {
            processes: HashMap::new(),
            children_of: vec![100],
            hidden: false,
        };
        for regs in [vec![], vec![registration(2.0)], vec![registration(600.0)]] {
            check(
                decide(&row("server1", "100"), &regs, &children, &ctx()),
                Verdict::Alive,
                Reason::ChildWorking,
            );
        }
        // Children of another owner do not count.
        let others = Procs {
            processes: HashMap::new(),
            children_of: vec![101],
            hidden: false,
        };
        check(
            decide(&row("server1", "100"), &[], &others, &ctx()),
            Verdict::Dead,
            Reason::PidGone,
        );
    }

    #[test]
    fn a_registered_child_elsewhere_keeps_the_claim_while_it_heartbeats() {
        // The parent claimed 100 s ago and went silent 90 s ago.
        let parent = on("server2", registration(90.0));
        let mut child = on("server2", registration(1.0));
        child.pid = 200;
        child.works_for = Some(100);
        check(
            decide(
                &row("server2", "100"),
                &[parent.clone(), child.clone()],
                &nothing_runs(),
                &ctx(),
            ),
            Verdict::Alive,
            Reason::ChildWorking,
        );
        child.last_heartbeat = NOW - 600.0;
        child.silence = Silence::Watched {
            unchanged_for: 600.0,
            saw_beat: true,
        };
        check(
            decide(
                &row("server2", "100"),
                &[parent, child],
                &nothing_runs(),
                &ctx(),
            ),
            Verdict::Dead,
            Reason::HeartbeatStale,
        );
    }

    #[test]
    fn a_batch_of_one_child_not_yet_registered_keeps_a_local_death_unproven() {
        struct WithUnnamedChild(Procs);
        impl LocalView for WithUnnamedChild {
            fn process(&self, pid: u32) -> LocalProcess {
                self.0.process(pid)
            }
            fn has_child_working_for(&self, owner: u32) -> Option<bool> {
                self.0.has_child_working_for(owner)
            }
            fn unnamed_children(&self) -> &[u32] {
                &[300]
            }
        }
        let local = WithUnnamedChild(nothing_runs());
        let d = decide(&row("server1", "100"), &[registration(2.0)], &local, &ctx());
        check(d, Verdict::Unknown, Reason::UnregisteredChild);
        // Once it registers, its registration says whom it works for: not this owner.
        let mut child = registration(1.0);
        child.idprocess = 2;
        child.pid = 300;
        child.works_for = Some(999);
        let d = decide(
            &row("server1", "100"),
            &[registration(2.0), child],
            &local,
            &ctx(),
        );
        check(d, Verdict::Dead, Reason::PidGone);
    }

    // --- unregistered owners --------------------------------------------------------------

    #[test]
    fn an_unregistered_local_owner_whose_pid_is_gone_is_dead() {
        check(
            decide(&row("server1", "100"), &[], &nothing_runs(), &ctx()),
            Verdict::Dead,
            Reason::PidGone,
        );
    }

    #[test]
    fn an_unregistered_local_owner_that_runs_since_before_the_claim_is_alive() {
        let d = decide(
            &row("server1", "100"),
            &[],
            &pid_100(1, CLAIMED - 3600.0),
            &ctx(),
        );
        check(d, Verdict::Alive, Reason::PidAlive);
    }

    #[test]
    fn an_unknown_writers_claim_proves_reuse_only_beyond_any_time_zone() {
        // ts_started of a stock claimer may be off by a time-zone change (SET GLOBAL
        // time_zone) between its session and ours: an hour later proves nothing.
        for later in [3600.0, 5.0 * 3600.0, TIME_ZONE_SPREAD_SECONDS] {
            let d = decide(
                &row("server1", "100"),
                &[],
                &pid_100(1, CLAIMED + later),
                &ctx(),
            );
            check(d, Verdict::Alive, Reason::PidAlive);
        }
        let d = decide(
            &row("server1", "100"),
            &[],
            &pid_100(1, CLAIMED + TIME_ZONE_SPREAD_SECONDS + 10.0),
            &ctx(),
        );
        check(d, Verdict::Dead, Reason::PidReused);
    }

    #[test]
    fn the_clock_offset_to_the_database_is_applied() {
        // Our clock is a day behind the database's: a process that started a day "before"
        // the claim by our clock started with it on the database's.
        let mut c = ctx();
        c.clock_offset = 86400.0;
        let d = decide(
            &row("server1", "100"),
            &[],
            &pid_100(1, CLAIMED - 86400.0 + TIME_ZONE_SPREAD_SECONDS + 10.0),
            &c,
        );
        check(d, Verdict::Dead, Reason::PidReused);
        let d = decide(
            &row("server1", "100"),
            &[],
            &pid_100(1, CLAIMED - 86400.0),
            &c,
        );
        check(d, Verdict::Alive, Reason::PidAlive);
    }

    #[test]
    fn pids_of_a_shared_host_name_prove_nothing() {
        let mut c = ctx();
        c.shared_host_names = vec!["server1".into()];
        check(
            decide(&row("server1", "100"), &[], &nothing_runs(), &c),
            Verdict::Unknown,
            Reason::HostNameShared,
        );
        // Nor does a registration's death: the row may be a process's of another namespace
        // that holds the same pid there. Its life still speaks.
        check(
            decide(
                &row("server1", "100"),
                &[registration(1.0)],
                &nothing_runs(),
                &c,
            ),
            Verdict::Unknown,
            Reason::HostNameShared,
        );
        check(
            decide(
                &row("server1", "100"),
                &[registration(1.0)],
                &owner_runs(),
                &c,
            ),
            Verdict::Alive,
            Reason::HeartbeatFresh,
        );
        c.shared_host_names.push("server2".into());
        check(
            decide(
                &row("server2", "100"),
                &[on("server2", registration(90.0))],
                &nothing_runs(),
                &c,
            ),
            Verdict::Unknown,
            Reason::HostNameShared,
        );
    }

    #[test]
    fn a_death_seen_through_a_proc_that_hides_other_users_proves_nothing() {
        let hidden = Procs {
            processes: HashMap::new(),
            children_of: Vec::new(),
            hidden: true,
        };
        check(
            decide(&row("server1", "100"), &[], &hidden, &ctx()),
            Verdict::Unknown,
            Reason::ProcUnreadable,
        );
        check(
            decide(
                &row("server1", "100"),
                &[registration(1.0)],
                &hidden,
                &ctx(),
            ),
            Verdict::Unknown,
            Reason::ProcUnreadable,
        );
    }

    #[test]
    fn an_unregistered_remote_owner_is_unknown_and_kept_until_the_timeout() {
        check(
            decide(&row("server2", "100"), &[], &nothing_runs(), &ctx()),
            Verdict::Unknown,
            Reason::RemoteUnregistered,
        );
        let mut old = row("server2", "100");
        old.age_seconds = Some(86401);
        check(
            decide(&old, &[], &nothing_runs(), &ctx()),
            Verdict::Dead,
            Reason::Timeout,
        );
    }

    #[test]
    fn unreadable_proc_is_no_proof() {
        let hidden = Procs {
            processes: HashMap::from([(100, LocalProcess::Unreadable)]),
            children_of: Vec::new(),
            hidden: false,
        };
        check(
            decide(&row("server1", "100"), &[], &hidden, &ctx()),
            Verdict::Unknown,
            Reason::ProcUnreadable,
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
            let d = decide(&row("server1", pid), &[], &nothing_runs(), &ctx());
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
            decide(&r, &[], &nothing_runs(), &ctx()),
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
        c.policy.hosts_declared_dead = vec!["server2".into()];
        check(
            decide(&r, &[], &nothing_runs(), &c),
            Verdict::Unknown,
            Reason::NeverStarted,
        );
    }

    #[test]
    fn a_declared_dead_host_is_released() {
        let mut c = ctx();
        c.policy.hosts_declared_dead = vec!["server2".into()];
        check(
            decide(&row("server2", "100"), &[], &nothing_runs(), &c),
            Verdict::Dead,
            Reason::HostDeclaredDead,
        );
        check(
            decide(&row("server3", "100"), &[], &nothing_runs(), &c),
            Verdict::Unknown,
            Reason::RemoteUnregistered,
        );
    }

    #[test]
    fn the_timeout_backstop_overrides_alive_and_has_per_site_overrides() {
        let mut old = row("server1", "100");
        old.age_seconds = Some(90000);
        let runs = pid_100(1, CLAIMED - 10.0);
        check(
            decide(&old, &[], &runs, &ctx()),
            Verdict::Dead,
            Reason::Timeout,
        );
        let mut c = ctx();
        c.policy.site_timeouts.insert(1, 100_000);
        check(
            decide(&old, &[], &runs, &c),
            Verdict::Alive,
            Reason::PidAlive,
        );
        c.policy.site_timeouts.insert(1, 60);
        let mut young = row("server2", "100");
        young.age_seconds = Some(61);
        check(
            decide(&young, &[], &nothing_runs(), &c),
            Verdict::Dead,
            Reason::Timeout,
        );
        young.age_seconds = Some(60);
        check(
            decide(&young, &[], &nothing_runs(), &c),
            Verdict::Unknown,
            Reason::RemoteUnregistered,
        );
    }

    #[test]
    fn without_a_timeout_only_proof_releases() {
        let mut c = ctx();
        c.policy.timeout_seconds = None;
        let mut old = row("server2", "100");
        old.age_seconds = Some(10_000_000);
        check(
            decide(&old, &[], &nothing_runs(), &c),
            Verdict::Unknown,
            Reason::RemoteUnregistered,
        );
    }

    #[test]
    fn proof_of_death_is_reported_before_the_timeout() {
        let mut old = row("server1", "100");
        old.age_seconds = Some(90000);
        check(
            decide(&old, &[], &nothing_runs(), &ctx()),
            Verdict::Dead,
            Reason::PidGone,
        );
    }

    #[test]
    fn liveness_alone_ignores_policy() {
        let mut old = row("server2", "100");
        old.age_seconds = Some(90000);
        let mut c = ctx();
        c.policy.hosts_declared_dead = vec!["server2".into()];
        check(
            liveness(&old, &[], &nothing_runs(), &c),
            Verdict::Unknown,
            Reason::RemoteUnregistered,
        );
    }
}

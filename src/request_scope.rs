//! The request is the unit of work (design §4): claims a request leaves behind are released when
//! it ends, in php-fpm and CLI alike, and a later request in the same worker is a new owner.
//!
//! Why: in php-fpm the worker outlives a request that died (fatal error, `exit`,
//! `max_execution_time`, `memory_limit`). Its rows still name a live (host, pid), so no reaper
//! can ever prove them dead, and the next request in that worker would pass the (host, pid)
//! fence of `complete_invalidations()`. PHP runs every extension's request shutdown (RSHUTDOWN)
//! after all of those, so that is where the request's claims are given back.
//!
//! What is remembered, per process and per database (connection settings):
//! - `claimed`: ids this request claimed (or may have: a claim that failed with an error may have
//!   committed before the connection died) and has not completed or released yet;
//! - `leftover`: ids of earlier requests whose release at request end failed (database down).
//!   They are retried at the end of every later request of this process. A later successful
//!   claim of the same id removes it there: that claim is the newer one and is not a leftover.
//!
//! `complete_invalidations()` and `release_invalidations()` act only on ids in `claimed`: rows
//! under this host and pid that an earlier request left behind are not this request's to finish.
//!
//! Fork safety: the state carries the pid that built it. A `pcntl_fork` child inherits its
//! parent's memory, but the parent's claims are not the child's: in a child the inherited state
//! is dropped unused (never released), and the child remembers only its own claims. (The
//! database fence on (host, pid) would refuse the parent's rows anyway; this also avoids the
//! round trips.)
//!
//! One exception: while a Matomo archiving child of this process (`climulti:request ...
//! runid=<pid>`) still runs on this host, the claims are its work and are kept (see
//! [`end_request`]).
//!
//! Nothing here knows about PHP; `php_module` calls [`end_request`] from RSHUTDOWN. It never
//! panics and is bounded by the connection's connect/read/write timeouts: a connection error
//! stops the work for that database at once rather than waiting once per row.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use crate::config::DbConfig;
use crate::connection;
use crate::error::{errno, Error};
use crate::identity;
use crate::invalidations;

/// MySQL ER_BAD_DB_ERROR: the database named in the settings does not exist (any more).
const UNKNOWN_DATABASE: u16 = 1049;

/// What a claim attempt may have done to the row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// This call claimed the row.
    Won,
    /// The row was not queued; nothing changed.
    Lost,
    /// The call failed after it may have reached the server: the row may be ours.
    Unknown,
}

struct Group {
    config: Rc<DbConfig>,
    claimed: BTreeSet<i64>,
    leftover: BTreeSet<i64>,
}

impl Group {
    fn is_empty(&self) -> bool {
        self.claimed.is_empty() && self.leftover.is_empty()
    }
}

#[derive(Default)]
struct Scope {
    /// The process these claims belong to (0 before the first use).
    pid: u32,
    groups: Vec<Group>,
}

impl Scope {
    /// The group of `config`, created if missing (None cannot happen; it keeps this panic-free).
    fn group(&mut self, config: &Rc<DbConfig>) -> Option<&mut Group> {
        if let Some(i) = self.groups.iter().position(|g| *g.config == **config) {
            return self.groups.get_mut(i);
        }
        self.groups.push(Group {
            config: config.clone(),
            claimed: BTreeSet::new(),
            leftover: BTreeSet::new(),
        });
        self.groups.last_mut()
    }

    fn find(&self, config: &DbConfig) -> Option<&Group> {
        self.groups.iter().find(|g| *g.config == *config)
    }
}

thread_local! {
    static SCOPE: RefCell<Scope> = RefCell::new(Scope::default());
}

/// Runs `f` on this process's state; a state inherited through `fork` is dropped first (never
/// released: those claims are the parent's). None only while the thread is being torn down.
fn with_scope<R>(f: impl FnOnce(&mut Scope) -> R) -> Option<R> {
    SCOPE
        .try_with(|cell| {
            let mut scope = cell.try_borrow_mut().ok()?;
            let pid = std::process::id();
            if scope.pid != pid {
                // A fork child's copy of the parent's claims: forget it without acting on it.
                *scope = Scope {
                    pid,
                    groups: Vec::new(),
                };
            }
            Some(f(&mut scope))
        })
        .ok()
        .flatten()
}

/// Records the outcome of `claim_invalidation(id)` made with `config`.
pub fn claim_attempted(config: Option<Rc<DbConfig>>, id: i64, outcome: ClaimOutcome) {
    let Some(config) = config else {
        return; // never configured: nothing reached a database
    };
    with_scope(|scope| {
        let Some(group) = scope.group(&config) else {
            return;
        };
        match outcome {
            ClaimOutcome::Won => {
                // A claim of ours that an earlier request left is gone if we could claim the row.
                group.leftover.remove(&id);
                group.claimed.insert(id);
            }
            ClaimOutcome::Unknown => {
                group.claimed.insert(id);
            }
            ClaimOutcome::Lost => {}
        }
    });
}

/// The ids among `ids` this request claimed in the database of `config` (in the given order,
/// without repeats): the only ones `complete` and `release` may act on.
pub fn claimed_by_this_request(config: Option<&DbConfig>, ids: &[i64]) -> Vec<i64> {
    let Some(config) = config else {
        return Vec::new();
    };
    with_scope(|scope| {
        let Some(group) = scope.find(config) else {
            return Vec::new();
        };
        let mut seen = BTreeSet::new();
        ids.iter()
            .copied()
            .filter(|id| group.claimed.contains(id) && seen.insert(*id))
            .collect()
    })
    .unwrap_or_default()
}

/// `ids` were completed or released: the request holds them no more.
pub fn settled(config: Option<&DbConfig>, ids: &[i64]) {
    let Some(config) = config else {
        return;
    };
    with_scope(|scope| {
        if let Some(group) = scope.groups.iter_mut().find(|g| *g.config == *config) {
            for id in ids {
                group.claimed.remove(id);
            }
        }
        scope.groups.retain(|g| !g.is_empty());
    });
}

/// Ids held in `config`'s database: (this request's, earlier requests' left to retry).
pub fn held(config: &DbConfig) -> (Vec<i64>, Vec<i64>) {
    with_scope(|scope| {
        scope
            .find(config)
            .map(|g| {
                (
                    g.claimed.iter().copied().collect(),
                    g.leftover.iter().copied().collect(),
                )
            })
            .unwrap_or_default()
    })
    .unwrap_or_default()
}

/// What the end of a request did.
#[derive(Debug, Default)]
pub struct EndReport {
    /// Rows given back (re-queued, or deleted as duplicates).
    pub released: u64,
    /// Ids not given back because a Matomo archiving child of this process still works (kept
    /// for the end of the next request, or, once this process is gone, for the reaper).
    pub deferred: usize,
    /// Ids kept for a retry at the end of the next request, with why.
    pub failed: Vec<(usize, Error)>,
}

/// The request ends: gives back, with Matomo's release semantics and fenced on this host and
/// pid, every claim this request (and any earlier one whose release failed) did not finish.
/// Does nothing, and opens no connection, when there is nothing to give back.
pub fn end_request() -> EndReport {
    let mut report = EndReport::default();
    let Some(groups) = with_scope(|scope| std::mem::take(&mut scope.groups)) else {
        return report;
    };
    let groups: Vec<Group> = groups.into_iter().filter(|g| !g.is_empty()).collect();
    if groups.is_empty() {
        return report;
    }
    // Matomo's core:archive claims and has detached `climulti:request ... runid=<its pid>`
    // children do the archiving. Should its run end (even by a fatal error) while one still
    // works, the claim is alive (design §4, the process tree): releasing it would let another
    // archiver process the same archive at the same time. Keep it; the next request end
    // retries, and once this process is gone the reaper's process-tree rule decides.
    let me = std::process::id();
    let child_working = identity::archiving_children()
        .iter()
        .any(|(_, owner)| *owner == me);
    let mut keep = Vec::new();
    for mut group in groups {
        let ids: Vec<i64> = group.claimed.union(&group.leftover).copied().collect();
        if child_working {
            report.deferred += ids.len();
            group.leftover.extend(ids);
            group.claimed.clear();
            keep.push(group);
            continue;
        }
        match release_in(&group.config, &ids) {
            Ok(n) => report.released += n,
            Err(e) if nothing_left_to_release(&e) => {}
            Err(e) => {
                report.failed.push((ids.len(), e));
                group.leftover.extend(ids);
                group.claimed.clear();
                keep.push(group);
            }
        }
    }
    if !keep.is_empty() {
        with_scope(|scope| {
            // Nothing can have been added meanwhile (one thread); merge anyway, never lose ids.
            for group in keep {
                if let Some(into) = scope.group(&group.config) {
                    into.leftover.extend(group.leftover);
                }
            }
        });
    }
    report
}

/// Releases our claims among `ids` in the database of `config`: on the process's connection if
/// these are the current settings, else on a connection of its own (settings changed by
/// `configure()` after the claims were made), closed afterwards.
fn release_in(config: &Rc<DbConfig>, ids: &[i64]) -> Result<u64, Error> {
    let owner = invalidations::Owner::current();
    let current = connection::configured().is_some_and(|c| *c == **config);
    if current {
        let mut released = 0;
        connection::run("release at request end", |conn, config, _| {
            released += invalidations::release_owned(conn, config, ids, &owner)?;
            Ok(())
        })?;
        Ok(released)
    } else {
        let mut conn = connection::connect(config)?;
        invalidations::release_owned(&mut conn, config, ids, &owner)
            .map_err(|e| connection::classify("release at request end", config, e))
    }
}

/// The database or its table is gone (dropped, renamed): no row of ours can be left there.
fn nothing_left_to_release(e: &Error) -> bool {
    match e {
        Error::Connection { code, .. } => *code == UNKNOWN_DATABASE,
        Error::Schema(_) => true,
        Error::Query { code, .. } => *code == errno::NO_SUCH_TABLE || *code == UNKNOWN_DATABASE,
        _ => false,
    }
}

/// One line for PHP's error log about a failed release at request end.
pub fn describe_failure(count: usize, e: &Error) -> String {
    format!(
        "matomo_archive_claim: could not release {count} claim(s) left by this request at its end \
         ({e}); this process retries at the end of its next request"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(dbname: &str) -> Rc<DbConfig> {
        Rc::new(DbConfig {
            host: "127.0.0.1".into(),
            port: 1, // nothing listens: a release attempt fails fast
            unix_socket: None,
            username: "u".into(),
            password: "p".into(),
            dbname: dbname.into(),
            tables_prefix: "matomo_".into(),
            charset: None,
            connect_timeout: Duration::from_secs(1),
            read_timeout: Duration::from_secs(1),
            write_timeout: Duration::from_secs(1),
            tls: None,
        })
    }

    #[test]
    fn only_ids_this_request_claimed_may_be_completed_or_released() {
        let a = config("a");
        claim_attempted(Some(a.clone()), 1, ClaimOutcome::Won);
        claim_attempted(Some(a.clone()), 2, ClaimOutcome::Lost);
        claim_attempted(Some(a.clone()), 3, ClaimOutcome::Unknown);
        claim_attempted(Some(config("b")), 4, ClaimOutcome::Won);
        assert_eq!(
            claimed_by_this_request(Some(&a), &[4, 3, 2, 1, 1]),
            vec![3, 1]
        );
        assert!(claimed_by_this_request(None, &[1]).is_empty());

        settled(Some(&a), &[1]);
        assert_eq!(claimed_by_this_request(Some(&a), &[1, 3]), vec![3]);
        // A lost claim of an id we already hold does not drop it.
        claim_attempted(Some(a.clone()), 3, ClaimOutcome::Lost);
        assert_eq!(held(&a).0, vec![3]);
        settled(Some(&a), &[3]);
        settled(Some(&config("b")), &[4]);
        assert_eq!(held(&a), (vec![], vec![]));
    }

    #[test]
    fn a_failed_release_at_request_end_leaves_the_ids_for_the_next_request_not_to_it() {
        // No database listens on port 1: the release fails with a connection error.
        let a = config("down");
        claim_attempted(Some(a.clone()), 7, ClaimOutcome::Won);
        let report = end_request();
        assert_eq!(report.released, 0);
        assert_eq!(report.failed.len(), 1);
        assert_eq!(report.failed[0].0, 1);
        assert_eq!(held(&a), (vec![], vec![7]), "kept as a leftover");
        assert!(
            claimed_by_this_request(Some(&a), &[7]).is_empty(),
            "the next request may not complete it"
        );
        // The next request claims the same id again (it had been reaped meanwhile): that
        // claim is the next request's own, no longer a leftover.
        claim_attempted(Some(a.clone()), 7, ClaimOutcome::Won);
        assert_eq!(held(&a), (vec![7], vec![]));
        settled(Some(&a), &[7]);
        let nothing = end_request();
        assert_eq!(
            (nothing.released, nothing.failed.len()),
            (0, 0),
            "nothing to do, nothing tried"
        );
    }

    #[test]
    fn a_forked_child_drops_its_parents_claims_without_releasing_them() {
        let a = config("forked");
        claim_attempted(Some(a.clone()), 9, ClaimOutcome::Won);
        // Pretend the state was built by another process (what a fork child sees).
        with_scope(|s| s.pid = s.pid.wrapping_add(1));
        assert_eq!(held(&a), (vec![], vec![]));
        let report = end_request();
        assert_eq!((report.released, report.failed.len()), (0, 0));
    }

    #[test]
    fn a_dropped_database_leaves_nothing_to_release() {
        assert!(nothing_left_to_release(&Error::Schema("gone".into())));
        assert!(nothing_left_to_release(&Error::Connection {
            target: String::new(),
            detail: String::new(),
            code: UNKNOWN_DATABASE,
        }));
        assert!(!nothing_left_to_release(&Error::Connection {
            target: String::new(),
            detail: String::new(),
            code: crate::error::errno::CONNECTION_ERROR,
        }));
    }
}

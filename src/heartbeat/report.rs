//! What the heartbeat thread says: its log lines (one when an error starts, one when it ends,
//! one per release) and the errors it counts in the lease.

use crate::identity::Identity;
use crate::reap::{Action, ReapEntry};
use crate::thread_log::LogTarget;

use super::lease::Lease;

pub(super) struct Report {
    log: LogTarget,
    /// Whether to say when it starts (see `LogTarget::dedicated_from_ini`).
    announce: bool,
    /// How the thread names itself in the log.
    who: String,
    /// The error last written to the log, and how many ticks failed since: a database that is
    /// down for an hour makes one line when it goes and one when it comes back, not thousands.
    logged_error: Option<String>,
    failed_ticks: u64,
}

impl Report {
    pub(super) fn new(log: LogTarget, announce: bool, me: &Identity) -> Report {
        Report {
            log,
            announce,
            who: format!(
                "heartbeat thread of pid {} on {}",
                me.pid,
                me.host.as_deref().unwrap_or("(no host name)")
            ),
            logged_error: None,
            failed_ticks: 0,
        }
    }

    /// A line in the thread's log; a log that cannot be written counts as an error, once.
    pub(super) fn say(&mut self, lease: &Lease, message: &str) {
        if let Err(e) = self.log.write(message) {
            let what = format!("cannot write the log {}: {e}", self.log.describe());
            if lease.last_error.try_lock().ok().and_then(|l| l.clone()) != Some(what.clone()) {
                lease.note_error(what);
            }
        }
    }

    pub(super) fn started(&mut self, lease: &Lease, settings: &crate::settings::HeartbeatSettings) {
        let line = format!(
            "{}: started as process #{} (heartbeat every {} s, lease {} s, automatic reaping {})",
            self.who,
            lease.idprocess(),
            settings.interval.as_secs(),
            settings.lease.as_secs(),
            if settings.auto_reap { "on" } else { "off" }
        );
        if self.announce {
            self.say(lease, &line);
        }
    }

    /// A tick's outcome: the first of a run of equal errors and the recovery are logged, every
    /// error is counted.
    pub(super) fn outcome(&mut self, lease: &Lease, outcome: std::result::Result<(), String>) {
        match outcome {
            Ok(()) => {
                if self.logged_error.take().is_some() {
                    let line = format!(
                        "{}: working again after {} failed attempts",
                        self.who, self.failed_ticks
                    );
                    self.say(lease, &line);
                }
                self.failed_ticks = 0;
            }
            Err(e) => {
                self.failed_ticks += 1;
                lease.note_error(e.clone());
                if self.logged_error.as_ref() != Some(&e) {
                    let line = format!("{}: error: {e}", self.who);
                    self.say(lease, &line);
                    self.logged_error = Some(e);
                }
            }
        }
    }

    pub(super) fn released(&mut self, lease: &Lease, e: &ReapEntry) {
        let line = release_line(&self.who, e);
        self.say(lease, &line);
    }
}

/// One line per released row: which, whose, what was done and why.
fn release_line(who: &str, e: &ReapEntry) -> String {
    let r = &e.row;
    format!(
        "{who}: {} invalidation {} (site {}, period {}, {}..{}, {}) held by {} pid {} for {} s: {}, {}",
        match e.action {
            Action::DeletedDuplicate => "deleted (a duplicate of queued work)",
            _ => "re-queued",
        },
        r.idinvalidation,
        r.idsite,
        r.period,
        r.date1,
        r.date2,
        r.name,
        r.processing_host.as_deref().unwrap_or("-"),
        r.process_id.as_deref().unwrap_or("-"),
        r.age_seconds.map_or("?".to_owned(), |a| a.to_string()),
        e.decision.verdict.as_str(),
        e.decision.reason.as_str()
    )
}

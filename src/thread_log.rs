//! Where the heartbeat thread says what it did: each release (which row, whose, why), each
//! error it met, when it started and stopped.
//!
//! The thread is not a PHP thread, so it must never call into PHP (not even PHP's logging,
//! which reads request globals and may allocate from the Zend heap of another thread). The
//! target is therefore resolved once, on the PHP thread at registration, from
//! `matomo_archive_claim.log`:
//! - a path: lines are appended to that file;
//! - `syslog`: libc's syslog(3), which is thread-safe;
//! - empty (the default): wherever PHP's own `error_log` setting points at registration (a
//!   file, or `syslog`), only news there (releases and errors, not the thread's start). When
//!   that is unset too, nowhere: PHP would write to the SAPI's log, which for the CLI is
//!   stderr, and Matomo reads an archiving child's stderr as its answer (a line there made
//!   core:archive fail to unserialize it). The counters and `background_releases()` still
//!   say what the thread did.
//!
//! Each line is one `write(2)` on a descriptor opened with O_APPEND, as PHP writes its error
//! log, so lines of several processes sharing the file do not interleave. The file is opened
//! for each line (few lines, and a rotated log is picked up at once).

use std::io::Write;

use crate::settings::{self, LOG, PHP_ERROR_LOG};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    File(String),
    Syslog,
    /// No destination configured: nothing is written.
    Nowhere,
}

impl LogTarget {
    /// Reads php.ini; call on the PHP thread.
    pub fn from_ini() -> LogTarget {
        Self::resolve(
            LOG.get().as_deref(),
            settings::php_setting(PHP_ERROR_LOG).as_deref(),
        )
    }

    /// Whether the operator named a log of its own (`matomo_archive_claim.log`): only then does
    /// the thread also say when it starts. PHP's error log and stderr get news only (releases,
    /// errors): every archiving child registers, and cron mails a CLI's stderr.
    pub fn dedicated_from_ini() -> bool {
        LOG.get().is_some_and(|s| !s.trim().is_empty())
    }

    /// Ours first, then PHP's `error_log`, then stderr. Pure.
    pub fn resolve(ours: Option<&str>, php_error_log: Option<&str>) -> LogTarget {
        let pick = |v: Option<&str>| {
            v.map(str::trim).filter(|s| !s.is_empty()).map(|s| match s {
                "syslog" => LogTarget::Syslog,
                path => LogTarget::File(path.to_owned()),
            })
        };
        pick(ours)
            .or_else(|| pick(php_error_log))
            .unwrap_or(LogTarget::Nowhere)
    }

    pub fn describe(&self) -> String {
        match self {
            LogTarget::File(path) => path.clone(),
            LogTarget::Syslog => "syslog".to_owned(),
            LogTarget::Nowhere => "nowhere (set matomo_archive_claim.log or error_log)".to_owned(),
        }
    }

    /// Writes one line; a failure to log is itself only returned (the thread counts it as an
    /// error, it never stops beating because of its log).
    pub fn write(&self, message: &str) -> std::io::Result<()> {
        let message = message.replace(['\n', '\r', '\0'], " ");
        match self {
            LogTarget::File(path) => {
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(path)?;
                f.write_all(line(&message).as_bytes())
            }
            LogTarget::Nowhere => Ok(()),
            LogTarget::Syslog => {
                let text = std::ffi::CString::new(format!("matomo_archive_claim: {message}"))
                    .map_err(std::io::Error::other)?;
                // SAFETY: a constant format string and a NUL-terminated argument.
                unsafe { libc::syslog(libc::LOG_WARNING, c"%s".as_ptr(), text.as_ptr()) };
                Ok(())
            }
        }
    }
}

/// PHP's error log format (`[02-Jan-2025 10:00:00 UTC] ...`), in UTC: the thread has no access
/// to PHP's date.timezone.
fn line(message: &str) -> String {
    format!("[{}] matomo_archive_claim: {message}\n", utc_now())
}

fn utc_now() -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    // SAFETY: time/gmtime_r write only into the locals given.
    let tm = unsafe {
        let now = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        libc::gmtime_r(&now, &mut tm);
        tm
    };
    format!(
        "{:02}-{}-{} {:02}:{:02}:{:02} UTC",
        tm.tm_mday,
        MONTHS.get(tm.tm_mon as usize).copied().unwrap_or("???"),
        tm.tm_year + 1900,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ours_then_phps_error_log_then_nowhere() {
        assert_eq!(
            LogTarget::resolve(Some("/var/log/claims.log"), Some("/tmp/php.log")),
            LogTarget::File("/var/log/claims.log".into())
        );
        assert_eq!(
            LogTarget::resolve(Some(" "), Some("/tmp/php.log")),
            LogTarget::File("/tmp/php.log".into())
        );
        assert_eq!(LogTarget::resolve(None, Some("syslog")), LogTarget::Syslog);
        assert_eq!(LogTarget::resolve(Some(""), None), LogTarget::Nowhere);
    }

    #[test]
    fn a_line_is_appended_whole() {
        let path = std::env::temp_dir().join(format!("thread-log-test-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let target = LogTarget::File(path.to_string_lossy().into_owned());
        target.write("first").unwrap();
        target.write("second\nline").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].ends_with("] matomo_archive_claim: first"));
        assert!(lines[1].ends_with("matomo_archive_claim: second line"));
        assert!(lines[0].starts_with('[') && lines[0].contains(" UTC]"));
    }
}

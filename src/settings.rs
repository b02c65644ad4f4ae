//! php.ini settings, read through a function the PHP layer installs at module startup, so the
//! rest of the crate stays free of PHP (and Rust tests run with the defaults).

use std::time::Duration;

use once_cell::sync::OnceCell;

pub const INI_DATABASE: &str = "matomo_archive_claim.database";
pub const INI_HEARTBEAT_INTERVAL: &str = "matomo_archive_claim.heartbeat_interval";
pub const INI_LEASE: &str = "matomo_archive_claim.lease";
pub const INI_AUTO_REAP: &str = "matomo_archive_claim.auto_reap";
pub const INI_HOST_NAME_SHARED: &str = "matomo_archive_claim.host_name_shared";
/// Where the heartbeat thread writes what it did: a file path, `syslog`, or empty for PHP's
/// own `error_log` (see `thread_log`).
pub const INI_LOG: &str = "matomo_archive_claim.log";
/// PHP's own setting, read for the thread's log when ours is empty.
pub const INI_PHP_ERROR_LOG: &str = "error_log";

pub const DEFAULT_HEARTBEAT_INTERVAL: u64 = 5;
pub const DEFAULT_LEASE: u64 = 60;

static READER: OnceCell<fn(&str) -> Option<String>> = OnceCell::new();

pub fn set_reader(reader: fn(&str) -> Option<String>) {
    let _ = READER.set(reader);
}

pub fn ini(key: &str) -> Option<String> {
    READER.get().and_then(|read| read(key))
}

/// How the heartbeat thread runs, from php.ini.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeartbeatSettings {
    pub interval: Duration,
    pub lease: Duration,
    pub auto_reap: bool,
    /// This host name is used by several pid namespaces (containers with host networking):
    /// pids of unregistered claims on it prove nothing.
    pub host_name_shared: bool,
}

impl HeartbeatSettings {
    pub fn from_ini() -> HeartbeatSettings {
        let mut settings = Self::parse(
            ini(INI_HEARTBEAT_INTERVAL).as_deref(),
            ini(INI_LEASE).as_deref(),
            ini(INI_AUTO_REAP).as_deref(),
        );
        settings.host_name_shared = flag(ini(INI_HOST_NAME_SHARED).as_deref(), false);
        settings
    }

    /// Unusable values fall back to the defaults; a lease shorter than three heartbeats would
    /// declare live processes dead after one slow beat, so it is raised to that.
    pub fn parse(interval: Option<&str>, lease: Option<&str>, auto_reap: Option<&str>) -> Self {
        let seconds = |v: Option<&str>, default: u64| {
            v.and_then(|s| s.trim().parse::<u64>().ok())
                .filter(|n| (1..=86400).contains(n))
                .unwrap_or(default)
        };
        let interval = seconds(interval, DEFAULT_HEARTBEAT_INTERVAL);
        let lease = seconds(lease, DEFAULT_LEASE).max(interval * 3);
        HeartbeatSettings {
            interval: Duration::from_secs(interval),
            lease: Duration::from_secs(lease),
            auto_reap: flag(auto_reap, true),
            host_name_shared: false,
        }
    }
}

/// An ini switch: 0/off/false/no and 1/on/true/yes; anything else (or unset) is the default.
pub fn flag(value: Option<&str>, default: bool) -> bool {
    match value.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        Some("0" | "off" | "false" | "no") => false,
        Some("1" | "on" | "true" | "yes") => true,
        _ => default,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let d = HeartbeatSettings::parse(None, None, None);
        assert_eq!(d.interval, Duration::from_secs(5));
        assert_eq!(d.lease, Duration::from_secs(60));
        assert!(d.auto_reap);
        let s = HeartbeatSettings::parse(Some("2"), Some("10"), Some("Off"));
        assert_eq!(
            (s.interval.as_secs(), s.lease.as_secs(), s.auto_reap),
            (2, 10, false)
        );
    }

    #[test]
    fn a_lease_under_three_beats_is_raised_and_junk_falls_back() {
        let s = HeartbeatSettings::parse(Some("10"), Some("5"), Some("1"));
        assert_eq!(s.lease.as_secs(), 30);
        let j = HeartbeatSettings::parse(Some("-1"), Some("soon"), None);
        assert_eq!((j.interval.as_secs(), j.lease.as_secs()), (5, 60));
        assert!(flag(Some(" On"), false) && !flag(Some("no"), true) && flag(Some("?"), true));
    }
}

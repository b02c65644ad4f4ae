//! php.ini settings, read through a function the PHP layer installs at module startup, so the
//! rest of the crate stays free of PHP (and Rust tests run with the defaults).

use std::ffi::CStr;
use std::time::Duration;

use once_cell::sync::OnceCell;

/// Where a setting may be changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Changeable {
    /// Anywhere, `ini_set()` included.
    Anywhere,
    /// Only where the operator configures PHP (php.ini, a php-fpm pool's `php_admin_value`,
    /// `php -d`), never by a script.
    SystemOnly,
}

/// One php.ini setting: module startup registers `INI` with PHP, phpinfo() lists it, and the
/// readers below take name and default from here.
#[derive(Debug)]
pub struct IniSetting {
    pub name: &'static CStr,
    pub default: &'static CStr,
    pub changeable: Changeable,
    /// Holds a password: phpinfo() shows it only as the password-free connection target.
    pub secret: bool,
}

impl IniSetting {
    pub fn name(&self) -> &'static str {
        self.name.to_str().unwrap_or_default()
    }

    pub fn default_value(&self) -> &'static str {
        self.default.to_str().unwrap_or_default()
    }

    /// The value PHP has for it now (None outside PHP, as in Rust tests).
    pub fn get(&self) -> Option<String> {
        READER.get().and_then(|read| read(self.name()))
    }
}

/// A DSN with the password: a script that could point it elsewhere (`ini_set`) would send the
/// password to a server of its choosing.
pub const DATABASE: IniSetting = IniSetting {
    name: c"matomo_archive_claim.database",
    default: c"",
    changeable: Changeable::SystemOnly,
    secret: true,
};
pub const HEARTBEAT_INTERVAL: IniSetting = IniSetting {
    name: c"matomo_archive_claim.heartbeat_interval",
    default: c"5",
    changeable: Changeable::Anywhere,
    secret: false,
};
pub const LEASE: IniSetting = IniSetting {
    name: c"matomo_archive_claim.lease",
    default: c"60",
    changeable: Changeable::Anywhere,
    secret: false,
};
pub const AUTO_REAP: IniSetting = IniSetting {
    name: c"matomo_archive_claim.auto_reap",
    default: c"1",
    changeable: Changeable::Anywhere,
    secret: false,
};
pub const HOST_NAME_SHARED: IniSetting = IniSetting {
    name: c"matomo_archive_claim.host_name_shared",
    default: c"0",
    changeable: Changeable::Anywhere,
    secret: false,
};
/// Where the heartbeat thread writes what it did: a file path, `syslog`, or empty for PHP's
/// own `error_log` (see `thread_log`).
pub const LOG: IniSetting = IniSetting {
    name: c"matomo_archive_claim.log",
    default: c"",
    changeable: Changeable::Anywhere,
    secret: false,
};

/// PHP's own setting, read for the thread's log when ours is empty.
pub const PHP_ERROR_LOG: &str = "error_log";

/// Every setting, in the order phpinfo() shows them.
pub const INI: [IniSetting; 6] = [
    DATABASE,
    HEARTBEAT_INTERVAL,
    LEASE,
    AUTO_REAP,
    HOST_NAME_SHARED,
    LOG,
];

/// A default that is a whole number, read at compile time (a non-digit fails the build).
const fn whole_number(text: &CStr) -> u64 {
    let digits = text.to_bytes();
    assert!(!digits.is_empty(), "a numeric default is empty");
    let mut n = 0u64;
    let mut i = 0;
    while i < digits.len() {
        assert!(
            digits[i].is_ascii_digit(),
            "a numeric default is not a number"
        );
        n = n * 10 + (digits[i] - b'0') as u64;
        i += 1;
    }
    n
}

/// The longest heartbeat interval or lease taken (a day); longer values are mistakes.
pub const MAX_SECONDS: u64 = 86_400;

pub const DEFAULT_HEARTBEAT_INTERVAL: u64 = whole_number(HEARTBEAT_INTERVAL.default);
pub const DEFAULT_LEASE: u64 = whole_number(LEASE.default);

static READER: OnceCell<fn(&str) -> Option<String>> = OnceCell::new();

pub fn set_reader(reader: fn(&str) -> Option<String>) {
    let _ = READER.set(reader);
}

/// A setting of PHP's own (not ours), by name; None outside PHP.
pub fn php_setting(name: &str) -> Option<String> {
    READER.get().and_then(|read| read(name))
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
            HEARTBEAT_INTERVAL.get().as_deref(),
            LEASE.get().as_deref(),
            AUTO_REAP.get().as_deref(),
        );
        settings.host_name_shared = switch(HOST_NAME_SHARED.get().as_deref(), &HOST_NAME_SHARED);
        settings
    }

    /// Unusable values fall back to the defaults; a lease shorter than three heartbeats would
    /// declare live processes dead after one slow beat, so it is raised to that.
    pub fn parse(interval: Option<&str>, lease: Option<&str>, auto_reap: Option<&str>) -> Self {
        let seconds = |v: Option<&str>, default: u64| {
            v.and_then(|s| s.trim().parse::<u64>().ok())
                .filter(|n| (1..=MAX_SECONDS).contains(n))
                .unwrap_or(default)
        };
        let interval = seconds(interval, DEFAULT_HEARTBEAT_INTERVAL);
        let lease = seconds(lease, DEFAULT_LEASE).max(interval * 3);
        HeartbeatSettings {
            interval: Duration::from_secs(interval),
            lease: Duration::from_secs(lease),
            auto_reap: switch(auto_reap, &AUTO_REAP),
            host_name_shared: false,
        }
    }
}

/// An on/off setting's value; anything unreadable (or unset) is the setting's default.
fn switch(value: Option<&str>, setting: &IniSetting) -> bool {
    flag(value, flag(Some(setting.default_value()), false))
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
    fn the_table_names_each_setting_once_and_only_the_dsn_is_secret_and_system_only() {
        let mut names: Vec<&str> = INI.iter().map(IniSetting::name).collect();
        assert!(names.iter().all(|n| n.starts_with("matomo_archive_claim.")));
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), INI.len());
        for s in &INI {
            let is_dsn = s.name() == DATABASE.name();
            assert_eq!(s.secret, is_dsn, "{}", s.name());
            assert_eq!(
                s.changeable == Changeable::SystemOnly,
                is_dsn,
                "{}",
                s.name()
            );
        }
        assert!(!switch(None, &HOST_NAME_SHARED) && switch(Some("junk"), &AUTO_REAP));
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

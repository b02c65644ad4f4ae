//! Module lifecycle hooks: php.ini settings (from `settings::INI`), exception and name classes,
//! phpinfo(), request shutdown, shutdown. These run outside any PHP call, where a panic would abort PHP: nothing here may
//! panic, and startup neither connects nor starts a thread (php-fpm forks its workers after
//! startup). Request shutdown may use the connection, in the process that claimed.

use ext_php_rs::flags::IniEntryPermission;
use ext_php_rs::zend::{ExecutorGlobals, IniEntryDef, IniEntryDefs, ModuleEntry, ProcessGlobals};
use ext_php_rs::{info_table_end, info_table_row, info_table_start};

use crate::config::DbConfig;
use crate::connection;
use crate::heartbeat;
use crate::php_exceptions;
use crate::php_names;

use crate::settings::{self, Changeable, DATABASE};

/// `settings::INI` as PHP wants it: a static table ending in an empty entry.
static INI_ENTRIES: IniEntryDefs<{ settings::INI.len() + 1 }> = ini_entries();

const fn ini_entries<const N: usize>() -> IniEntryDefs<N> {
    let mut entries = [const { IniEntryDef::end() }; N];
    let mut i = 0;
    while i < settings::INI.len() {
        let setting = &settings::INI[i];
        let permission = match setting.changeable {
            Changeable::Anywhere => IniEntryPermission::All,
            Changeable::SystemOnly => IniEntryPermission::System,
        };
        entries[i] = IniEntryDef::new(setting.name, setting.default, permission);
        i += 1;
    }
    IniEntryDefs::new(entries)
}

fn read_ini(key: &str) -> Option<String> {
    ExecutorGlobals::get().ini_values().remove(key).flatten()
}

pub fn startup(_ty: i32, module_number: i32) -> i32 {
    IniEntryDef::register(INI_ENTRIES.as_slice(), module_number);
    settings::set_reader(read_ini);
    mark_sensitive_parameters();
    if php_exceptions::register() && php_names::register() {
        0
    } else {
        -1
    }
}

pub extern "C" fn shutdown(_ty: i32, _module_number: i32) -> i32 {
    // A clean exit removes the registration; kill -9 leaves it to go stale.
    heartbeat::stop();
    connection::close();
    0
}

/// Request shutdown (RSHUTDOWN): gives back the claims this request leaves behind (see
/// `request_scope`). PHP runs it after a fatal error, `exit()`, `max_execution_time` and
/// `memory_limit` too, with the execution timer already stopped. Failures go to PHP's error log
/// (never to the response: output is closed by now, and a user error handler must not run
/// here); the ids are retried at the end of the next request.
pub extern "C" fn request_shutdown(_ty: i32, _module_number: i32) -> i32 {
    // A panic must not unwind into PHP (it would abort the process); none is expected.
    let report = std::panic::catch_unwind(crate::request_scope::end_request);
    if let Ok(report) = report {
        for (count, e) in &report.failed {
            log_error(&crate::request_scope::describe_failure(*count, e));
        }
    }
    0
}

extern "C" {
    /// PHPAPI in main/main.c: writes to `error_log` if set, else to the SAPI's log (php-fpm's
    /// worker log, the CLI's stderr). Safe at request shutdown: it calls no user code.
    fn php_log_err_with_severity(log_message: *const std::ffi::c_char, syslog_type_int: i32);
    /// ZEND_API: bytes the Zend allocator holds (`real_usage`: whole chunks, what the limit
    /// is checked against).
    fn zend_memory_usage(real_usage: bool) -> usize;
}

/// syslog's LOG_WARNING.
const LOG_WARNING: i32 = 4;

/// Room the log call may need from PHP's allocator: one 2 MiB chunk, twice.
const LOG_HEADROOM: usize = 4 << 20;

/// Whether PHP's allocator can serve a log line. At the end of a request that died of
/// `memory_limit`, its memory is still held (globals go after RSHUTDOWN); a second limit error
/// inside the log call would longjmp through this Rust frame.
fn memory_for_logging() -> bool {
    let limit = ProcessGlobals::get().memory_limit;
    if limit < 0 {
        return true; // memory_limit = -1
    }
    // SAFETY: reads the allocator's counter; called on PHP's thread during a request.
    let used = unsafe { zend_memory_usage(true) };
    used.saturating_add(LOG_HEADROOM) <= usize::try_from(limit).unwrap_or(usize::MAX)
}

/// Bytes PHP's allocator may still take before `memory_limit`; None when there is no limit.
pub fn memory_left() -> Option<usize> {
    let limit = usize::try_from(ProcessGlobals::get().memory_limit).ok()?;
    // SAFETY: reads the allocator's counter; called on PHP's thread during a request.
    let used = unsafe { zend_memory_usage(true) };
    Some(limit.saturating_sub(used))
}

fn log_error(message: &str) {
    if !memory_for_logging() {
        return;
    }
    let Ok(text) = std::ffi::CString::new(message.replace('\0', " ")) else {
        return;
    };
    // SAFETY: a NUL-terminated string that outlives the call; PHP copies what it keeps.
    unsafe { php_log_err_with_severity(text.as_ptr(), LOG_WARNING) };
}

pub extern "C" fn info(_module: *mut ModuleEntry) {
    let (source, target) = match connection::configured() {
        Some(c) => ("configure()", c.describe()),
        None => match DATABASE.get().filter(|u| !u.trim().is_empty()) {
            Some(url) => match DbConfig::from_url(&url) {
                Ok(c) => ("php.ini", c.describe()),
                Err(e) => ("php.ini (invalid)", e.to_string()),
            },
            None => ("not configured", "-".to_owned()),
        },
    };
    info_table_start!();
    info_table_row!("matomo_archive_claim support", "enabled");
    info_table_row!("version", env!("CARGO_PKG_VERSION"));
    info_table_row!("built for PHP", env!("MATOMO_ARCHIVE_CLAIM_PHP_VERSION"));
    info_table_row!("connection settings", source);
    info_table_row!("database", target.as_str());
    let beat = crate::settings::HeartbeatSettings::from_ini();
    info_table_row!(
        "heartbeat",
        format!(
            "every {} s, lease {} s, automatic reaping {}",
            beat.interval.as_secs(),
            beat.lease.as_secs(),
            if beat.auto_reap { "on" } else { "off" }
        )
        .as_str()
    );
    let registration = match heartbeat::current() {
        Some(r) => format!("registered as process #{}", r.idprocess),
        None => "not registered (registers at its first claim)".to_owned(),
    };
    info_table_row!("this process", registration.as_str());
    if let Some(s) = heartbeat::status() {
        info_table_row!(
            "heartbeat thread",
            format!(
                "{} beats, last acknowledged {:.1} s ago; {}; {} looks for orphans, {} rows released; \
                 {} errors, last: {}",
                s.beats,
                s.last_beat_age,
                if s.reaping {
                    "reaps for this host"
                } else {
                    "not this host's reaper"
                },
                s.reap_runs,
                s.released,
                s.errors,
                match (&s.last_error, s.last_error_age) {
                    (Some(e), Some(age)) => format!("{e} ({age:.0} s ago)"),
                    _ => "none".to_owned(),
                }
            )
            .as_str()
        );
    }
    info_table_row!(
        "heartbeat thread log",
        format!(
            "{} (matomo_archive_claim.log; empty: PHP's error_log, else nowhere)",
            crate::thread_log::LogTarget::from_ini().describe()
        )
        .as_str()
    );
    info_table_row!(
        "host name shared by pid namespaces",
        if beat.host_name_shared {
            "yes (php.ini)"
        } else {
            "no (unless the registry shows it)"
        }
    );
    for setting in &settings::INI {
        let value = match setting.get() {
            Some(v) if setting.secret && !v.trim().is_empty() => {
                "set (its password is never shown)".to_owned()
            }
            Some(v) if v.is_empty() => "(empty)".to_owned(),
            Some(v) => v,
            None => "-".to_owned(),
        };
        info_table_row!(setting.name(), value.as_str());
    }
    info_table_end!();
}

unsafe extern "C" {
    fn zend_add_attribute(
        attributes: *mut *mut ext_php_rs::ffi::HashTable,
        name: *mut ext_php_rs::ffi::zend_string,
        argc: u32,
        flags: u32,
        offset: u32,
        lineno: u32,
    ) -> *mut std::ffi::c_void;
}

/// Marks `configure()`'s `$database` `#[\SensitiveParameter]`, as PHP's own stubs mark
/// `password_hash()`'s: an exception thrown from it (or from a function it is passed through)
/// then shows `Object(SensitiveParameterValue)` in `getTrace()` instead of the array with its
/// password, even with `zend.exception_ignore_args = 0`. ext-php-rs cannot declare parameter
/// attributes, so this adds one at module startup, after the functions are registered and
/// before any code runs. Returns false if the function was not found (nothing changed).
pub fn mark_sensitive_parameters() -> bool {
    const NAME: &str = "matomo\\archiveclaim\\configure";
    // SAFETY: module startup, single-threaded; the function table holds our registered
    // internal functions. The attribute table is persistent (flag 1, as PHP uses for internal
    // functions) and freed by PHP with the function; the name is an interned string.
    unsafe {
        let table = ext_php_rs::ffi::compiler_globals.function_table;
        if table.is_null() {
            return false;
        }
        let func =
            ext_php_rs::ffi::zend_hash_str_find_ptr_lc(table, NAME.as_ptr().cast(), NAME.len())
                .cast::<ext_php_rs::ffi::zend_function>();
        if func.is_null() {
            return false;
        }
        let name = ext_php_rs::types::ZendStr::new_interned("SensitiveParameter", true).into_raw();
        // offset: parameter index + 1 (0 is the function itself).
        !zend_add_attribute(&mut (*func).common.attributes, name, 0, 1, 1, 0).is_null()
    }
}

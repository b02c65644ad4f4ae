//! Module lifecycle hooks: php.ini settings, exception classes, phpinfo(), shutdown.
//! These run outside any PHP call, where a panic would abort PHP: nothing here may panic, and
//! nothing here connects or starts a thread (php-fpm forks its workers after startup).

use ext_php_rs::flags::IniEntryPermission;
use ext_php_rs::zend::{ExecutorGlobals, IniEntryDef, IniEntryDefs, ModuleEntry};
use ext_php_rs::{info_table_end, info_table_row, info_table_start};

use crate::config::DbConfig;
use crate::connection;
use crate::php_exceptions;

pub const INI_DATABASE: &str = "matomo_archive_claim.database";

static INI_ENTRIES: IniEntryDefs<2> = IniEntryDefs::new([
    IniEntryDef::new(
        c"matomo_archive_claim.database",
        c"",
        IniEntryPermission::All,
    ),
    IniEntryDef::end(),
]);

fn read_ini_database() -> Option<String> {
    ExecutorGlobals::get()
        .ini_values()
        .remove(INI_DATABASE)
        .flatten()
}

pub fn startup(_ty: i32, module_number: i32) -> i32 {
    IniEntryDef::register(INI_ENTRIES.as_slice(), module_number);
    connection::set_ini_reader(read_ini_database);
    if php_exceptions::register() {
        0
    } else {
        -1
    }
}

pub extern "C" fn shutdown(_ty: i32, _module_number: i32) -> i32 {
    connection::close();
    0
}

pub extern "C" fn info(_module: *mut ModuleEntry) {
    let (source, target) = match connection::configured() {
        Some(c) => ("configure()", c.describe()),
        None => match read_ini_database().filter(|u| !u.trim().is_empty()) {
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
    info_table_end!();
}

//! The PHP exception hierarchy, and the one place where `Error` becomes a PHP exception.
//!
//! ```text
//! \RuntimeException
//! └── Matomo\ArchiveClaim\Exception
//!     ├── ConfigurationException   no or unusable connection settings
//!     ├── ConnectionException      the database cannot be reached (code: MySQL errno)
//!     ├── QueryException           the server refused a statement (code: MySQL errno)
//!     └── SchemaException          the tables are not shaped as Matomo 5.3+ and we need
//! \ValueError, \TypeError          bad arguments (nothing was changed)
//! ```
//!
//! The classes are plain PHP classes registered at module startup (no Rust object behind them),
//! so userland code can construct, extend and catch them like any SPL exception.

use std::sync::atomic::{AtomicPtr, Ordering};

use ext_php_rs::args::ArgInfoTables;
use ext_php_rs::builders::ClassBuilder;
use ext_php_rs::exception::PhpException;
use ext_php_rs::zend::{ce, ClassEntry};

use crate::error::Error;

extern "C" {
    // Exported by PHP itself (ext/spl is always compiled in). `ClassEntry::try_find` cannot be
    // used here: the class table is not searchable while modules start.
    static spl_ce_RuntimeException: *mut ClassEntry;
}

fn runtime_exception() -> &'static ClassEntry {
    // SAFETY: a pointer PHP sets during its own startup, before any extension's.
    unsafe { spl_ce_RuntimeException.as_ref() }.unwrap_or_else(ce::exception)
}

static BASE: AtomicPtr<ClassEntry> = AtomicPtr::new(std::ptr::null_mut());
static CONFIGURATION: AtomicPtr<ClassEntry> = AtomicPtr::new(std::ptr::null_mut());
static CONNECTION: AtomicPtr<ClassEntry> = AtomicPtr::new(std::ptr::null_mut());
static QUERY: AtomicPtr<ClassEntry> = AtomicPtr::new(std::ptr::null_mut());
static SCHEMA: AtomicPtr<ClassEntry> = AtomicPtr::new(std::ptr::null_mut());

fn load(slot: &AtomicPtr<ClassEntry>) -> Option<&'static ClassEntry> {
    // SAFETY: only ever set from `&'static mut ClassEntry` handed over by the engine.
    unsafe { slot.load(Ordering::Acquire).as_ref() }
}

fn base() -> &'static ClassEntry {
    load(&BASE).unwrap_or_else(runtime_exception)
}

/// Where the engine hands us a registered class entry.
type KeepClass = fn(&'static mut ClassEntry, ArgInfoTables);

macro_rules! keep {
    ($fn_name:ident, $slot:ident) => {
        fn $fn_name(class: &'static mut ClassEntry, _: ArgInfoTables) {
            $slot.store(class, Ordering::Release);
        }
    };
}
keep!(keep_base, BASE);
keep!(keep_configuration, CONFIGURATION);
keep!(keep_connection, CONNECTION);
keep!(keep_query, QUERY);
keep!(keep_schema, SCHEMA);

/// Registers the classes; called from module startup. Returns false if PHP refused one.
pub fn register() -> bool {
    let registered = ClassBuilder::new("Matomo\\ArchiveClaim\\Exception")
        .extends((runtime_exception, "RuntimeException"))
        .registration(keep_base)
        .register();
    if registered.is_err() {
        return false;
    }
    let children: [(&str, KeepClass); 4] = [
        ("ConfigurationException", keep_configuration),
        ("ConnectionException", keep_connection),
        ("QueryException", keep_query),
        ("SchemaException", keep_schema),
    ];
    children.into_iter().all(|(name, keep)| {
        ClassBuilder::new(format!("Matomo\\ArchiveClaim\\{name}"))
            .extends((base, "Matomo\\ArchiveClaim\\Exception"))
            .registration(keep)
            .register()
            .is_ok()
    })
}

impl From<Error> for PhpException {
    fn from(e: Error) -> Self {
        let class = match &e {
            Error::InvalidArgument(_) => ce::value_error(),
            Error::WrongType(_) => ce::type_error(),
            Error::NotConfigured | Error::Configuration(_) => {
                load(&CONFIGURATION).unwrap_or_else(base)
            }
            Error::Connection { .. } => load(&CONNECTION).unwrap_or_else(base),
            Error::Query { .. } => load(&QUERY).unwrap_or_else(base),
            Error::Schema(_) => load(&SCHEMA).unwrap_or_else(base),
        };
        // Messages echo what the caller passed; PHP refuses to throw a message with a NUL byte.
        PhpException::new(e.to_string().replace('\0', "\\0"), e.code(), class)
    }
}

//! The PHP exception hierarchy, and the one place where `Error` becomes a PHP exception.
//!
//! ```text
//! \RuntimeException
//! └── Matomo\ArchiveClaim\Exception
//!     ├── ConfigurationException   no or unusable connection settings
//!     ├── ConnectionException      the database cannot be reached (code: MySQL errno)
//!     ├── QueryException           the server refused a statement (code: MySQL errno)
//!     ├── SchemaException          the tables are not shaped as Matomo 5.3+ and we need
//!     └── RefusedException         declined by policy (a declared-dead host heartbeats)
//! \ValueError, \TypeError          bad arguments (nothing was changed)
//! ```
//!
//! The classes are plain PHP classes registered at module startup (no Rust object behind them),
//! so userland code can construct, extend, serialize and catch them like any SPL exception.
//! ext-php-rs 0.16's `#[php_class]` with `extends` would not give that: it installs its own
//! `create_object`, so PHP's exception constructor never records file, line and trace (a
//! thrown one reports line 0 and an empty trace), `new` from PHP throws "You cannot
//! instantiate this class from PHP." (so userland can neither construct nor subclass), and
//! serialization is disabled. Hence `ClassBuilder`, and slots for the entries it hands back.

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

/// Our classes; `Base` first, as the others extend it.
#[derive(Debug, Clone, Copy)]
enum Class {
    Base,
    Configuration,
    Connection,
    Query,
    Schema,
    Refused,
}

const NAMES: [&str; 6] = [
    "Matomo\\ArchiveClaim\\Exception",
    "Matomo\\ArchiveClaim\\ConfigurationException",
    "Matomo\\ArchiveClaim\\ConnectionException",
    "Matomo\\ArchiveClaim\\QueryException",
    "Matomo\\ArchiveClaim\\SchemaException",
    "Matomo\\ArchiveClaim\\RefusedException",
];

/// The registered entries, in the order of `NAMES`.
static ENTRIES: [AtomicPtr<ClassEntry>; NAMES.len()] =
    [const { AtomicPtr::new(std::ptr::null_mut()) }; NAMES.len()];

/// The engine hands each registered class here; its name says which slot it fills.
fn keep(class: &'static mut ClassEntry, _: ArgInfoTables) {
    if let Some(i) = NAMES.iter().position(|n| class.name() == Some(*n)) {
        ENTRIES[i].store(class, Ordering::Release);
    }
}

/// The class entry (falling back to the base, then to \RuntimeException, should one be missing).
fn entry(class: Class) -> &'static ClassEntry {
    // SAFETY: only ever set from `&'static mut ClassEntry` handed over by the engine.
    let load = |c: Class| unsafe { ENTRIES[c as usize].load(Ordering::Acquire).as_ref() };
    load(class)
        .or_else(|| load(Class::Base))
        .unwrap_or_else(runtime_exception)
}

fn base() -> &'static ClassEntry {
    entry(Class::Base)
}

/// Registers the classes; called from module startup. Returns false if PHP refused one.
pub fn register() -> bool {
    NAMES.iter().enumerate().all(|(i, name)| {
        let parent = if i == Class::Base as usize {
            (
                runtime_exception as fn() -> &'static ClassEntry,
                "RuntimeException",
            )
        } else {
            (
                base as fn() -> &'static ClassEntry,
                NAMES[Class::Base as usize],
            )
        };
        ClassBuilder::new(*name)
            .extends(parent)
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
            Error::NotConfigured | Error::Configuration(_) => entry(Class::Configuration),
            Error::Connection { .. } => entry(Class::Connection),
            Error::Query { .. } => entry(Class::Query),
            Error::Schema(_) => entry(Class::Schema),
            Error::Refused(_) => entry(Class::Refused),
        };
        // Messages echo what the caller passed; PHP refuses to throw a message with a NUL byte.
        PhpException::new(e.to_string().replace('\0', "\\0"), e.code(), class)
    }
}

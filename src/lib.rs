//! matomo_archive_claim: claims Matomo archive invalidations natively, recording the real host
//! and pid of the claiming PHP process. This file only registers things with PHP.

#[macro_use]
mod string_enum;

pub mod claims;
pub mod config;
pub mod connection;
pub mod error;
pub mod filters;
pub mod heartbeat;
pub mod identity;
pub mod invalidations;
mod library;
pub mod liveness;
pub mod load;
pub mod options;
mod php_api;
mod php_exceptions;
mod php_module;
mod php_names;
pub mod pidfd;
pub mod reap;
pub mod registry;
pub mod request_scope;
pub mod schema;
pub mod settings;
pub mod thread_log;
pub mod tls;
pub mod tls_relay;
pub mod watch;

use ext_php_rs::prelude::*;
use php_module::startup;

#[php_module]
#[php(startup = "startup")]
pub fn get_module(module: ModuleBuilder) -> ModuleBuilder {
    php_api::register_functions(module)
        .shutdown_function(php_module::shutdown)
        .request_shutdown_function(php_module::request_shutdown)
        .info_function(php_module::info)
}

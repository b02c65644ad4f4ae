//! Every failure the extension can report, in one enum. `php_exceptions.rs` maps each variant to
//! exactly one PHP class, so the Rust side never thinks about PHP and the PHP side never sees a
//! Rust type.

use thiserror::Error;

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, Error)]
pub enum Error {
    /// A caller passed something we refuse to act on (becomes `\ValueError`).
    #[error("{0}")]
    InvalidArgument(String),

    /// A caller passed a value of the wrong PHP type (becomes `\TypeError`).
    #[error("{0}")]
    WrongType(String),

    /// No connection settings from `configure()` nor from php.ini.
    #[error(
        "Matomo\\ArchiveClaim is not configured: call Matomo\\ArchiveClaim\\configure() with the \
         [database] settings of Matomo's config.ini.php, or set \
         matomo_archive_claim.database = \"mysql://user:password@host:3306/dbname?tables_prefix=matomo_\" in php.ini"
    )]
    NotConfigured,

    /// Settings that cannot work (an unreadable ssl_ca, a key that is not its certificate's).
    #[error("{0}")]
    Configuration(String),

    /// The database could not be reached, or the connection broke and could not be re-opened.
    #[error("cannot connect to the database at {target}: {detail}")]
    Connection {
        target: String,
        detail: String,
        code: u16,
    },

    /// The server refused a statement.
    #[error("{during} failed: MySQL error {code}: {message}")]
    Query {
        during: &'static str,
        code: u16,
        message: String,
    },

    /// The tables are not shaped as Matomo (5.3+) and this extension need.
    #[error("{0}")]
    Schema(String),

    /// A well-formed request declined by policy (a host declared dead still heartbeats);
    /// nothing was changed.
    #[error("{0}")]
    Refused(String),
}

/// MySQL error numbers this crate reacts to.
pub mod errno {
    /// ER_BAD_FIELD_ERROR: unknown column (a pre-5.3 table without processing_host/process_id).
    pub const UNKNOWN_COLUMN: u16 = 1054;
    /// ER_LOCK_WAIT_TIMEOUT: a row lock held by another transaction outlasted our wait.
    pub const LOCK_WAIT_TIMEOUT: u16 = 1205;
    /// ER_NOT_SUPPORTED_YET: what GET_LOCK answers where a cluster refuses it.
    pub const NOT_SUPPORTED_YET: u16 = 1235;
    /// ER_LOCK_DEADLOCK: a deadlock victim, or on Galera a certification failure at commit
    /// (another node wrote the same row first); the statement or transaction was rolled back.
    pub const DEADLOCK: u16 = 1213;
    /// ER_UNKNOWN_SYSTEM_VARIABLE: `@@wsrep_on` on a server without Galera support (MySQL).
    pub const UNKNOWN_SYSTEM_VARIABLE: u16 = 1193;
    /// ER_NO_SUCH_TABLE.
    pub const NO_SUCH_TABLE: u16 = 1146;
    /// ER_SERVER_SHUTDOWN: the server is going down and told us so.
    pub const SERVER_SHUTDOWN: u16 = 1053;
    /// ER_CONNECTION_KILLED: somebody ran `KILL <our id>`.
    pub const CONNECTION_KILLED: u16 = 1927;
    /// CR_SERVER_GONE_ERROR / CR_SERVER_LOST: the client-side codes for a dead connection.
    pub const SERVER_GONE: u16 = 2006;
    pub const SERVER_LOST: u16 = 2013;
    /// CR_CONNECTION_ERROR: could not connect. Our code for a connect failure the server gave
    /// no number for (refused, unreachable, a thread that could not start).
    pub const CONNECTION_ERROR: u16 = 2002;
    /// ER_CLIENT_INTERACTION_TIMEOUT (MySQL 8.0.24+): the server closed a connection idle
    /// longer than wait_timeout, and says so on the next statement.
    pub const CLIENT_INTERACTION_TIMEOUT: u16 = 4031;
    /// CR_SSL_CONNECTION_ERROR: what we report when TLS is what failed.
    pub const SSL_CONNECTION_ERROR: u16 = 2026;
    /// ER_ACCESS_DENIED_ERROR: also what an account created REQUIRE SSL/X509 says without them.
    pub const ACCESS_DENIED: u16 = 1045;
    /// MySQL's ER_SECURE_TRANSPORT_REQUIRED (require_secure_transport = ON, plain TCP); MariaDB
    /// (10.11) answers ACCESS_DENIED instead.
    pub const SECURE_TRANSPORT_REQUIRED: u16 = 3159;
}

impl Error {
    /// The number PHP sees as the exception code: the MySQL errno where there is one.
    pub fn code(&self) -> i32 {
        match self {
            Error::Connection { code, .. } | Error::Query { code, .. } => i32::from(*code),
            _ => 0,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidArgument(message.into())
    }

    pub fn wrong_type(message: impl Into<String>) -> Self {
        Error::WrongType(message.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_errors_carry_the_mysql_errno_as_code() {
        let e = Error::Query {
            during: "claim",
            code: 1146,
            message: "Table 'x.y' doesn't exist".into(),
        };
        assert_eq!(e.code(), 1146);
        assert_eq!(
            e.to_string(),
            "claim failed: MySQL error 1146: Table 'x.y' doesn't exist"
        );
    }

    #[test]
    fn argument_errors_have_no_code() {
        assert_eq!(Error::invalid("bad id").code(), 0);
        assert_eq!(Error::NotConfigured.code(), 0);
    }

    #[test]
    fn not_configured_says_how_to_configure() {
        let text = Error::NotConfigured.to_string();
        assert!(text.contains("configure()"));
        assert!(text.contains("matomo_archive_claim.database"));
    }
}

//! Connection settings: from Matomo's `[database]` keys (`configure()`) or from the one php.ini
//! setting `matomo_archive_claim.database` (a `mysql://` URL). Pure: no PHP, no I/O.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::options::{Key, Options, Value};

/// Keys of Matomo's `[database]` section that we use.
const USED_KEYS: &[&str] = &[
    "host",
    "port",
    "unix_socket",
    "username",
    "password",
    "dbname",
    "tables_prefix",
    "charset",
    "enable_ssl",
    "ssl_ca",
    "ssl_cert",
    "ssl_key",
    "ssl_ca_path",
    "ssl_cipher",
    "ssl_no_verify",
];

/// Keys Matomo has in `[database]` that do not concern a claim. `configure()` ignores every key
/// it does not read (each Matomo release may add more); the php.ini URL, which is ours, accepts
/// only these besides the ones we read.
const IGNORED_MATOMO_KEYS: &[&str] = &[
    "adapter",
    "type",
    "schema",
    "collation",
    "aurora_readonly_read_committed",
    "enable_load_data_infile",
];

/// Our own additions, in seconds.
const TIMEOUT_KEYS: &[&str] = &["connect_timeout", "read_timeout", "write_timeout"];

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest prefix we accept: MySQL names stop at 64 characters and the longest table we touch
/// is `archive_claim_process` (21).
const MAX_PREFIX_LEN: usize = 40;

#[derive(Clone, PartialEq)]
pub struct DbConfig {
    pub host: String,
    pub port: u16,
    pub unix_socket: Option<String>,
    pub username: String,
    pub password: String,
    pub dbname: String,
    pub tables_prefix: String,
    pub charset: Option<String>,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub write_timeout: Duration,
    /// `enable_ssl = 1`: TLS over TCP. None: plain, as Matomo with `enable_ssl = 0`.
    pub tls: Option<Tls>,
}

/// Matomo's `ssl_*` keys, as PHP's mysqlnd (so PDO, so Matomo) honours them (`crate::tls`).
#[derive(Clone, PartialEq, Debug)]
pub struct Tls {
    /// `ssl_ca`: PEM file with the CA certificate(s) the server's certificate must chain to.
    pub ca: Option<PathBuf>,
    /// `ssl_ca_path`: a directory of CA certificates under their hash names (`openssl rehash`).
    /// With neither, the system's CA store is trusted, as by PDO.
    pub ca_path: Option<PathBuf>,
    /// `ssl_cert` and `ssl_key`: the client certificate (PEM, may carry its chain) and its
    /// private key (PEM: PKCS#8, PKCS#1 or SEC1), for accounts created `REQUIRE X509`.
    pub client: Option<(PathBuf, PathBuf)>,
    /// `ssl_cipher`: an OpenSSL cipher list (TLS 1.2 and older); None: PHP's default list.
    pub cipher: Option<String>,
    /// False with `ssl_no_verify = 1`: encrypted, but any server certificate is accepted (what
    /// Matomo's PDO adapter does then: `MYSQL_ATTR_SSL_VERIFY_SERVER_CERT = false`).
    pub verify: bool,
}

/// Never prints the password: this is what error messages and `phpinfo()` show.
impl fmt::Debug for DbConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.describe())
    }
}

impl DbConfig {
    pub fn all_known_keys() -> Vec<&'static str> {
        USED_KEYS
            .iter()
            .chain(IGNORED_MATOMO_KEYS)
            .chain(TIMEOUT_KEYS)
            .copied()
            .collect()
    }

    /// From the `[database]` array Matomo keeps in its config (values are often strings), as it
    /// is: string keys we do not read are ignored, the ones we read are checked.
    pub fn from_matomo(entries: &[(Key, Value)]) -> Result<Self> {
        let known = Self::all_known_keys();
        let ours: Vec<(Key, Value)> = entries
            .iter()
            .filter(|(k, _)| !matches!(k, Key::Str(name) if !known.contains(&name.as_str())))
            .cloned()
            .collect();
        Self::from_entries(&ours)
    }

    /// The keys we know, strictly: an unknown one is refused by name.
    fn from_entries(entries: &[(Key, Value)]) -> Result<Self> {
        let known = Self::all_known_keys();
        let o = Options::new("configure", entries, &known)?;

        let unix_socket = o
            .string("unix_socket")?
            .filter(|s| !s.is_empty())
            .map(str::to_owned);
        let host = o.string("host")?.unwrap_or("").trim().to_owned();
        if host.is_empty() && unix_socket.is_none() {
            return Err(Error::invalid(
                "configure(): 'host' is empty and no 'unix_socket' is given: say where the database is",
            ));
        }
        let dbname = o.string("dbname")?.unwrap_or("").to_owned();
        if dbname.is_empty() {
            return Err(Error::invalid("configure(): 'dbname' is empty"));
        }
        let tls = tls_settings(&o)?;
        let seconds = |key: &str, default: Duration| -> Result<Duration> {
            Ok(o.int_in(key, 1, 3600)?
                .map(|s| Duration::from_secs(s as u64))
                .unwrap_or(default))
        };
        let config = DbConfig {
            host: if host.is_empty() {
                "localhost".into()
            } else {
                host
            },
            port: o.int_in("port", 1, 65535)?.unwrap_or(3306) as u16,
            unix_socket,
            username: o.string("username")?.unwrap_or("").to_owned(),
            password: o.string("password")?.unwrap_or("").to_owned(),
            dbname,
            tables_prefix: o.string("tables_prefix")?.unwrap_or("").to_owned(),
            charset: o
                .string("charset")?
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            connect_timeout: seconds("connect_timeout", DEFAULT_CONNECT_TIMEOUT)?,
            read_timeout: seconds("read_timeout", DEFAULT_READ_TIMEOUT)?,
            write_timeout: seconds("write_timeout", DEFAULT_WRITE_TIMEOUT)?,
            tls,
        };
        check_identifier("tables_prefix", &config.tables_prefix, MAX_PREFIX_LEN, true)?;
        if let Some(charset) = &config.charset {
            check_identifier("charset", charset, 32, false)?;
        }
        Ok(config)
    }

    /// From `mysql://user:password@host:port/dbname?tables_prefix=matomo_&unix_socket=/path`.
    /// Query keys are the same `[database]` keys `configure()` takes.
    pub fn from_url(url: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::Configuration(format!(
                "matomo_archive_claim.database: {why}; expected \
                 mysql://user:password@host:3306/dbname?tables_prefix=matomo_"
            ))
        };
        let rest = url
            .trim()
            .strip_prefix("mysql://")
            .ok_or_else(|| bad("it does not start with mysql://"))?;
        let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = main
            .split_once('/')
            .ok_or_else(|| bad("there is no /dbname"))?;
        // The password may itself contain '@' when not percent-encoded: split at the last one.
        let (userinfo, hostport) = authority.rsplit_once('@').unwrap_or(("", authority));
        let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
        let (host, port) =
            split_host_port(hostport).ok_or_else(|| bad("the port is not a number"))?;

        let mut entries = vec![
            entry(
                "host",
                percent_decode(host).ok_or_else(|| bad("bad %-escape in host"))?,
            ),
            entry(
                "username",
                percent_decode(user).ok_or_else(|| bad("bad %-escape in user"))?,
            ),
            entry(
                "password",
                percent_decode(password).ok_or_else(|| bad("bad %-escape in password"))?,
            ),
            entry(
                "dbname",
                percent_decode(path).ok_or_else(|| bad("bad %-escape in dbname"))?,
            ),
        ];
        if let Some(port) = port {
            entries.push(entry("port", port.to_owned()));
        }
        let mut enable_ssl_given = false;
        let mut tls_key_given: Option<String> = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v).ok_or_else(|| bad("bad %-escape in a query value"))?;
            if k == "enable_ssl" {
                enable_ssl_given = true;
            } else if k.starts_with("ssl_") && !v.trim().is_empty() {
                tls_key_given.get_or_insert_with(|| k.to_owned());
            }
            entries.push(entry(k, v));
        }
        // Matomo's [database] array ignores ssl_* keys while enable_ssl is off, and configure()
        // follows it; a URL is written by hand, and one that names a CA or a certificate but not
        // enable_ssl wants TLS: connecting in plain text would ignore that unseen.
        if let (Some(key), false) = (&tls_key_given, enable_ssl_given) {
            return Err(Error::Configuration(format!(
                "matomo_archive_claim.database: {key} is set but enable_ssl is not: add \
                 enable_ssl=1 to use TLS (or enable_ssl=0 to connect without it)"
            )));
        }
        Self::from_entries(&entries).map_err(|e| match e {
            Error::InvalidArgument(m) | Error::WrongType(m) | Error::Configuration(m) => {
                Error::Configuration(m.replacen("configure()", "matomo_archive_claim.database", 1))
            }
            other => other,
        })
    }

    /// Where we connect, for messages: never the password.
    pub fn target(&self) -> String {
        match &self.unix_socket {
            Some(socket) => format!("unix:{socket}"),
            None => format!("{}:{}", self.host, self.port),
        }
    }

    pub fn describe(&self) -> String {
        let tls = match &self.tls {
            None => "",
            Some(t) if !t.verify => ", TLS without verification",
            Some(t) if t.client.is_some() => ", TLS with a client certificate",
            Some(_) => ", TLS",
        };
        format!(
            "{}@{}/{} (tables_prefix '{}'{tls})",
            self.username,
            self.target(),
            self.dbname,
            self.tables_prefix
        )
    }

    pub fn table(&self, name: &str) -> String {
        format!("`{}{}`", self.tables_prefix, name)
    }

    pub fn table_name(&self, name: &str) -> String {
        format!("{}{}", self.tables_prefix, name)
    }
}

/// Matomo reads the `ssl_*` keys only when `enable_ssl` is on; so do we. Every key Matomo
/// passes to PDO is honoured; the files are read at each connection (`crate::tls`).
fn tls_settings(o: &Options) -> Result<Option<Tls>> {
    if !truthy(o.get("enable_ssl")) {
        return Ok(None);
    }
    let path = |key: &str| -> Result<Option<PathBuf>> {
        Ok(o.string(key)?
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(PathBuf::from))
    };
    let client = match (path("ssl_cert")?, path("ssl_key")?) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => return Err(Error::Configuration(
            "configure(): ssl_cert is set but ssl_key is empty: a client certificate needs its key"
                .into(),
        )),
        (None, Some(_)) => return Err(Error::Configuration(
            "configure(): ssl_key is set but ssl_cert is empty: a client key needs its certificate"
                .into(),
        )),
    };
    let cipher = o
        .string("ssl_cipher")?
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    if let Some(c) = &cipher {
        if c.contains('\0') {
            return Err(Error::Configuration(
                "configure(): ssl_cipher holds a NUL byte: give an OpenSSL cipher list".into(),
            ));
        }
    }
    Ok(Some(Tls {
        ca: path("ssl_ca")?,
        ca_path: path("ssl_ca_path")?,
        client,
        cipher,
        verify: !truthy(o.get("ssl_no_verify")),
    }))
}

fn entry(key: &str, value: String) -> (Key, Value) {
    (Key::Str(key.to_owned()), Value::Str(value))
}

/// Matomo writes booleans as 1/0, "1"/"0", "" or true/false.
fn truthy(value: Option<&Value>) -> bool {
    match value {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(Value::Int(n)) => *n != 0,
        Some(Value::Float(f)) => *f != 0.0,
        Some(Value::Str(s)) => {
            let s = s.trim().to_ascii_lowercase();
            !(s.is_empty() || s == "0" || s == "false" || s == "off" || s == "no")
        }
        Some(Value::Array(a)) => !a.is_empty(),
    }
}

/// Prefixes and charsets are pasted into SQL, so only `[A-Za-z0-9_]` may pass.
pub fn check_identifier(what: &str, value: &str, max_len: usize, may_be_empty: bool) -> Result<()> {
    if value.is_empty() && may_be_empty {
        return Ok(());
    }
    let safe = !value.is_empty()
        && value.len() <= max_len
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if safe {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "configure(): '{what}' must be at most {max_len} letters, digits or underscores, got '{}'",
            value.chars().take(64).collect::<String>()
        )))
    }
}

fn split_host_port(hostport: &str) -> Option<(&str, Option<&str>)> {
    // [::1]:3306
    if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after.strip_prefix(':') {
            Some(port) if port.bytes().all(|b| b.is_ascii_digit()) && !port.is_empty() => {
                Some((host, Some(port)))
            }
            None if after.is_empty() => Some((host, None)),
            _ => None,
        };
    }
    match hostport.rsplit_once(':') {
        Some((host, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            Some((host, Some(port)))
        }
        Some(_) => None,
        None => Some((hostport, None)),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matomo(pairs: &[(&str, &str)]) -> Vec<(Key, Value)> {
        pairs
            .iter()
            .map(|(k, v)| entry(k, (*v).to_owned()))
            .collect()
    }

    fn matomo_defaults() -> Vec<(Key, Value)> {
        // The [database] section as Matomo's installer writes it, defaults from global.ini.php.
        matomo(&[
            ("host", "127.0.0.1"),
            ("username", "matomo"),
            ("password", "s3cret"),
            ("dbname", "matomo"),
            ("tables_prefix", "matomo_"),
            ("port", "3306"),
            ("adapter", "PDO\\MYSQL"),
            ("type", "InnoDB"),
            ("schema", "Mysql"),
            ("charset", "utf8mb4"),
            ("collation", "utf8mb4_general_ci"),
            ("enable_ssl", "0"),
            ("ssl_ca", ""),
            ("ssl_no_verify", "1"),
        ])
    }

    #[test]
    fn a_whole_matomo_database_section_is_accepted() {
        let c = DbConfig::from_matomo(&matomo_defaults()).expect("valid");
        assert_eq!(c.host, "127.0.0.1");
        assert_eq!(c.port, 3306);
        assert_eq!(c.username, "matomo");
        assert_eq!(c.dbname, "matomo");
        assert_eq!(c.tables_prefix, "matomo_");
        assert_eq!(c.charset.as_deref(), Some("utf8mb4"));
        assert_eq!(
            c.table("archive_invalidations"),
            "`matomo_archive_invalidations`"
        );
        assert_eq!(c.read_timeout, DEFAULT_READ_TIMEOUT);
    }

    #[test]
    fn keys_matomo_adds_are_ignored_but_the_ones_we_read_are_checked() {
        let mut e = matomo_defaults();
        e.push(entry("enable_segment_first_table_join_prefix", "1".into()));
        e.push(entry("enable_first_table_join_prefix", "0".into()));
        e.push(entry("a_key_of_matomo_6", "anything".into()));
        let c = DbConfig::from_matomo(&e).expect("Matomo's whole section is accepted");
        assert_eq!(c.tables_prefix, "matomo_");
        e.push(entry("port", "not a port".into()));
        e.retain(|(k, v)| !(*k == Key::Str("port".into()) && *v == Value::Str("3306".into())));
        assert!(DbConfig::from_matomo(&e).is_err());
        // An integer key is no [database] key at all.
        let mut i = matomo_defaults();
        i.push((Key::Int(0), Value::Str("x".into())));
        assert!(DbConfig::from_matomo(&i).is_err());
    }

    #[test]
    fn unknown_keys_in_our_own_url_are_named() {
        let msg = DbConfig::from_url("mysql://u:p@h/db?tables_prefx=x")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(msg.contains("'tables_prefx'"), "{msg}");
    }

    #[test]
    fn unsafe_prefixes_are_refused() {
        for prefix in [
            "matomo`; DROP TABLE x; --",
            "a-b",
            "ma tomo",
            &"p".repeat(41),
        ] {
            let mut e = matomo_defaults();
            e.retain(|(k, _)| *k != Key::Str("tables_prefix".into()));
            e.push(entry("tables_prefix", prefix.to_owned()));
            assert!(
                matches!(DbConfig::from_matomo(&e), Err(Error::InvalidArgument(_))),
                "{prefix}"
            );
        }
    }

    #[test]
    fn an_empty_prefix_is_fine() {
        let mut e = matomo_defaults();
        e.retain(|(k, _)| *k != Key::Str("tables_prefix".into()));
        let c = DbConfig::from_matomo(&e).expect("valid");
        assert_eq!(c.table("archive_invalidations"), "`archive_invalidations`");
    }

    fn with(overrides: &[(&str, &str)]) -> Vec<(Key, Value)> {
        let mut e = matomo_defaults();
        e.retain(|(k, _)| !overrides.iter().any(|(o, _)| *k == Key::Str((*o).into())));
        e.extend(matomo(overrides));
        e
    }

    #[test]
    fn ssl_keys_are_ignored_while_enable_ssl_is_off_as_matomo_does() {
        let c = DbConfig::from_matomo(&with(&[
            ("ssl_ca", "/etc/ssl/db-ca.pem"),
            ("ssl_cipher", "AES128-SHA"),
            ("ssl_ca_path", "/etc/ssl/certs"),
        ]))
        .expect("valid");
        assert_eq!(c.tls, None);
    }

    #[test]
    fn enable_ssl_takes_matomos_ssl_keys() {
        let c = DbConfig::from_matomo(&with(&[
            ("enable_ssl", "1"),
            ("ssl_ca", "/etc/ssl/db-ca.pem"),
            ("ssl_cert", "/etc/ssl/client.pem"),
            ("ssl_key", "/etc/ssl/client-key.pem"),
            ("ssl_no_verify", ""),
            ("ssl_ca_path", " "),
            ("ssl_cipher", ""),
        ]))
        .expect("valid");
        assert_eq!(
            c.tls,
            Some(Tls {
                ca: Some("/etc/ssl/db-ca.pem".into()),
                ca_path: None,
                client: Some((
                    "/etc/ssl/client.pem".into(),
                    "/etc/ssl/client-key.pem".into()
                )),
                cipher: None,
                verify: true,
            })
        );
        assert!(c.describe().contains("TLS with a client certificate"));
        // Matomo's test configuration turns verification off; its production default verifies.
        let unverified =
            DbConfig::from_matomo(&with(&[("enable_ssl", "1"), ("ssl_no_verify", "1")]))
                .expect("valid");
        assert_eq!(
            unverified.tls,
            Some(Tls {
                ca: None,
                ca_path: None,
                client: None,
                cipher: None,
                verify: false
            })
        );
        let mut absent = with(&[("enable_ssl", "1")]);
        absent.retain(|(k, _)| *k != Key::Str("ssl_no_verify".into()));
        let c = DbConfig::from_matomo(&absent).expect("valid");
        assert!(
            c.tls.is_some_and(|t| t.verify),
            "verified unless told otherwise"
        );
    }

    #[test]
    fn a_ca_directory_and_a_cipher_list_are_taken_as_pdo_takes_them() {
        let c = DbConfig::from_matomo(&with(&[
            ("enable_ssl", "1"),
            ("ssl_ca_path", "/etc/ssl/certs"),
            ("ssl_cipher", " ECDHE-RSA-AES256-GCM-SHA384 "),
        ]))
        .expect("valid");
        let tls = c.tls.expect("TLS");
        assert_eq!(tls.ca_path, Some("/etc/ssl/certs".into()));
        assert_eq!(tls.cipher.as_deref(), Some("ECDHE-RSA-AES256-GCM-SHA384"));
    }

    #[test]
    fn half_a_client_identity_is_refused_by_name() {
        for (key, value) in [
            ("ssl_cert", "/etc/ssl/client.pem"),
            ("ssl_key", "/etc/ssl/client-key.pem"),
        ] {
            match DbConfig::from_matomo(&with(&[("enable_ssl", "1"), (key, value)])) {
                Err(Error::Configuration(m)) => assert!(m.contains(key), "{m}"),
                other => panic!("{key}: {other:?}"),
            }
        }
    }

    #[test]
    fn the_url_takes_the_same_ssl_keys() {
        let c = DbConfig::from_url(
            "mysql://u:p@db.example/m?enable_ssl=1&ssl_ca=%2Fetc%2Fssl%2Fca.pem&ssl_no_verify=0",
        )
        .expect("valid");
        assert_eq!(
            c.tls,
            Some(Tls {
                ca: Some("/etc/ssl/ca.pem".into()),
                ca_path: None,
                client: None,
                cipher: None,
                verify: true
            })
        );
        let plain_slashes =
            DbConfig::from_url("mysql://u:p@h:3306/m?enable_ssl=1&ssl_ca=/etc/ssl/ca.pem")
                .expect("ok");
        assert_eq!(
            plain_slashes.tls.and_then(|t| t.ca),
            Some("/etc/ssl/ca.pem".into())
        );
        let cipher = DbConfig::from_url("mysql://u:p@h/m?enable_ssl=1&ssl_cipher=AES256-SHA")
            .expect("taken as PDO takes it");
        assert_eq!(
            cipher.tls.and_then(|t| t.cipher).as_deref(),
            Some("AES256-SHA")
        );
    }

    #[test]
    fn a_url_naming_tls_files_without_enable_ssl_is_refused_not_read_as_plain_text() {
        // Matomo's [database] array ignores ssl_* while enable_ssl is off (configure() does
        // too); in the URL nobody copies that array, and ssl_ca alone means TLS was wanted.
        for url in [
            "mysql://u:p@h/m?ssl_ca=/etc/ssl/ca.pem",
            "mysql://u:p@h/m?ssl_cert=/c.pem&ssl_key=/k.pem",
            "mysql://u:p@h/m?ssl_no_verify=1",
        ] {
            match DbConfig::from_url(url) {
                Err(Error::Configuration(m)) => assert!(m.contains("enable_ssl"), "{m}"),
                other => panic!("{url}: {other:?}"),
            }
        }
        // Said off in so many words: plain, as asked.
        let off = DbConfig::from_url("mysql://u:p@h/m?enable_ssl=0&ssl_ca=/etc/ssl/ca.pem")
            .expect("explicitly off");
        assert_eq!(off.tls, None);
        assert_eq!(
            DbConfig::from_url("mysql://u:p@h/m?ssl_ca=")
                .expect("empty")
                .tls,
            None
        );
    }

    #[test]
    fn the_password_never_shows_in_descriptions() {
        let c = DbConfig::from_matomo(&matomo_defaults()).expect("valid");
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(!c.describe().contains("s3cret"));
    }

    #[test]
    fn missing_host_and_dbname_are_refused() {
        assert!(DbConfig::from_matomo(&matomo(&[("dbname", "m")])).is_err());
        assert!(DbConfig::from_matomo(&matomo(&[("host", "h")])).is_err());
        let socket_only = matomo(&[("unix_socket", "/run/mysqld/mysqld.sock"), ("dbname", "m")]);
        let c = DbConfig::from_matomo(&socket_only).expect("socket is enough");
        assert_eq!(c.target(), "unix:/run/mysqld/mysqld.sock");
    }

    #[test]
    fn urls_carry_the_same_settings() {
        let c = DbConfig::from_url(
            "mysql://matomo:p%40ss@db.example:3307/analytics?tables_prefix=piwik_&read_timeout=5",
        )
        .expect("valid");
        assert_eq!(c.username, "matomo");
        assert_eq!(c.password, "p@ss");
        assert_eq!(c.host, "db.example");
        assert_eq!(c.port, 3307);
        assert_eq!(c.dbname, "analytics");
        assert_eq!(c.tables_prefix, "piwik_");
        assert_eq!(c.read_timeout, Duration::from_secs(5));

        let s =
            DbConfig::from_url("mysql://root@localhost/m?unix_socket=/tmp/my.sock").expect("ok");
        assert_eq!(s.unix_socket.as_deref(), Some("/tmp/my.sock"));
        let v6 = DbConfig::from_url("mysql://u:p@[::1]:3310/m").expect("ok");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 3310));
    }

    #[test]
    fn bad_urls_are_configuration_errors_without_the_password() {
        for url in [
            "postgres://u:p@h/db",
            "mysql://u:hunter2@h:port/db",
            "mysql://u:hunter2@h",
            "mysql://u:hunter2@h/db?tables_prefix=a;b",
            "mysql://u:hunter2@h/db?bogus=1",
        ] {
            match DbConfig::from_url(url) {
                Err(Error::Configuration(m)) => assert!(!m.contains("hunter2"), "{m}"),
                other => panic!("{url}: {other:?}"),
            }
        }
    }
}

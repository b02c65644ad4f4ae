//! TLS to the database the way PHP's mysqlnd makes it (so PDO, so Matomo), with the system's
//! OpenSSL: the library every PHP process with `openssl` or `mysqlnd` has loaded already.
//!
//! What mysqlnd does with Matomo's keys, and so what this does:
//! - trust: `ssl_ca` (a PEM file) and `ssl_ca_path` (a directory hashed by `openssl rehash`),
//!   loaded as OpenSSL loads them (`SSL_CTX_load_verify_locations`); with neither, OpenSSL's
//!   default store (the system's CA certificates). Version 1 and version 3 certificates alike.
//! - verification, unless `ssl_no_verify`: the chain (depth 9, as PHP), then the peer name as
//!   PHP's streams check it: a subjectAltName DNS name (one leading wildcard label allowed) or
//!   IPv4 address equal to `host`; only a certificate without subjectAltName by its common name.
//! - `ssl_cipher`: an OpenSSL cipher list for TLS 1.2 and older (TLS 1.3 suites are not in it,
//!   as with PHP); empty: PHP's own default list for streams.
//! - `ssl_cert`/`ssl_key`: PEM, the chain file as `SSL_CTX_use_certificate_chain_file` reads it;
//!   the key PKCS#8, PKCS#1 or SEC1, never a passphrase prompt.

use std::net::IpAddr;
use std::path::Path;

use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::ssl::{SslContext, SslContextBuilder, SslMethod, SslMode, SslVerifyMode};
use openssl::x509::{X509Ref, X509VerifyResult};

use crate::config::Tls;
use crate::error::{Error, Result};

/// PHP's default cipher list for encrypted streams (ext/openssl's
/// `OPENSSL_DEFAULT_STREAM_CIPHERS`), which mysqlnd uses when `ssl_cipher` is empty: the same
/// servers accept or refuse us as they do Matomo.
const PHP_DEFAULT_CIPHERS: &str = concat!(
    "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256:",
    "ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES256-GCM-SHA384:DHE-RSA-AES128-GCM-SHA256:",
    "DHE-DSS-AES128-GCM-SHA256:kEDH+AESGCM:ECDHE-RSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA256:",
    "ECDHE-RSA-AES128-SHA:ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES256-SHA384:ECDHE-ECDSA-AES256-SHA384:",
    "ECDHE-RSA-AES256-SHA:ECDHE-ECDSA-AES256-SHA:DHE-RSA-AES128-SHA256:DHE-RSA-AES128-SHA:",
    "DHE-DSS-AES128-SHA256:DHE-RSA-AES256-SHA256:DHE-DSS-AES256-SHA:DHE-RSA-AES256-SHA:",
    "AES128-GCM-SHA256:AES256-GCM-SHA384:AES128:AES256:HIGH:",
    "!SSLv2:!aNULL:!eNULL:!EXPORT:!DES:!MD5:!RC4:!ADH"
);

/// PHP's default `verify_depth` for streams.
const VERIFY_DEPTH: u32 = 9;

/// The OpenSSL context for one connection, from `tls`. The files are read now (a renewed
/// certificate is used from the next connection on); what is wrong with them is a
/// configuration error naming the key, never the key's contents.
pub fn context(tls: &Tls) -> Result<SslContext> {
    let openssl = |what: &str, e: openssl::error::ErrorStack| {
        Error::Configuration(format!("[database] {what}: {}", openssl_reason(&e)))
    };
    let mut b = SslContextBuilder::new(SslMethod::tls_client())
        .map_err(|e| openssl("TLS cannot be set up by this OpenSSL", e))?;
    b.set_mode(SslMode::ENABLE_PARTIAL_WRITE | SslMode::ACCEPT_MOVING_WRITE_BUFFER);
    let ciphers = tls.cipher.as_deref().unwrap_or(PHP_DEFAULT_CIPHERS);
    b.set_cipher_list(ciphers).map_err(|e| {
        openssl(
            &format!(
                "ssl_cipher '{ciphers}' names no cipher this OpenSSL offers (an OpenSSL cipher \
                 list such as 'ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES256-GCM-SHA384')"
            ),
            e,
        )
    })?;
    if let Some(ca) = &tls.ca {
        readable("ssl_ca", ca, false)?;
    }
    if let Some(dir) = &tls.ca_path {
        readable("ssl_ca_path", dir, true)?;
    }
    if tls.ca.is_some() || tls.ca_path.is_some() {
        let ca = tls.ca.as_deref().map(|p| c_path("ssl_ca", p)).transpose()?;
        let dir = tls
            .ca_path
            .as_deref()
            .map(|p| c_path("ssl_ca_path", p))
            .transpose()?;
        b.load_verify_locations(ca, dir).map_err(|e| {
            openssl(
                "ssl_ca / ssl_ca_path hold no CA certificate OpenSSL can read (PEM expected)",
                e,
            )
        })?;
    } else {
        b.set_default_verify_paths()
            .map_err(|e| openssl("the system's CA certificates cannot be loaded", e))?;
    }
    if tls.verify {
        b.set_verify(SslVerifyMode::PEER);
        b.set_verify_depth(VERIFY_DEPTH);
    } else {
        b.set_verify(SslVerifyMode::NONE);
    }
    if let Some((cert, key)) = &tls.client {
        readable("ssl_cert", cert, false)?;
        readable("ssl_key", key, false)?;
        b.set_certificate_chain_file(c_path("ssl_cert", cert)?)
            .map_err(|e| {
                openssl(
                    &format!("ssl_cert '{}' is not a PEM certificate", cert.display()),
                    e,
                )
            })?;
        let mut pem = std::fs::read(key).map_err(|e| unreadable("ssl_key", key, &e))?;
        // A key protected by a passphrase fails here instead of prompting on the terminal.
        let parsed = PKey::private_key_from_pem_callback(&pem, |_| Ok(0));
        pem.iter_mut().for_each(|byte| *byte = 0);
        let pkey = parsed.map_err(|_| {
            Error::Configuration(format!(
                "[database] ssl_key '{}' is not an unencrypted PEM private key (PKCS#8, PKCS#1 \
                 'BEGIN RSA PRIVATE KEY' or SEC1 'BEGIN EC PRIVATE KEY')",
                key.display()
            ))
        })?;
        b.set_private_key(&pkey)
            .map_err(|e| openssl(&format!("ssl_key '{}' cannot be used", key.display()), e))?;
        b.check_private_key().map_err(|_| {
            Error::Configuration(format!(
                "[database] ssl_key '{}' is not the key of the certificate in ssl_cert '{}'",
                key.display(),
                cert.display()
            ))
        })?;
    }
    Ok(b.build())
}

fn readable(key: &str, path: &Path, dir: bool) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|e| unreadable(key, path, &e))?;
    if dir && !meta.is_dir() {
        return Err(Error::Configuration(format!(
            "[database] {key} '{}' is not a directory: it names a directory of CA certificates \
             (hashed by `openssl rehash`); a single file goes into ssl_ca",
            path.display()
        )));
    }
    if dir {
        std::fs::read_dir(path).map(drop)
    } else {
        std::fs::File::open(path).map(drop)
    }
    .map_err(|e| unreadable(key, path, &e))
}

fn unreadable(key: &str, path: &Path, e: &std::io::Error) -> Error {
    Error::Configuration(format!(
        "[database] {key} '{}' cannot be read by this process: {e}",
        path.display()
    ))
}

/// OpenSSL takes C strings: a path that is not one is named instead of panicking inside it.
fn c_path<'a>(key: &str, path: &'a Path) -> Result<&'a Path> {
    match path.to_str() {
        Some(s) if !s.contains('\0') => Ok(path),
        _ => Err(Error::Configuration(format!(
            "[database] {key} '{}' is not a path OpenSSL can open (not UTF-8, or holds a NUL byte)",
            path.display()
        ))),
    }
}

/// The first reason OpenSSL gives, without its numeric codes.
fn openssl_reason(e: &openssl::error::ErrorStack) -> String {
    e.errors()
        .iter()
        .find_map(|e| e.reason().map(str::to_owned))
        .unwrap_or_else(|| e.to_string())
}

/// The peer name check of PHP's streams (`verify_peer_name`), which mysqlnd turns on with
/// verification: a certificate with a subjectAltName must list `host` there (a DNS name or an
/// IPv4 address); only one without (every version 1 certificate) is judged by its first
/// common name. (PHP's own tests: "the CN must not be considered because the certificate
/// presents a SAN".)
pub fn check_peer_name(cert: &X509Ref, host: &str) -> std::result::Result<(), String> {
    if let Some(names) = cert.subject_alt_names().filter(|n| !n.is_empty()) {
        for name in &names {
            if let Some(dns) = name.dnsname() {
                if wildcard_match(host, dns.strip_suffix('.').unwrap_or(dns)) {
                    return Ok(());
                }
            } else if let Some(ip) = name.ipaddress() {
                if let Ok(octets) = <[u8; 4]>::try_from(ip) {
                    if host.eq_ignore_ascii_case(&IpAddr::from(octets).to_string()) {
                        return Ok(());
                    }
                }
            }
        }
        return Err(format!(
            "the server's certificate does not list '{host}' in its subjectAltName: connect by a \
             name or address it lists, or give the server a certificate for '{host}'"
        ));
    }
    let cn = cert
        .subject_name()
        .entries_by_nid(Nid::COMMONNAME)
        .next()
        .and_then(|e| std::str::from_utf8(e.data().as_slice()).ok())
        // A name with a NUL byte in it matches nothing (PHP calls it malformed).
        .filter(|cn| !cn.contains('\0'))
        .map(str::to_owned);
    match cn {
        Some(cn) if wildcard_match(host, &cn) => Ok(()),
        Some(cn) => Err(format!(
            "the server's certificate (without subjectAltName) has the common name CN={cn}, not \
             '{host}': connect by that name, or give the server a certificate for '{host}'"
        )),
        None => Err(format!(
            "the server's certificate has neither a subjectAltName nor a common name to match \
             '{host}'"
        )),
    }
}

/// PHP's rule: equal ignoring case, or a `*` in the leftmost label standing for one label's
/// characters (`*.example.com` matches `db.example.com`, not `example.com` nor `a.b.example.com`).
fn wildcard_match(host: &str, pattern: &str) -> bool {
    if host.eq_ignore_ascii_case(pattern) {
        return true;
    }
    let Some(star) = pattern.find('*') else {
        return false;
    };
    // Bytes, as PHP compares them: no slicing inside a UTF-8 character.
    let (host, pattern) = (host.as_bytes(), pattern.as_bytes());
    let (prefix, suffix) = (&pattern[..star], &pattern[star + 1..]);
    if prefix.contains(&b'.') || host.len() < prefix.len() + suffix.len() {
        return false;
    }
    let (h_prefix, rest) = host.split_at(prefix.len());
    let (middle, h_suffix) = rest.split_at(rest.len() - suffix.len());
    h_prefix.eq_ignore_ascii_case(prefix)
        && h_suffix.eq_ignore_ascii_case(suffix)
        && !middle.contains(&b'.')
}

/// What a failed handshake means for the operator, from OpenSSL's verdict on the server's
/// certificate (`verify`) or, when that was fine, the error OpenSSL reported.
pub fn explain(tls: &Tls, verify: X509VerifyResult, error: &str) -> String {
    let trusted = match (&tls.ca, &tls.ca_path) {
        (Some(ca), None) => format!("the CA in ssl_ca ('{}')", ca.display()),
        (None, Some(dir)) => format!("a CA in ssl_ca_path ('{}')", dir.display()),
        (Some(ca), Some(dir)) => format!(
            "the CAs in ssl_ca ('{}') or ssl_ca_path ('{}')",
            ca.display(),
            dir.display()
        ),
        (None, None) => {
            "a CA of this system's OpenSSL store (ssl_ca and ssl_ca_path are empty)".to_owned()
        }
    };
    if verify != X509VerifyResult::OK {
        let why = verify.error_string();
        // X509_V_ERR_* numbers, stable across OpenSSL versions.
        let advice = match verify.as_raw() {
            2 | 7 | 18 | 19 | 20 | 21 => format!(
                "the server's certificate is not signed by {trusted}: name the CA that signed \
                 it in ssl_ca (ssl_no_verify = 1 skips the check, for testing only)"
            ),
            9 | 10 => "the server's certificate is outside its validity period (or this host's \
                       clock is wrong)"
                .to_owned(),
            24 => "a certificate in the server's chain is used as a CA but is not one (an \
                   intermediate CA needs basicConstraints CA:TRUE, a version 3 certificate)"
                .to_owned(),
            22 => "the server's certificate chain is longer than 9 certificates".to_owned(),
            _ => format!("check ssl_ca / ssl_ca_path: the chain must end at {trusted}"),
        };
        return format!("the server's certificate was refused ({why}): {advice}");
    }
    let advice = if error.contains("no cipher") || error.contains("handshake failure") {
        match &tls.cipher {
            Some(c) => format!(
                "the server accepts none of the ciphers in ssl_cipher ('{c}'): list one it \
                 offers (its ssl_cipher / tls_version settings), or leave ssl_cipher empty"
            ),
            None => "the server and this client share no cipher or protocol version".to_owned(),
        }
    } else if error.contains("closed the connection right after the TLS handshake")
        || error.contains("certificate required")
        || error.contains("unknown ca")
        || error.contains("bad certificate")
        || error.contains("certificate unknown")
    {
        if tls.client.is_some() {
            "the server refused the client certificate in ssl_cert: it must be signed by a CA \
             in the server's ssl_ca"
                .to_owned()
        } else {
            "the server requires a client certificate: set ssl_cert and ssl_key".to_owned()
        }
    } else {
        "check [database] host, port and the ssl_* keys".to_owned()
    };
    format!("{error}: {advice}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_cover_one_leftmost_label_as_php_does() {
        assert!(wildcard_match("db.example.com", "*.example.com"));
        assert!(wildcard_match("DB.Example.com", "*.example.COM"));
        assert!(!wildcard_match("example.com", "*.example.com"));
        assert!(!wildcard_match("a.b.example.com", "*.example.com"));
        assert!(wildcard_match("db1.example.com", "db*.example.com"));
        assert!(!wildcard_match("db.example.com", "db.*.com"));
        assert!(wildcard_match("127.0.0.1", "127.0.0.1"));
        assert!(!wildcard_match("127.0.0.1", "127.0.0.2"));
        assert!(
            !wildcard_match("aaaa", "a*aaaa"),
            "prefix and suffix may not overlap"
        );
        assert!(!wildcard_match("é.example.com", "\u{e9}x*.example.com"));
        assert!(wildcard_match("dbé.example.com", "db*.example.com"));
    }

    #[test]
    fn a_bad_cipher_list_names_ssl_cipher() {
        let tls = Tls {
            ca: None,
            ca_path: None,
            client: None,
            cipher: Some("NO-SUCH-CIPHER".into()),
            verify: true,
        };
        match context(&tls) {
            Err(Error::Configuration(m)) => {
                assert!(m.contains("ssl_cipher 'NO-SUCH-CIPHER'"), "{m}")
            }
            other => panic!("{:?}", other.err()),
        }
    }

    #[test]
    fn unreadable_files_are_named() {
        let tls = Tls {
            ca: Some("/nonexistent/ca.pem".into()),
            ca_path: None,
            client: None,
            cipher: None,
            verify: true,
        };
        match context(&tls) {
            Err(Error::Configuration(m)) => {
                assert!(m.contains("ssl_ca '/nonexistent/ca.pem'"), "{m}")
            }
            other => panic!("{:?}", other.err()),
        }
        let dir_is_a_file = Tls {
            ca: None,
            ca_path: Some("/etc/hostname".into()),
            ..tls
        };
        match context(&dir_is_a_file) {
            Err(Error::Configuration(m)) => assert!(m.contains("is not a directory"), "{m}"),
            other => panic!("{:?}", other.err()),
        }
    }
}

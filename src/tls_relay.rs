//! Puts OpenSSL between the `mysql` crate and the server.
//!
//! The crate's own TLS backends cannot do what mysqlnd does (rustls refuses version 1
//! certificates and OpenSSL cipher lists; its native-tls backend takes no cipher list, no CA
//! directory and trusts the system store beside `ssl_ca`), and it takes no TLS stream from
//! outside. So the crate talks plain protocol over a Unix socket in a private directory to a
//! thread of ours, and that thread holds the TCP connection to the server:
//!
//! 1. the server's greeting goes to the crate as it is;
//! 2. the crate's handshake response (sequence 1) tells us its capabilities: its first 32 bytes
//!    with `CLIENT_SSL` set are exactly the `SSLRequest` a TLS client sends, and we send that;
//! 3. the TLS handshake, verified as mysqlnd verifies (`crate::tls`), before anything secret
//!    leaves: a failure is recorded for `connect` to report, and the crate sees the socket close;
//! 4. the crate's response follows over TLS as sequence 2; until the server ends the
//!    authentication (an OK or ERR packet), packets from the server go to the crate one
//!    sequence number lower and the crate's go to the server one higher;
//! 5. then bytes are copied both ways until either side closes.
//!
//! The socket is removed as soon as the crate is connected. The thread holds no PHP state and
//! ends when either side closes (the crate closes when its `Conn` is dropped).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openssl::ssl::{ErrorCode, Ssl, SslStream};

use crate::config::{DbConfig, Tls};
use crate::error::{errno, Error, Result};

const CLIENT_SSL: u32 = 0x0800;
/// What `crate::tls::explain` hears when the server hangs up between the TLS handshake and the
/// end of authentication: with TLS 1.3 that is how a refused client certificate shows.
const CLOSED_EARLY: &str = "the server closed the connection right after the TLS handshake";
const CLIENT_PROTOCOL_41: u32 = 0x0200;
/// Bytes buffered in one direction before we stop reading the other side.
const BACKLOG: usize = 1 << 20;

/// A relay waiting for the crate to connect to `socket`.
pub struct Relay {
    dir: PathBuf,
    socket: String,
    failure: Arc<Mutex<Option<Error>>>,
}

impl Relay {
    /// Connects to the server, reads its greeting and starts the relay thread. Everything is
    /// bounded by `connect_timeout`.
    pub fn start(config: &DbConfig, tls: &Tls) -> Result<Relay> {
        // Read the files and build the context first: a wrong key is named before any network.
        let context = crate::tls::context(tls)?;
        let target = || format!("{} as '{}'", config.target(), config.username);
        let io_error = |what: &str, e: std::io::Error| Error::Connection {
            target: target(),
            detail: format!("{what}: {e}"),
            code: errno::CONNECTION_ERROR,
        };
        let mut tcp = tcp_connect(&config.host, config.port, config.connect_timeout)
            .map_err(|e| io_error("cannot connect", e))?;
        tcp.set_nodelay(true).ok();
        tcp.set_read_timeout(Some(config.connect_timeout))
            .and_then(|()| tcp.set_write_timeout(Some(config.connect_timeout)))
            .map_err(|e| io_error("cannot set socket timeouts", e))?;
        let greeting = read_packet(&mut tcp).map_err(|e| Error::Connection {
            target: target(),
            detail: format!("the server sent no greeting: {e}"),
            code: errno::SERVER_LOST,
        })?;
        let is_error = greeting.get(4) == Some(&0xff);
        if !is_error && server_capabilities(&greeting[4..]) & CLIENT_SSL == 0 {
            return Err(Error::Connection {
                target: target(),
                detail: "enable_ssl is on but the server does not offer TLS: give the server a \
                         certificate (its ssl_cert and ssl_key settings), or set enable_ssl = 0"
                    .into(),
                code: errno::SSL_CONNECTION_ERROR,
            });
        }

        let dir =
            private_dir().map_err(|e| io_error("cannot create a private socket directory", e))?;
        let path = dir.join("s");
        let socket = path.to_string_lossy().into_owned();
        let listener = UnixListener::bind(&path).map_err(|e| {
            let _ = std::fs::remove_dir(&dir);
            io_error("cannot create the TLS relay's socket", e)
        })?;
        let failure = Arc::new(Mutex::new(None));
        let relay = Relay {
            dir: dir.clone(),
            socket,
            failure: failure.clone(),
        };
        let session = Session {
            tcp,
            greeting,
            is_error,
            context,
            host: config.host.clone(),
            verify: tls.verify,
            tls: tls.clone(),
            wait: config.connect_timeout,
            write_timeout: config.write_timeout,
            dir,
            target: target(),
            failure,
        };
        crate::library::pin();
        std::thread::Builder::new()
            .name("archive-claim-tls".into())
            .spawn(move || session.run(listener))
            .map_err(|e| io_error("cannot start the TLS relay thread", e))?;
        Ok(relay)
    }

    /// Where the crate connects.
    pub fn socket(&self) -> &str {
        &self.socket
    }

    /// The reason the relay gave up, if it did (a refused certificate, say).
    pub fn failure(&self) -> Option<Error> {
        self.failure.lock().ok().and_then(|mut f| f.take())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

struct Session {
    tcp: TcpStream,
    greeting: Vec<u8>,
    is_error: bool,
    context: openssl::ssl::SslContext,
    host: String,
    verify: bool,
    tls: Tls,
    wait: Duration,
    write_timeout: Duration,
    dir: PathBuf,
    target: String,
    failure: Arc<Mutex<Option<Error>>>,
}

impl Session {
    fn run(self, listener: UnixListener) {
        let Some(mut client) = accept(&listener, self.wait) else {
            return;
        };
        drop(listener);
        let _ = std::fs::remove_file(self.dir.join("s"));
        let _ = std::fs::remove_dir(&self.dir);
        if client.set_read_timeout(Some(self.wait)).is_err()
            || client.write_all(&self.greeting).is_err()
            || self.is_error
        {
            return;
        }
        let Ok(mut response) = read_packet(&mut client) else {
            return;
        };
        let target = self.target.clone();
        let failure = self.failure.clone();
        let fail = |detail: String, code: u16| {
            if let Ok(mut f) = failure.lock() {
                *f = Some(Error::Connection {
                    target: target.clone(),
                    detail,
                    code,
                });
            }
        };
        if response.len() < 4 + 32 || capabilities(&response[4..]) & CLIENT_PROTOCOL_41 == 0 {
            return fail(
                "the driver's handshake response is not protocol 4.1".into(),
                errno::CONNECTION_ERROR,
            );
        }
        let flags = (capabilities(&response[4..]) | CLIENT_SSL).to_le_bytes();
        response[4..8].copy_from_slice(&flags);
        // The SSLRequest: the response's fixed 32 bytes, under the response's sequence number.
        let mut ssl_request = vec![32, 0, 0, response[3]];
        ssl_request.extend_from_slice(&response[4..36]);
        let Session { mut tcp, .. } = self;
        if let Err(e) = tcp.write_all(&ssl_request) {
            return fail(
                format!("the server closed the connection: {e}"),
                errno::SERVER_LOST,
            );
        }
        let ssl = match Ssl::new(&self.context).and_then(|mut ssl| {
            if self.host.parse::<std::net::IpAddr>().is_err() {
                ssl.set_hostname(&self.host)?;
            }
            Ok(ssl)
        }) {
            Ok(ssl) => ssl,
            Err(e) => {
                return fail(
                    format!("TLS cannot start: {e}"),
                    errno::SSL_CONNECTION_ERROR,
                )
            }
        };
        let mut stream = match ssl.connect(tcp) {
            Ok(stream) => stream,
            Err(e) => {
                let (verify, error) = match &e {
                    openssl::ssl::HandshakeError::Failure(mid)
                    | openssl::ssl::HandshakeError::WouldBlock(mid) => {
                        (mid.ssl().verify_result(), handshake_reason(mid.error()))
                    }
                    openssl::ssl::HandshakeError::SetupFailure(stack) => {
                        (openssl::x509::X509VerifyResult::OK, stack.to_string())
                    }
                };
                return fail(
                    format!(
                        "TLS handshake failed: {}",
                        crate::tls::explain(&self.tls, verify, &error)
                    ),
                    errno::SSL_CONNECTION_ERROR,
                );
            }
        };
        if self.verify {
            let checked = match stream.ssl().peer_certificate() {
                Some(cert) => crate::tls::check_peer_name(&cert, &self.host),
                None => Err("the server sent no certificate".into()),
            };
            if let Err(why) = checked {
                let _ = stream.shutdown();
                return fail(
                    format!("TLS handshake failed: {why}"),
                    errno::SSL_CONNECTION_ERROR,
                );
            }
        }
        response[3] = response[3].wrapping_add(1);
        let mut sent = 0;
        let mut write_error = None;
        while sent < response.len() {
            match stream.ssl_write(&response[sent..]) {
                Ok(n) => sent += n,
                Err(e) => {
                    write_error = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = write_error {
            // The server may have refused our certificate already (TLS 1.3 tells us now).
            let mut alert = [0u8; 1];
            let reason = match stream.ssl_read(&mut alert) {
                Err(read) if read.ssl_error().is_some() => handshake_reason(&read),
                _ if e.ssl_error().is_some() => handshake_reason(&e),
                _ => CLOSED_EARLY.into(),
            };
            return fail(
                format!(
                    "TLS handshake failed: {}",
                    crate::tls::explain(&self.tls, openssl::x509::X509VerifyResult::OK, &reason)
                ),
                errno::SSL_CONNECTION_ERROR,
            );
        }
        let _ = client.set_write_timeout(Some(self.write_timeout));
        let tls = self.tls;
        // With TLS 1.3 the server judges our certificate after our side of the handshake is
        // done: its refusal is the first thing we read.
        pump(stream, client, move |error: String| {
            fail(
                format!(
                    "TLS handshake failed: {}",
                    crate::tls::explain(&tls, openssl::x509::X509VerifyResult::OK, &error)
                ),
                errno::SSL_CONNECTION_ERROR,
            )
        });
    }
}

fn handshake_reason(e: &openssl::ssl::Error) -> String {
    if let Some(stack) = e.ssl_error() {
        if let Some(reason) = stack.errors().iter().find_map(|e| e.reason()) {
            return reason.to_owned();
        }
    }
    match e.io_error() {
        Some(io) => format!("the connection broke during the handshake ({io})"),
        None => e.to_string(),
    }
}

fn tcp_connect(host: &str, port: u16, timeout: Duration) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::NotFound, "the host name has no address")
    }))
}

/// A directory only this user can enter, for the relay's socket.
fn private_dir() -> std::io::Result<PathBuf> {
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let name = format!(
        "matomo-archive-claim-tls-{}-{}-{nanos}",
        std::process::id(),
        COUNT.fetch_add(1, Ordering::Relaxed)
    );
    let mut base = std::env::temp_dir();
    // sun_path holds 108 bytes.
    if base.as_os_str().len() + name.len() + 3 > 100 {
        base = PathBuf::from("/tmp");
    }
    let dir = base.join(name);
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}

fn accept(listener: &UnixListener, wait: Duration) -> Option<UnixStream> {
    let mut fd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&mut fd, 1, ms) } != 1 {
        return None;
    }
    listener.accept().ok().map(|(s, _)| s)
}

/// One whole packet, header included.
fn read_packet(from: &mut impl Read) -> std::io::Result<Vec<u8>> {
    let mut packet = vec![0; 4];
    from.read_exact(&mut packet)?;
    let len = usize::from(packet[0]) | usize::from(packet[1]) << 8 | usize::from(packet[2]) << 16;
    packet.resize(4 + len, 0);
    from.read_exact(&mut packet[4..])?;
    Ok(packet)
}

/// The capability flags at the start of a handshake response.
fn capabilities(payload: &[u8]) -> u32 {
    payload
        .get(..4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .unwrap_or(0)
}

/// The capability flags of a server greeting (protocol 10): the lower two bytes follow the
/// version string, the thread id, 8 bytes of scramble and a filler byte.
fn server_capabilities(greeting: &[u8]) -> u32 {
    let Some(nul) = greeting.iter().skip(1).position(|&b| b == 0) else {
        return 0;
    };
    let at = 1 + nul + 1 + 4 + 8 + 1;
    let lower = greeting
        .get(at..at + 2)
        .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
    let upper = greeting
        .get(at + 5..at + 7)
        .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
    u32::from(lower) | u32::from(upper) << 16
}

/// Renumbers packets during authentication (see the module comment); passes bytes after it.
#[derive(Default)]
struct Splice {
    done: bool,
    from_server: Vec<u8>,
    from_client: Vec<u8>,
}

impl Splice {
    fn server(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if self.done {
            out.extend_from_slice(data);
            return;
        }
        self.from_server.extend_from_slice(data);
        while !self.done {
            let Some(mut packet) = take_packet(&mut self.from_server) else {
                return;
            };
            packet[3] = packet[3].wrapping_sub(1);
            // OK or ERR ends authentication; 0x01 (more data) and 0xFE (switch) continue it.
            self.done = matches!(packet.get(4), Some(0x00 | 0xff));
            out.extend_from_slice(&packet);
        }
        out.append(&mut self.from_server);
    }

    fn client(&mut self, data: &[u8], out: &mut Vec<u8>) {
        if self.done {
            out.append(&mut self.from_client);
            out.extend_from_slice(data);
            return;
        }
        self.from_client.extend_from_slice(data);
        while let Some(mut packet) = take_packet(&mut self.from_client) {
            packet[3] = packet[3].wrapping_add(1);
            out.extend_from_slice(&packet);
        }
    }
}

fn take_packet(buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let len = usize::from(*buf.first()?)
        | usize::from(*buf.get(1)?) << 8
        | usize::from(*buf.get(2)?) << 16;
    if buf.len() < 4 + len {
        return None;
    }
    Some(buf.drain(..4 + len).collect())
}

fn would_block(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
    )
}

/// Copies between the server (TLS) and the crate until either side closes or fails.
/// `refused` hears why the server broke off before authentication ended.
fn pump(mut server: SslStream<TcpStream>, mut client: UnixStream, refused: impl FnOnce(String)) {
    if server.get_ref().set_nonblocking(true).is_err() || client.set_nonblocking(true).is_err() {
        return;
    }
    let mut splice = Splice::default();
    let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
    let mut buf = vec![0u8; 16 * 1024];
    let mut client_closed = false;
    loop {
        let mut server_wants_write = false;
        while to_client.len() < BACKLOG {
            match server.ssl_read(&mut buf) {
                Ok(0) if !splice.done => return refused(CLOSED_EARLY.into()),
                Ok(0) => return,
                Ok(n) => splice.server(&buf[..n], &mut to_client),
                Err(e) if e.code() == ErrorCode::WANT_READ => break,
                Err(e) if e.code() == ErrorCode::WANT_WRITE => {
                    server_wants_write = true;
                    break;
                }
                Err(e) => {
                    if !splice.done {
                        return refused(match e.ssl_error() {
                            Some(_) => handshake_reason(&e),
                            None => CLOSED_EARLY.into(),
                        });
                    }
                    // The server closed (or failed): hand over what it said last, then close.
                    let _ = client.set_nonblocking(false);
                    let _ = client.write_all(&to_client);
                    return;
                }
            }
        }
        while !to_client.is_empty() {
            match client.write(&to_client) {
                Ok(0) => return,
                Ok(n) => drop(to_client.drain(..n)),
                Err(e) if would_block(&e) => break,
                Err(_) => return,
            }
        }
        while !client_closed && to_server.len() < BACKLOG {
            match client.read(&mut buf) {
                Ok(0) => client_closed = true,
                Ok(n) => splice.client(&buf[..n], &mut to_server),
                Err(e) if would_block(&e) => break,
                Err(_) => client_closed = true,
            }
        }
        while !to_server.is_empty() {
            match server.ssl_write(&to_server) {
                Ok(n) => drop(to_server.drain(..n)),
                Err(e) if e.code() == ErrorCode::WANT_WRITE => {
                    server_wants_write = true;
                    break;
                }
                Err(e) if e.code() == ErrorCode::WANT_READ => break,
                Err(_) => return,
            }
        }
        if client_closed && to_server.is_empty() {
            let _ = server.shutdown();
            return;
        }
        let mut fds = [
            libc::pollfd {
                fd: server.get_ref().as_raw_fd(),
                events: if to_client.len() < BACKLOG {
                    libc::POLLIN
                } else {
                    0
                } | if server_wants_write || !to_server.is_empty() {
                    libc::POLLOUT
                } else {
                    0
                },
                revents: 0,
            },
            libc::pollfd {
                fd: client.as_raw_fd(),
                events: if !client_closed && to_server.len() < BACKLOG {
                    libc::POLLIN
                } else {
                    0
                } | if to_client.is_empty() {
                    0
                } else {
                    libc::POLLOUT
                },
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfds.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if ready < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(seq: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![payload.len() as u8, 0, 0, seq];
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn authentication_packets_are_renumbered_until_ok_then_passed_as_they_are() {
        let mut s = Splice::default();
        let mut to_client = Vec::new();
        // An auth switch request arrives in two pieces.
        let switch = packet(3, b"\xfemysql_native_password\0scramble");
        s.server(&switch[..5], &mut to_client);
        assert!(to_client.is_empty());
        s.server(&switch[5..], &mut to_client);
        assert_eq!(to_client, packet(2, b"\xfemysql_native_password\0scramble"));
        let mut to_server = Vec::new();
        s.client(&packet(3, b"answer"), &mut to_server);
        assert_eq!(to_server, packet(4, b"answer"));
        to_client.clear();
        let mut ok_then_more = packet(5, b"\x00\x00\x00\x02\x00\x00\x00");
        ok_then_more.extend_from_slice(b"raw");
        s.server(&ok_then_more, &mut to_client);
        let mut expected = packet(4, b"\x00\x00\x00\x02\x00\x00\x00");
        expected.extend_from_slice(b"raw");
        assert_eq!(to_client, expected);
        to_server.clear();
        s.client(&packet(0, b"\x03SELECT 1"), &mut to_server);
        assert_eq!(
            to_server,
            packet(0, b"\x03SELECT 1"),
            "commands start at 0 again"
        );
    }

    #[test]
    fn the_greeting_says_whether_the_server_offers_tls() {
        let mut g = vec![10];
        g.extend_from_slice(b"10.11.6-MariaDB\0");
        g.extend_from_slice(&[1, 0, 0, 0]);
        g.extend_from_slice(b"12345678\0");
        g.extend_from_slice(&(0xfffe_u16).to_le_bytes());
        g.extend_from_slice(&[45, 2, 0]);
        g.extend_from_slice(&(0x81bf_u16).to_le_bytes());
        assert_eq!(server_capabilities(&g) & CLIENT_SSL, CLIENT_SSL);
        assert_eq!(server_capabilities(&g) >> 16, 0x81bf);
        let idx = g.len() - 7;
        g[idx..idx + 2].copy_from_slice(&(0xfffe_u16 & !0x0800).to_le_bytes());
        assert_eq!(server_capabilities(&g) & CLIENT_SSL, 0);
        assert_eq!(server_capabilities(b"\x0a"), 0);
    }
}

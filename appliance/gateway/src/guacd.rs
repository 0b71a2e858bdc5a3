//! The guacd engine's connection: TCP (optionally TLS) to guacd and guacd's
//! handshake, as guacamole-client's `ConfiguredGuacamoleSocket` performs it.
//!
//! ```text
//! → select,<protocol>;
//! ← args,VERSION_1_5_0,<name>,<name>,...;        first element: guacd's version
//! → size,<w>,<h>,<dpi>; audio,...; video,...; image,...;
//!   timezone,<tz>;        (version ≥ 1.1.0, when the browser gave one)
//!   name,<name>;          (version ≥ 1.5.0)
//!   connect,VERSION_1_5_0,<value of each name>,...;   by name, never by position
//! ← ready,$<connection id>;
//! ```
//!
//! An `error` from guacd at any step ends the handshake with
//! [`TunnelError::Refused`], which carries guacd's instruction to forward.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use daas_guacamole::{Decoder, Instruction, Status};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::{DisplayParams, TunnelConfig, TunnelError};

/// A Guacamole protocol version, as guacd announces it in the first element
/// of `args` (`VERSION_1_5_0`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtocolVersion {
    /// Major version.
    pub major: u16,
    /// Minor version.
    pub minor: u16,
    /// Patch version.
    pub patch: u16,
}

impl ProtocolVersion {
    /// 1.0.0: what a guacd that announces no version speaks.
    pub const V1_0_0: ProtocolVersion = ProtocolVersion::new(1, 0, 0);
    /// 1.1.0: the `timezone` handshake instruction.
    pub const V1_1_0: ProtocolVersion = ProtocolVersion::new(1, 1, 0);
    /// 1.5.0: the `name` handshake instruction; the newest we speak.
    pub const V1_5_0: ProtocolVersion = ProtocolVersion::new(1, 5, 0);
    /// The newest version the gateway speaks.
    pub const LATEST: ProtocolVersion = ProtocolVersion::V1_5_0;

    /// A version.
    pub const fn new(major: u16, minor: u16, patch: u16) -> Self {
        ProtocolVersion {
            major,
            minor,
            patch,
        }
    }

    /// Parses `VERSION_<major>_<minor>_<patch>`.
    pub fn parse(s: &str) -> Option<ProtocolVersion> {
        let mut parts = s.strip_prefix("VERSION_")?.split('_');
        let mut next = || -> Option<u16> {
            let p = parts.next()?;
            if p.is_empty() || p.len() > 4 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            p.parse().ok()
        };
        let v = ProtocolVersion::new(next()?, next()?, next()?);
        parts.next().is_none().then_some(v)
    }

    /// The version both sides speak: guacd's, capped at [`Self::LATEST`].
    pub fn negotiate(guacd: ProtocolVersion) -> ProtocolVersion {
        guacd.min(ProtocolVersion::LATEST)
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VERSION_{}_{}_{}", self.major, self.minor, self.patch)
    }
}

/// A TLS client configuration that trusts the CA certificates of a PEM file,
/// for [`TunnelConfig::guacd_tls`].
pub fn guacd_tls_config(ca_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>, TunnelError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        let cert = cert.map_err(|e| TunnelError::Tls(format!("bad PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| TunnelError::Tls(format!("bad CA certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(TunnelError::Tls("no CA certificate in the PEM".into()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TunnelError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

fn system_tls_config() -> Result<Arc<rustls::ClientConfig>, TunnelError> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let pem = std::fs::read(SYSTEM_CA_BUNDLE)
                .map_err(|e| format!("cannot read {SYSTEM_CA_BUNDLE}: {e}"))?;
            guacd_tls_config(&pem).map_err(|e| e.to_string())
        })
        .clone()
        .map_err(TunnelError::Tls)
}

/// The connection to guacd: plain TCP or TLS.
pub(crate) enum GuacdStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// The host part of `HOST:PORT` or `[V6]:PORT`.
fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    addr.rsplit_once(':').map_or(addr, |(host, _)| host)
}

/// Connects to guacd, with TLS if asked. Each step has `cfg.upstream_timeout`.
pub(crate) async fn connect(
    addr: &str,
    tls: bool,
    cfg: &TunnelConfig,
) -> Result<GuacdStream, TunnelError> {
    let unreachable = |source| TunnelError::UpstreamUnreachable {
        what: "guacd",
        addr: addr.to_owned(),
        source,
    };
    let tcp = match timeout(cfg.upstream_timeout, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(e)) => return Err(unreachable(e)),
        Err(_) => return Err(unreachable(io::ErrorKind::TimedOut.into())),
    };
    // Small instructions (keys, mouse moves) go out at once.
    let _ = tcp.set_nodelay(true);
    if !tls {
        return Ok(GuacdStream::Plain(tcp));
    }
    let config = match &cfg.guacd_tls {
        Some(c) => c.clone(),
        None => system_tls_config()?,
    };
    let name = ServerName::try_from(host_of(addr).to_owned())
        .map_err(|_| TunnelError::Tls(format!("{addr:?} has no valid host name")))?;
    let connector = tokio_rustls::TlsConnector::from(config);
    match timeout(cfg.upstream_timeout, connector.connect(name, tcp)).await {
        Ok(Ok(stream)) => Ok(GuacdStream::Tls(Box::new(stream))),
        Ok(Err(e)) => Err(unreachable(e)),
        Err(_) => Err(TunnelError::UpstreamTimeout { step: "tls" }),
    }
}

impl AsyncRead for GuacdStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            GuacdStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            GuacdStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for GuacdStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            GuacdStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            GuacdStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            GuacdStream::Plain(s) => Pin::new(s).poll_flush(cx),
            GuacdStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            GuacdStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            GuacdStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// What the handshake settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Handshake {
    /// The connection id from `ready` (`$<uuid>`).
    pub(crate) id: String,
    /// The version both sides speak.
    pub(crate) version: ProtocolVersion,
}

/// What the gateway asks guacd for.
pub(crate) struct Request<'a> {
    pub(crate) protocol: &'a str,
    pub(crate) args: &'a HashMap<String, String>,
    pub(crate) params: &'a DisplayParams,
    pub(crate) name: &'a str,
}

/// Performs guacd's handshake on `io`. Bytes guacd sends after `ready` stay in
/// `decoder` for the relay.
pub(crate) async fn handshake<T>(
    io: &mut T,
    decoder: &mut Decoder,
    request: &Request<'_>,
    step_timeout: Duration,
) -> Result<Handshake, TunnelError>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = Vec::with_capacity(512);
    Instruction::new("select", [request.protocol]).write_to(&mut out);
    write_flush(io, &out).await?;

    let args = expect(io, decoder, "args", step_timeout).await?;
    let (reply, version) = connect_instruction(&args.args, request.args);

    out.clear();
    let p = request.params;
    Instruction::new(
        "size",
        [p.width.to_string(), p.height.to_string(), p.dpi.to_string()],
    )
    .write_to(&mut out);
    Instruction::new("audio", &p.audio).write_to(&mut out);
    Instruction::new("video", &p.video).write_to(&mut out);
    Instruction::new("image", &p.image).write_to(&mut out);
    if version >= ProtocolVersion::V1_1_0 {
        if let Some(tz) = &p.timezone {
            Instruction::new("timezone", [tz]).write_to(&mut out);
        }
    }
    if version >= ProtocolVersion::V1_5_0 {
        Instruction::new("name", [request.name]).write_to(&mut out);
    }
    reply.write_to(&mut out);
    write_flush(io, &out).await?;

    let ready = expect(io, decoder, "ready", step_timeout).await?;
    match ready.arg(0) {
        Some(id) if !id.is_empty() => Ok(Handshake {
            id: id.to_owned(),
            version,
        }),
        _ => Err(TunnelError::Handshake("no connection id in ready".into())),
    }
}

/// The `connect` instruction answering guacd's `args`: the version element
/// answered with the negotiated version, every other name with its value from
/// `values` (empty when there is none).
pub(crate) fn connect_instruction(
    names: &[String],
    values: &HashMap<String, String>,
) -> (Instruction, ProtocolVersion) {
    let mut version = ProtocolVersion::V1_0_0;
    let mut reply = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        if i == 0 {
            if let Some(v) = ProtocolVersion::parse(name) {
                version = ProtocolVersion::negotiate(v);
                reply.push(version.to_string());
                continue;
            }
        }
        reply.push(values.get(name).cloned().unwrap_or_default());
    }
    (Instruction::new("connect", reply), version)
}

async fn write_flush<T: AsyncWrite + Unpin>(io: &mut T, bytes: &[u8]) -> Result<(), TunnelError> {
    io.write_all(bytes).await.map_err(TunnelError::UpstreamIo)?;
    io.flush().await.map_err(TunnelError::UpstreamIo)
}

/// Reads the next instruction, which must be `opcode` (a `nop` is skipped);
/// an `error` is [`TunnelError::Refused`].
async fn expect<T: AsyncRead + Unpin>(
    io: &mut T,
    decoder: &mut Decoder,
    opcode: &'static str,
    step_timeout: Duration,
) -> Result<Instruction, TunnelError> {
    let read = async {
        let mut buf = [0u8; 2048];
        loop {
            while let Some(raw) = decoder.next_raw().map_err(TunnelError::UpstreamProtocol)? {
                match raw.opcode() {
                    "nop" => continue,
                    "error" => {
                        let mut args = raw.args();
                        let message = args.next().unwrap_or_default().to_owned();
                        let status = args
                            .next()
                            .and_then(|c| c.parse().ok())
                            .and_then(Status::from_code)
                            .filter(|s| s.is_error())
                            .unwrap_or(Status::UpstreamError);
                        return Err(TunnelError::Refused {
                            status,
                            message,
                            raw: raw.as_str().to_owned(),
                        });
                    }
                    op if op == opcode => return Ok(raw.to_instruction()),
                    op => {
                        return Err(TunnelError::Handshake(format!(
                            "expected {opcode:?}, got {:?}",
                            op.chars().take(32).collect::<String>()
                        )))
                    }
                }
            }
            let n = io.read(&mut buf).await.map_err(TunnelError::UpstreamIo)?;
            if n == 0 {
                return Err(TunnelError::Handshake(format!(
                    "guacd closed the connection before {opcode:?}"
                )));
            }
            decoder
                .push(&buf[..n])
                .map_err(TunnelError::UpstreamProtocol)?;
        }
    };
    match timeout(step_timeout, read).await {
        Ok(r) => r,
        Err(_) => Err(TunnelError::UpstreamTimeout { step: opcode }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let v = |s| ProtocolVersion::parse(s);
        assert_eq!(v("VERSION_1_5_0"), Some(ProtocolVersion::V1_5_0));
        assert_eq!(v("VERSION_1_1_0"), Some(ProtocolVersion::V1_1_0));
        assert_eq!(v("VERSION_2_10_3"), Some(ProtocolVersion::new(2, 10, 3)));
        for bad in [
            "hostname",
            "VERSION_1_5",
            "VERSION_1_5_0_0",
            "VERSION_a_5_0",
            "VERSION__5_0",
            "version_1_5_0",
            "VERSION_99999_0_0",
        ] {
            assert_eq!(v(bad), None, "{bad}");
        }
        assert_eq!(ProtocolVersion::V1_5_0.to_string(), "VERSION_1_5_0");
        assert_eq!(
            ProtocolVersion::negotiate(ProtocolVersion::new(1, 6, 0)),
            ProtocolVersion::V1_5_0
        );
        assert_eq!(
            ProtocolVersion::negotiate(ProtocolVersion::V1_1_0),
            ProtocolVersion::V1_1_0
        );
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn connect_fills_by_name() {
        let values: HashMap<String, String> = [
            ("hostname", "10.0.0.5"),
            ("port", "5901"),
            ("password", "s3cr,t;"),
            ("unused", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let (i, v) = connect_instruction(
            &names(&["VERSION_1_5_0", "port", "read-only", "hostname", "password"]),
            &values,
        );
        assert_eq!(v, ProtocolVersion::V1_5_0);
        assert_eq!(
            i.encode(),
            "7.connect,13.VERSION_1_5_0,4.5901,0.,8.10.0.0.5,7.s3cr,t;;"
        );
        // A newer guacd gets our version; an older one its own.
        let (i, v) = connect_instruction(&names(&["VERSION_1_7_0", "hostname"]), &values);
        assert_eq!(
            (i.args[0].as_str(), v),
            ("VERSION_1_5_0", ProtocolVersion::V1_5_0)
        );
        let (i, v) = connect_instruction(&names(&["VERSION_1_1_0", "hostname"]), &values);
        assert_eq!(
            (i.args[0].as_str(), v),
            ("VERSION_1_1_0", ProtocolVersion::V1_1_0)
        );
        // No version element: a name like any other, and protocol 1.0.0.
        let (i, v) = connect_instruction(&names(&["hostname", "port"]), &values);
        assert_eq!(
            (i.args, v),
            (names(&["10.0.0.5", "5901"]), ProtocolVersion::V1_0_0)
        );
        // Only the first element can be the version.
        let (i, _) = connect_instruction(&names(&["hostname", "VERSION_1_5_0"]), &values);
        assert_eq!(i.args, names(&["10.0.0.5", ""]));
    }

    #[test]
    fn hosts() {
        assert_eq!(host_of("guacd.example:4822"), "guacd.example");
        assert_eq!(host_of("127.0.0.1:4822"), "127.0.0.1");
        assert_eq!(host_of("[::1]:4822"), "::1");
        assert_eq!(host_of("guacd"), "guacd");
    }

    async fn run_handshake(
        server_says: &'static [u8],
        version_seen: &mut Vec<u8>,
    ) -> Result<Handshake, TunnelError> {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let server_task = tokio::spawn(async move {
            server.write_all(server_says).await.unwrap();
            let mut got = Vec::new();
            let _ = tokio::time::timeout(Duration::from_millis(200), server.read_to_end(&mut got))
                .await;
            got
        });
        let args = HashMap::from([("hostname".to_owned(), "h".to_owned())]);
        let params = DisplayParams {
            width: 1024,
            height: 768,
            dpi: 96,
            timezone: Some("Europe/Berlin".into()),
            image: vec!["image/png".into(), "image/jpeg".into()],
            ..DisplayParams::default()
        };
        let request = Request {
            protocol: "vnc",
            args: &args,
            params: &params,
            name: "alice",
        };
        let mut decoder = Decoder::new();
        let r = handshake(
            &mut client,
            &mut decoder,
            &request,
            Duration::from_millis(100),
        )
        .await;
        drop(client);
        *version_seen = server_task.await.unwrap();
        r
    }

    #[tokio::test]
    async fn handshake_1_5_and_1_0() {
        let mut sent = Vec::new();
        let h = run_handshake(
            b"4.args,13.VERSION_1_5_0,8.hostname;5.ready,5.$abcd;",
            &mut sent,
        )
        .await
        .unwrap();
        assert_eq!(
            h,
            Handshake {
                id: "$abcd".into(),
                version: ProtocolVersion::V1_5_0
            }
        );
        assert_eq!(
            String::from_utf8(sent.clone()).unwrap(),
            "6.select,3.vnc;4.size,4.1024,3.768,2.96;5.audio;5.video;5.image,9.image/png,10.image/jpeg;\
             8.timezone,13.Europe/Berlin;4.name,5.alice;7.connect,13.VERSION_1_5_0,1.h;"
        );
        // guacd before 1.0 announces no version: no timezone, no name.
        let h = run_handshake(b"4.args,8.hostname;3.nop;5.ready,2.$x;", &mut sent)
            .await
            .unwrap();
        assert_eq!(h.version, ProtocolVersion::V1_0_0);
        assert!(String::from_utf8(sent)
            .unwrap()
            .ends_with("5.image,9.image/png,10.image/jpeg;7.connect,1.h;"));
    }

    #[tokio::test]
    async fn handshake_failures() {
        let mut sent = Vec::new();
        let e = run_handshake(b"5.error,16.Protocol invalid,3.515;", &mut sent)
            .await
            .unwrap_err();
        match e {
            TunnelError::Refused {
                status,
                message,
                raw,
            } => {
                assert_eq!(
                    (status, message.as_str()),
                    (Status::UpstreamError, "Protocol invalid")
                );
                assert_eq!(raw, "5.error,16.Protocol invalid,3.515;");
            }
            e => panic!("{e:?}"),
        }
        let e = run_handshake(b"4.args,13.VERSION_1_5_0;5.error,3.bad,3.519;", &mut sent)
            .await
            .unwrap_err();
        assert_eq!(e.status(), Status::UpstreamNotFound);
        let e = run_handshake(b"4.args,13.VERSION_1_5_0;5.error,3.bad,4.9999;", &mut sent)
            .await
            .unwrap_err();
        assert_eq!(e.status(), Status::UpstreamError);
        let e = run_handshake(b"4.size,1.1;", &mut sent).await.unwrap_err();
        assert!(matches!(e, TunnelError::Handshake(_)), "{e:?}");
        let e = run_handshake(b"4.args,13.VERSION_1_5_0;5.ready;", &mut sent)
            .await
            .unwrap_err();
        assert!(matches!(e, TunnelError::Handshake(_)), "{e:?}");
        let e = run_handshake(b"4.args,3.VERSION_1_5_0;", &mut sent)
            .await
            .unwrap_err();
        assert!(matches!(e, TunnelError::UpstreamProtocol(_)), "{e:?}");
        let e = run_handshake(b"4.args,13.VERSION_1_5_0;", &mut sent)
            .await
            .unwrap_err();
        assert!(
            matches!(e, TunnelError::UpstreamTimeout { step: "ready" }),
            "{e:?}"
        );
        let e = run_handshake(b"", &mut sent).await.unwrap_err();
        assert!(
            matches!(e, TunnelError::UpstreamTimeout { step: "args" }),
            "{e:?}"
        );
    }
}

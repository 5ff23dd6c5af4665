//! TLS for AURA's gRPC listeners and for the channels to internal services.
//!
//! Listeners: tonic's `ServerTlsConfig` reads its certificate once, so a role serving TLS
//! terminates it here instead. A tokio-rustls acceptor asks [`ServerTls`] for the current
//! certificate at every handshake; [`ServerTls::reload`] swaps it. A connection keeps the
//! certificate it was made with, so a reload never touches open connections, and a pair
//! that does not load leaves the current one in place.
//!
//! Channels: [`ClientTls`] is the private CA (`--internal-tls-ca`) that `https://` endpoints
//! of the Scheduler and Events are checked against; `http://` endpoints ignore it.

use std::{
    fmt, io,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, PoisonError, RwLock},
    task::{Context, Poll},
    time::Duration,
};

use rustls::{
    ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_rustls::{TlsAcceptor, server::TlsStream};
use tokio_stream::{Stream, StreamExt, wrappers::ReceiverStream};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How long a client may take to finish its handshake. Handshakes run on their own tasks,
/// so a slow one never delays others; the limit only frees what a silent client holds.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a certificate, key or CA could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read.
    #[error("cannot read TLS {what} {path}: {source}")]
    Read { what: &'static str, path: PathBuf, source: io::Error },
    /// The file holds no usable PEM item of the expected kind.
    #[error("TLS {what} {path}: {message}")]
    Pem { what: &'static str, path: PathBuf, message: String },
    /// The key is not one rustls can sign with, or does not belong to the certificate.
    #[error("TLS key {key} does not fit certificate {cert}: {source}")]
    Pair { cert: PathBuf, key: PathBuf, source: rustls::Error },
}

// ---------------------------------------------------------------------------------------
// Serving.

/// A listener's certificate and key, reloadable from their files. Cheap to clone: clones
/// share the certificate, so a reload through any of them applies to all.
#[derive(Clone)]
pub struct ServerTls {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: Arc<CurrentCert>,
    acceptor: TlsAcceptor,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").field("cert", &self.cert_path).field("key", &self.key_path).finish()
    }
}

/// The certificate handed to every new handshake (rustls asks for it each time).
struct CurrentCert(RwLock<Arc<CertifiedKey>>);

impl fmt::Debug for CurrentCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CurrentCert")
    }
}

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(PoisonError::into_inner).clone())
    }
}

/// ring, as everywhere in AURA (it builds in a fraction of aws-lc's time). Explicit rather
/// than the process default, which depends on what else installed one first.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl ServerTls {
    /// Loads a PEM certificate chain and its PEM private key.
    pub fn from_files(cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Result<Self, TlsError> {
        let (cert_path, key_path) = (cert.into(), key.into());
        let provider = provider();
        let current =
            Arc::new(CurrentCert(RwLock::new(Arc::new(load_pair(&cert_path, &key_path, &provider)?))));
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports rustls' default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        // gRPC is HTTP/2 only; clients that negotiate ALPN (grpcurl, Go, Envoy) insist on h2.
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(ServerTls { cert_path, key_path, current, acceptor: TlsAcceptor::from(Arc::new(config)) })
    }

    /// Reads the files again and serves the new pair to new connections. On error the
    /// current pair stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let pair = load_pair(&self.cert_path, &self.key_path, &provider())?;
        *self.current.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(pair);
        Ok(())
    }

    /// The certificate file.
    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    /// Accepts TCP connections (TCP_NODELAY, keepalive: [`crate::grpc::incoming`]) and
    /// yields those whose handshake succeeds. Each handshake runs on its own task; a failed
    /// one is logged at debug and dropped. Stops accepting once the returned stream is
    /// dropped (the server stopped), which closes the listener.
    fn accept(&self, listener: TcpListener) -> ReceiverStream<io::Result<Conn>> {
        let mut tcp = crate::grpc::incoming(listener);
        let acceptor = self.acceptor.clone();
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    _ = tx.closed() => return,
                    next = tcp.next() => match next {
                        Some(Ok(stream)) => stream,
                        // Accept errors (e.g. out of file descriptors) go to tonic, as without TLS.
                        Some(Err(e)) => {
                            let _ = tx.send(Err(e)).await;
                            continue;
                        }
                        None => return,
                    },
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    let peer = stream.peer_addr().ok();
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send(Ok(Conn::Tls(Box::new(tls)))).await;
                        }
                        Ok(Err(error)) => tracing::debug!(?peer, %error, "tls handshake failed"),
                        Err(_) => tracing::debug!(?peer, "tls handshake timed out"),
                    }
                });
            }
        });
        ReceiverStream::new(rx)
    }
}

fn load_pair(cert_path: &Path, key_path: &Path, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain = parse_certs(&read(cert_path, "certificate")?, cert_path, "certificate")?;
    let key_pem = read(key_path, "key")?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
        what: "key",
        path: key_path.to_path_buf(),
        message: e.to_string(),
    })?;
    // Checks that the key is the certificate's (when the key type lets it tell).
    CertifiedKey::from_der(chain, key, provider).map_err(|source| TlsError::Pair {
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
        source,
    })
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { what, path: path.to_path_buf(), source })
}

/// Every certificate of the PEM text of file `path`; at least one.
fn parse_certs(
    pem: &[u8],
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |message: String| TlsError::Pem { what, path: path.to_path_buf(), message };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error("no PEM certificate in the file".into()));
    }
    Ok(certs)
}

/// Reloads `tls` from its files on every SIGHUP until `shutdown`; a pair that does not load
/// is logged as an error and the current one stays.
///
/// The binary's role wiring calls this, not the services: a signal belongs to the whole
/// process, and handling it replaces SIGHUP's default action (terminate) for good, which a
/// library embedded in tests or other programs must not do behind its caller's back. The
/// handler is registered before this returns, so a SIGHUP sent once the role says it is
/// listening never meets the default action.
#[cfg(unix)]
pub fn reload_on_sighup(tls: ServerTls, shutdown: tokio_util::sync::CancellationToken) -> io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                received = hangup.recv() => if received.is_none() { return },
            }
            match tls.reload() {
                Ok(()) => tracing::info!(cert = %tls.cert_path.display(), "tls certificate reloaded"),
                Err(error) => {
                    tracing::error!(%error, "tls certificate reload failed; still serving the previous one")
                }
            }
        }
    });
    Ok(())
}

/// A server's accepted connections: plaintext, or TLS when `tls` is set. What every role
/// passes to `serve_with_incoming_shutdown`.
pub fn incoming(listener: TcpListener, tls: Option<&ServerTls>) -> Incoming {
    match tls {
        Some(tls) => Box::pin(tls.accept(listener)),
        None => Box::pin(crate::grpc::incoming(listener).map(|accepted| accepted.map(Conn::Plain))),
    }
}

/// The stream [`incoming`] returns.
pub type Incoming = Pin<Box<dyn Stream<Item = io::Result<Conn>> + Send>>;

/// One accepted connection, plaintext or TLS: one type, so a role's server is the same
/// code with or without TLS.
pub enum Conn {
    /// Plaintext.
    Plain(TcpStream),
    /// TLS (boxed: a TLS session is far larger than a socket).
    Tls(Box<TlsStream<TcpStream>>),
}

/// The TCP addresses in both cases, so `Request::remote_addr` works over TLS too.
impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        match self {
            Conn::Plain(stream) => stream.connect_info(),
            Conn::Tls(stream) => stream.get_ref().0.connect_info(),
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Calling internal services.

/// The CA that `https://` endpoints of internal services must chain to
/// (`--internal-tls-ca`), and optionally the name their certificates must carry
/// (`--internal-tls-domain`, default: the endpoint's host).
#[derive(Clone, Debug)]
pub struct ClientTls {
    ca: tonic::transport::Certificate,
    domain: Option<String>,
}

impl ClientTls {
    /// Reads the CA's PEM file (one or more certificates).
    pub fn from_file(ca: impl AsRef<Path>, domain: Option<String>) -> Result<Self, TlsError> {
        let path = ca.as_ref();
        let pem = read(path, "CA")?;
        // Parsed here so a wrong file fails at start, not at the first call.
        parse_certs(&pem, path, "CA")?;
        Ok(ClientTls { ca: tonic::transport::Certificate::from_pem(pem), domain })
    }

    /// tonic's client config for one endpoint.
    pub fn config(&self) -> tonic::transport::ClientTlsConfig {
        let config = tonic::transport::ClientTlsConfig::new().ca_certificate(self.ca.clone());
        match &self.domain {
            Some(domain) => config.domain_name(domain.clone()),
            None => config,
        }
    }
}

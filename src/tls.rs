//! TLS for the node's two listeners and for its outgoing connections (rustls with ring,
//! through tonic).
//!
//! - [`Material`]: a certificate chain, its key and the CA, read from PEM files and checked
//!   (readable, parsable, key matching the certificate, within its validity period), each
//!   error naming the file.
//! - [`Reloadable`]: the material of one listener, re-read when a file changes (checked every
//!   [`RELOAD_CHECK`], or at once on SIGHUP through [`Reloadable::reload`]); a bad new file
//!   keeps the old material in use and is reported. Each accepted connection takes the
//!   configuration current at its handshake; outgoing channels are made again after a reload
//!   ([`Reloadable::outgoing`] carries a generation number).
//! - [`incoming`]: the accepted connections of a listener, TLS handshakes done off the accept
//!   loop (bounded, with a deadline), as the stream tonic serves.
//! - [`names`]: the DNS and IP names a certificate holds (a peer's must match a member).
//!
//! Node certificates serve both ways: as server certificates on the listeners and as client
//! certificates when a node calls another (peer traffic, forwarded writes), so they carry both
//! the serverAuth and clientAuth extended key usages.

use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// How often the files are checked for a change.
pub const RELOAD_CHECK: Duration = Duration::from_secs(5);
/// Handshakes in progress on one listener, at most (more connections wait to be accepted).
const MAX_HANDSHAKES: usize = 256;
/// How long a handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Accepted connections waiting for the server to take them.
const ACCEPTED_QUEUE: usize = 64;

/// The files of one listener's TLS.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// This node's certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The CA certificates (PEM) that peers' and clients' certificates must chain to.
    pub ca: PathBuf,
}

/// Whether a listener asks its callers for a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate (tokens may still authenticate the caller).
    Off,
    /// A certificate chaining to the CA is required (the peer listener, always).
    Required,
}

/// Why TLS material was refused. Each names the file.
#[derive(Clone, Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS file {path}: {why}")]
    File { path: String, why: String },
    #[error("TLS certificate {cert} does not match the key in {key}")]
    KeyMismatch { cert: String, key: String },
    #[error("TLS certificate {path} expired {ago} ago")]
    Expired { path: String, ago: String },
    #[error("TLS certificate {path} is not valid for another {wait}")]
    NotYetValid { path: String, wait: String },
}

fn file_err(path: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

/// A certificate chain, its key and the CA, read and checked.
pub struct Material {
    files: TlsFiles,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    ca_pem: Vec<u8>,
    /// When the certificate expires (Unix seconds).
    not_after: i64,
}

impl Material {
    /// Reads and checks the three files.
    pub fn load(files: &TlsFiles) -> Result<Material, TlsError> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| file_err(p, e));
        let (cert_pem, key_pem, ca_pem) = (read(&files.cert)?, read(&files.key)?, read(&files.ca)?);
        let chain = certificates(&files.cert, &cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem)
            .map_err(|e| file_err(&files.key, format!("no usable PEM private key ({e})")))?;
        let mut roots = RootCertStore::empty();
        for c in certificates(&files.ca, &ca_pem)? {
            roots
                .add(c)
                .map_err(|e| file_err(&files.ca, format!("not a usable CA certificate ({e})")))?;
        }
        let not_after = check_validity(&files.cert, &chain[0], SystemTime::now())?;
        let provider = rustls::crypto::ring::default_provider();
        let signing = provider
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|e| file_err(&files.key, format!("unusable private key ({e})")))?;
        let certified = rustls::sign::CertifiedKey::new(chain.clone(), signing);
        if certified.keys_match().is_err() {
            return Err(TlsError::KeyMismatch {
                cert: files.cert.display().to_string(),
                key: files.key.display().to_string(),
            });
        }
        Ok(Material {
            files: files.clone(),
            chain,
            key,
            roots: Arc::new(roots),
            cert_pem,
            key_pem,
            ca_pem,
            not_after,
        })
    }

    /// A server configuration (ALPN h2, as gRPC needs).
    pub fn server_config(&self, auth: ClientAuth) -> Result<rustls::ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| file_err(&self.files.cert, e))?;
        let builder = match auth {
            ClientAuth::Off => builder.with_no_client_auth(),
            ClientAuth::Required => {
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider)
                        .build()
                        .map_err(|e| file_err(&self.files.ca, e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut cfg = builder
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| file_err(&self.files.cert, e))?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(cfg)
    }

    /// What a connection from this node to another uses: the CA, and this node's certificate
    /// as its client certificate.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .timeout(HANDSHAKE_TIMEOUT)
    }
}

/// What a client (the CLI, a program using [`crate::client`]) uses: trust the CA in `ca`, and
/// present the certificate and key in `identity` if given. The files are read and checked now.
pub fn client_config(
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<ClientTlsConfig, TlsError> {
    let ca_pem = std::fs::read(ca).map_err(|e| file_err(ca, e))?;
    certificates(ca, &ca_pem)?;
    let mut cfg = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&ca_pem))
        .timeout(HANDSHAKE_TIMEOUT);
    if let Some((cert, key)) = identity {
        let m = Material::load(&TlsFiles {
            cert: cert.to_owned(),
            key: key.to_owned(),
            ca: ca.to_owned(),
        })?;
        cfg = cfg.identity(Identity::from_pem(&m.cert_pem, &m.key_pem));
    }
    Ok(cfg)
}

/// The files [`throwaway_ca`] wrote.
pub struct ThrowawayFiles {
    pub ca: PathBuf,
    /// One per node (ids 1..=n), naming what the caller gave for it.
    pub nodes: Vec<TlsFiles>,
    /// A client certificate (principal `replog-dev-client`) and its key.
    pub client: (PathBuf, PathBuf),
}

/// Makes a throwaway CA in `dir` and signs with it a certificate for each node (node `i + 1`
/// named by the DNS names and IP addresses of `node_names[i]`) and one for a client (what
/// `replog dev --tls` runs with). Keys are written readable by the owner only. Not for
/// production: the CA's key is not kept.
pub fn throwaway_ca(dir: &Path, node_names: &[Vec<String>]) -> Result<ThrowawayFiles, String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    fn e(what: &str) -> impl Fn(rcgen::Error) -> String + '_ {
        move |err| format!("{what}: {err}")
    }
    std::fs::create_dir_all(dir).map_err(|err| format!("{}: {err}", dir.display()))?;
    let ca_key = KeyPair::generate().map_err(e("a CA key"))?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e("the CA"))?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "replog throwaway CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).map_err(e("the CA"))?;
    let write = |name: &str, text: &str, private: bool| -> Result<PathBuf, String> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join(name);
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        if private {
            opts.mode(0o600);
        }
        let mut f = opts
            .open(&path)
            .map_err(|err| format!("{}: {err}", path.display()))?;
        io::Write::write_all(&mut f, text.as_bytes())
            .map_err(|err| format!("{}: {err}", path.display()))?;
        Ok(path)
    };
    let ca_path = write("ca.pem", &ca_cert.pem(), false)?;
    let sign = |cn: &str, names: Vec<String>| -> Result<(String, String), String> {
        let key = KeyPair::generate().map_err(e("a key"))?;
        let mut p = CertificateParams::new(names).map_err(e(cn))?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = p.signed_by(&key, &ca_cert, &ca_key).map_err(e(cn))?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let mut node_files = Vec::new();
    for (i, names) in node_names.iter().enumerate() {
        let id = i + 1;
        let (cert, key) = sign(&format!("replog-node-{id}"), names.clone())?;
        node_files.push(TlsFiles {
            cert: write(&format!("node-{id}.pem"), &cert, false)?,
            key: write(&format!("node-{id}-key.pem"), &key, true)?,
            ca: ca_path.clone(),
        });
    }
    let (cert, key) = sign("replog-dev-client", vec!["replog-dev-client".to_owned()])?;
    let client = (
        write("client.pem", &cert, false)?,
        write("client-key.pem", &key, true)?,
    );
    Ok(ThrowawayFiles {
        ca: ca_path,
        nodes: node_files,
        client,
    })
}

/// The certificates of a PEM file (at least one).
fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_err(path, format!("bad PEM ({e})")))?;
    if certs.is_empty() {
        return Err(file_err(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// Refuses a certificate outside its validity period at `now`; returns when it expires (Unix
/// seconds).
fn check_validity(
    path: &Path,
    cert: &CertificateDer<'_>,
    now: SystemTime,
) -> Result<i64, TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| file_err(path, format!("not an X.509 certificate ({e})")))?;
    let v = parsed.validity();
    let secs = |t: &x509_parser::time::ASN1Time| t.timestamp();
    let now_s = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let human =
        |s: i64| humantime::format_duration(Duration::from_secs(s.unsigned_abs())).to_string();
    if now_s > secs(&v.not_after) {
        return Err(TlsError::Expired {
            path: path.display().to_string(),
            ago: human(now_s - secs(&v.not_after)),
        });
    }
    if now_s < secs(&v.not_before) {
        return Err(TlsError::NotYetValid {
            path: path.display().to_string(),
            wait: human(secs(&v.not_before) - now_s),
        });
    }
    Ok(secs(&v.not_after))
}

/// The DNS names and IP addresses (as text) a certificate's subject alternative names hold.
/// The name a client certificate identifies its holder by: the subject's common name, or
/// without one its first DNS name or IP address.
pub fn principal_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|n| n.as_str().ok())
        .map(str::to_owned);
    cn.filter(|n| !n.is_empty())
        .or_else(|| names(cert).into_iter().next())
}

pub fn names(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(cert) else {
        return Vec::new();
    };
    let Ok(Some(san)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
            x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b)
                    .ok()
                    .map(|a| IpAddr::from(a).to_string()),
                16 => <[u8; 16]>::try_from(*b)
                    .ok()
                    .map(|a| IpAddr::from(a).to_string()),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

/// Whether `names` (from [`names`]) include the host of `addr` (`host:port`, `[v6]:port`). A
/// wildcard name matches one whole left-most label, as in server certificates (RFC 6125):
/// `*.replog-peer.ns.svc` names `replog-0.replog-peer.ns.svc`, not `a.b.replog-peer.ns.svc`,
/// so one certificate can serve every pod of a StatefulSet.
pub fn names_host(names: &[String], addr: &str) -> bool {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(ip) => names.iter().any(|n| n.parse::<IpAddr>() == Ok(ip)),
        Err(_) => names.iter().any(|n| dns_name_matches(n, host)),
    }
}

fn dns_name_matches(name: &str, host: &str) -> bool {
    match name.strip_prefix("*.") {
        Some(suffix) => host.split_once('.').is_some_and(|(label, rest)| {
            !label.is_empty() && !suffix.is_empty() && rest.eq_ignore_ascii_case(suffix)
        }),
        None => name.eq_ignore_ascii_case(host),
    }
}

/// What a file looked like when it was read: a change of either means read it again.
type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(files: &TlsFiles) -> Stamp {
    [&files.cert, &files.key, &files.ca]
        .iter()
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

struct Loaded {
    server: Arc<rustls::ServerConfig>,
    outgoing: ClientTlsConfig,
    stamp: Stamp,
    generation: u64,
    not_after: i64,
}

/// One listener's TLS, re-read when its files change.
pub struct Reloadable {
    files: TlsFiles,
    auth: ClientAuth,
    current: RwLock<Loaded>,
}

impl Reloadable {
    /// Reads the files; an error here stops the node from starting.
    pub fn load(files: TlsFiles, auth: ClientAuth) -> Result<Arc<Reloadable>, TlsError> {
        let loaded = Self::read(&files, auth, 1)?;
        Ok(Arc::new(Reloadable {
            files,
            auth,
            current: RwLock::new(loaded),
        }))
    }

    fn read(files: &TlsFiles, auth: ClientAuth, generation: u64) -> Result<Loaded, TlsError> {
        let stamp = stamp(files);
        let m = Material::load(files)?;
        Ok(Loaded {
            server: Arc::new(m.server_config(auth)?),
            outgoing: m.client_config(),
            stamp,
            generation,
            not_after: m.not_after,
        })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// When the certificate in use expires (Unix seconds).
    pub fn not_after(&self) -> i64 {
        self.current.read().not_after
    }

    /// The server configuration new connections take.
    pub fn server(&self) -> Arc<rustls::ServerConfig> {
        self.current.read().server.clone()
    }

    /// The generation of the material in use: it changes on every reload, and channels made
    /// with an older one are made again.
    pub fn generation(&self) -> u64 {
        self.current.read().generation
    }

    /// The configuration of connections this node makes, with its generation.
    pub fn outgoing(&self) -> (u64, ClientTlsConfig) {
        let c = self.current.read();
        (c.generation, c.outgoing.clone())
    }

    /// Reads the files again if they changed since they were read (or always, with `force`).
    /// Returns whether new material is in use; on an error the old material stays in use.
    pub fn reload(&self, force: bool) -> Result<bool, TlsError> {
        let (now, generation) = {
            let c = self.current.read();
            (stamp(&self.files), c.generation)
        };
        if !force && now == self.current.read().stamp {
            return Ok(false);
        }
        match Self::read(&self.files, self.auth, generation + 1) {
            Ok(loaded) => {
                *self.current.write() = loaded;
                Ok(true)
            }
            Err(e) => {
                // Not asked again until the files change once more.
                self.current.write().stamp = now;
                Err(e)
            }
        }
    }
}

/// Accepts connections on `listener` and completes their TLS handshakes (at most
/// `MAX_HANDSHAKES` at once, each within `HANDSHAKE_TIMEOUT`) with the configuration current
/// at that moment; yields the established streams until the receiver is dropped. A refused
/// handshake (plaintext, a certificate from another CA, an expired one) is logged and dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<Reloadable>,
    listener_name: &'static str,
    failures: prometheus::IntCounter,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    accept(listener, tls, listener_name, failures, false)
}

/// [`incoming`] for an HTTP server that speaks HTTP/1.1 too (`/metrics`: Prometheus and curl
/// may offer only `http/1.1`); gRPC listeners offer `h2` alone.
pub fn incoming_http(
    listener: TcpListener,
    tls: Arc<Reloadable>,
    listener_name: &'static str,
    failures: prometheus::IntCounter,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    accept(listener, tls, listener_name, failures, true)
}

fn accept(
    listener: TcpListener,
    tls: Arc<Reloadable>,
    listener_name: &'static str,
    failures: prometheus::IntCounter,
    http1: bool,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        loop {
            let accepted = tokio::select! {
                () = tx.closed() => return,
                a = listener.accept() => a,
            };
            let (tcp, from) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(listener = listener_name, error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Nagle off: with delayed ACKs it stalls replies by 40 ms.
            let _ = tcp.set_nodelay(true);
            let Ok(slot) = slots.clone().acquire_owned().await else {
                return;
            };
            let mut config = tls.server();
            if http1 {
                let mut c = (*config).clone();
                c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
                config = Arc::new(c);
            }
            let acceptor = TlsAcceptor::from(config);
            let tx = tx.clone();
            let failures = failures.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => {
                        failures.inc();
                        tracing::warn!(listener = listener_name, %from, error = %e, "TLS handshake refused");
                    }
                    Err(_) => {
                        failures.inc();
                        tracing::warn!(listener = listener_name, %from, "TLS handshake timed out");
                    }
                }
                drop(slot);
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_matches_dns_names_and_ip_addresses() {
        let names = vec![
            "node-1.replog".to_owned(),
            "10.0.0.1".to_owned(),
            "::1".to_owned(),
        ];
        assert!(names_host(&names, "NODE-1.replog:7500"));
        assert!(names_host(&names, "10.0.0.1:7500"));
        assert!(names_host(&names, "[::1]:7500"));
        assert!(!names_host(&names, "10.0.0.2:7500"));
        assert!(!names_host(&names, "node-2.replog:7500"));
    }

    #[test]
    fn a_wildcard_matches_one_left_most_label() {
        let names = vec!["*.replog-peer.ns.svc".to_owned()];
        assert!(names_host(&names, "replog-0.replog-peer.ns.svc:7500"));
        assert!(names_host(&names, "REPLOG-12.Replog-Peer.ns.svc:7500"));
        assert!(!names_host(&names, "replog-peer.ns.svc:7500"));
        assert!(!names_host(&names, "a.b.replog-peer.ns.svc:7500"));
        assert!(!names_host(&names, "replog-0.other.ns.svc:7500"));
        assert!(!names_host(&names, ".replog-peer.ns.svc:7500"));
        assert!(!names_host(&["*.".to_owned()], "a.:7500"));
    }
}

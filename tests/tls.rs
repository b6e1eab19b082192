//! TLS on both listeners, mTLS between members, client certificates, bad files refused at start
//! and certificates rotated without a restart, against in-process nodes (port 0, temp dirs,
//! certificates made at test time with rcgen).

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::cluster::{DEADLINE, eventually, timing};
use replog::client::{Client, ClientOptions, NewEntry};
use replog::node::{Listeners, Node, NodeConfig, NodeError, NodeTls};
use replog::proto::Operation;
use replog::proto::raft::{RaftMessage, raft_service_client::RaftServiceClient};
use replog::tls::TlsFiles;
use replog::wal::WalConfig;
use tempfile::TempDir;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// A CA made for the test.
struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = p.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A client certificate whose subject's common name is `cn`.
    fn client(&self, cn: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A certificate for `names` (DNS names or IP addresses), usable both ways; `expired`
    /// makes one whose validity ended in 2020.
    fn leaf(&self, names: &[&str], expired: bool) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut p = rcgen::CertificateParams::new(names).unwrap();
        p.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        if expired {
            p.not_before = rcgen::date_time_ymd(2019, 1, 1);
            p.not_after = rcgen::date_time_ymd(2020, 1, 1);
        }
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Writes `text` to `dir/name` atomically (a reload never sees half a file).
fn put(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// Node `id`'s TLS files in `dir`: a certificate for localhost/127.0.0.1 from `ca`, the CA
/// bundle `ca_pem`.
fn node_files(dir: &Path, id: u64, ca: &Ca, ca_pem: &str) -> TlsFiles {
    let (cert, key) = ca.leaf(&["localhost", "127.0.0.1"], false);
    TlsFiles {
        cert: put(dir, &format!("node-{id}.pem"), &cert),
        key: put(dir, &format!("node-{id}-key.pem"), &key),
        ca: put(dir, "ca.pem", ca_pem),
    }
}

struct TlsCluster {
    nodes: BTreeMap<u64, Node>,
    addrs: BTreeMap<u64, SocketAddr>,
    peer_addrs: BTreeMap<u64, SocketAddr>,
    _dirs: Vec<TempDir>,
}

impl TlsCluster {
    async fn start(files: &[TlsFiles], client_cert_auth: bool) -> TlsCluster {
        Self::start_auth(files, client_cert_auth, None).await
    }

    /// With authentication on (principals from `tokens`), when given.
    async fn start_auth(
        files: &[TlsFiles],
        client_cert_auth: bool,
        tokens: Option<PathBuf>,
    ) -> TlsCluster {
        common::cluster::init_tracing();
        let mut listeners = BTreeMap::new();
        for id in 1..=files.len() as u64 {
            listeners.insert(id, common::cluster::loopback_listeners().await);
        }
        let addrs: BTreeMap<u64, SocketAddr> = listeners
            .iter()
            .map(|(id, l)| (*id, l.client.local_addr().unwrap()))
            .collect();
        let peer_addrs: BTreeMap<u64, SocketAddr> = listeners
            .iter()
            .map(|(id, l)| (*id, l.peer.local_addr().unwrap()))
            .collect();
        let members: BTreeMap<u64, String> = peer_addrs
            .iter()
            .map(|(id, a)| (*id, a.to_string()))
            .collect();
        let mut c = TlsCluster {
            nodes: BTreeMap::new(),
            addrs,
            peer_addrs,
            _dirs: Vec::new(),
        };
        for (id, l) in listeners {
            let dir = TempDir::new().unwrap();
            let mut cfg = config(id, &l, dir.path());
            cfg.initial_members = Some(members.clone());
            cfg.tls = Some(NodeTls {
                client: files[(id - 1) as usize].clone(),
                peer: files[(id - 1) as usize].clone(),
                client_cert_auth,
            });
            cfg.auth.token_file.clone_from(&tokens);
            c.nodes.insert(id, Node::start_on(cfg, l).await.unwrap());
            c._dirs.push(dir);
        }
        c
    }

    fn endpoints(&self) -> Vec<String> {
        self.addrs.values().map(|a| a.to_string()).collect()
    }

    async fn leader(&self) -> u64 {
        let mut found = 0;
        eventually("a leader", || {
            found = self
                .nodes
                .values()
                .find(|n| n.core().is_leader())
                .map_or(0, |n| n.core().id());
            let ok = found != 0;
            async move { ok }
        })
        .await;
        found
    }

    async fn shutdown(self) {
        for (_, n) in self.nodes {
            n.shutdown().await.unwrap();
        }
    }
}

fn config(id: u64, l: &Listeners, dir: &Path) -> NodeConfig {
    let mut cfg = NodeConfig::new(id, l.client.local_addr().unwrap(), dir);
    cfg.peer_listen = l.peer.local_addr().unwrap();
    cfg.raft = timing();
    cfg.wal = WalConfig {
        min_free_bytes: bytesize::ByteSize::b(0),
        ..WalConfig::new(dir.join("wal"))
    };
    cfg
}

fn tls_client(endpoints: &[String], tls: Option<ClientTlsConfig>, retry: Duration) -> Client {
    let opts = ClientOptions {
        tls,
        retry_timeout: retry,
        request_timeout: Duration::from_secs(5),
        ..ClientOptions::default()
    };
    Client::new(endpoints, opts).unwrap()
}

fn trust(ca_pem: &str, identity: Option<&(String, String)>) -> ClientTlsConfig {
    let mut c = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some((cert, key)) = identity {
        c = c.identity(Identity::from_pem(cert, key));
    }
    c
}

fn entry(i: usize) -> NewEntry {
    NewEntry {
        tenant: "secure".to_owned(),
        operation: Operation::Insert,
        data: format!("entry-{i}").into_bytes(),
    }
}

/// A Raft `Vote` on a peer listener, over TLS with `tls` (or plaintext): the status it gets.
async fn vote_on(addr: SocketAddr, tls: Option<ClientTlsConfig>) -> tonic::Status {
    let url = match &tls {
        Some(_) => format!("https://{addr}"),
        None => format!("http://{addr}"),
    };
    let mut ep = Endpoint::from_shared(url).unwrap();
    if let Some(t) = tls {
        ep = ep.tls_config(t).unwrap();
    }
    let channel = match ep.connect().await {
        Ok(c) => c,
        Err(e) => return tonic::Status::unavailable(format!("connect: {e:?}")),
    };
    let msg = RaftMessage {
        from: 99,
        body: Default::default(),
    };
    match RaftServiceClient::new(channel).vote(msg).await {
        Ok(_) => tonic::Status::ok(""),
        Err(s) => s,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_cluster_serves_only_tls_and_members_certificates() {
    let pki = TempDir::new().unwrap();
    let ca = Ca::new("cluster CA");
    let other = Ca::new("another CA");
    let files: Vec<TlsFiles> = (1..=3)
        .map(|id| node_files(pki.path(), id, &ca, &ca.pem()))
        .collect();
    let c = TlsCluster::start(&files, true).await;
    let leader = c.leader().await;
    let follower = c.addrs.keys().copied().find(|id| *id != leader).unwrap();
    let client_id = ca.leaf(&["app.example"], false);

    // With the CA and a client certificate: writes through a follower (forwarded to the
    // leader over TLS, the follower presenting its own certificate) and reads everywhere.
    let good = tls_client(
        &[c.addrs[&follower].to_string()],
        Some(trust(&ca.pem(), Some(&client_id))),
        Duration::from_secs(30),
    );
    let w = good
        .write_batch((0..10).map(entry).collect())
        .await
        .unwrap();
    assert_eq!(w.last_sequence, 10);
    for (id, addr) in &c.addrs {
        eventually("the node serves the 10 entries", || {
            let good = good.clone();
            let addr = addr.to_string();
            async move {
                let req = replog::proto::ReplayRequest {
                    start: Some(replog::proto::replay_request::Start::FromSequence(1)),
                    ..Default::default()
                };
                good.read_node(&addr, req, 100)
                    .await
                    .is_ok_and(|e| e.len() == 10)
            }
        })
        .await;
        let _ = id;
    }
    // Each node learns the others' client addresses over mTLS.
    eventually("every member reachable in the cluster status", || {
        let good = good.clone();
        async move {
            good.cluster_status()
                .await
                .is_ok_and(|s| s.members.iter().all(|m| m.role != "unreachable"))
        }
    })
    .await;

    let short = Duration::from_secs(1);
    let endpoints = c.endpoints();
    // Plaintext is refused on the client listener.
    let plain = tls_client(&endpoints, None, short);
    assert!(plain.write_batch(vec![entry(0)]).await.is_err());
    // No client certificate, or one from another CA: refused.
    let anonymous = tls_client(&endpoints, Some(trust(&ca.pem(), None)), short);
    assert!(anonymous.write_batch(vec![entry(0)]).await.is_err());
    let stranger = other.leaf(&["app.example"], false);
    let foreign = tls_client(&endpoints, Some(trust(&ca.pem(), Some(&stranger))), short);
    assert!(foreign.write_batch(vec![entry(0)]).await.is_err());
    // A client that does not trust the cluster's CA refuses the server.
    let wrong_trust = tls_client(
        &endpoints,
        Some(trust(&other.pem(), Some(&client_id))),
        short,
    );
    assert!(wrong_trust.write_batch(vec![entry(0)]).await.is_err());

    // The peer listener: plaintext, no certificate, another CA's: refused before Raft; the
    // cluster CA's certificate for a name that is no member: PERMISSION_DENIED; a member's
    // name: reaches Raft (refused only for its empty body).
    let peer = c.peer_addrs[&leader];
    for (what, tls) in [
        ("plaintext", None),
        ("no certificate", Some(trust(&ca.pem(), None))),
        ("another CA", Some(trust(&ca.pem(), Some(&stranger)))),
    ] {
        // Refused at the connection (the TLS handshake, or HTTP/2 on a TLS port; with TLS 1.3
        // a refused client certificate shows as a closed connection), never by the member
        // check or by Raft.
        let s = vote_on(peer, tls).await;
        assert!(
            !matches!(
                s.code(),
                tonic::Code::Ok | tonic::Code::InvalidArgument | tonic::Code::PermissionDenied
            ),
            "{what}: {s:?}"
        );
    }
    let s = vote_on(peer, Some(trust(&ca.pem(), Some(&client_id)))).await;
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("app.example"), "{s:?}");
    let member = ca.leaf(&["127.0.0.1"], false);
    let s = vote_on(peer, Some(trust(&ca.pem(), Some(&member)))).await;
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");

    let refused: u64 = c
        .nodes
        .values()
        .map(|n| {
            let f = &n.core().metrics().tls_handshake_failures;
            f.with_label_values(&["client"]).get() + f.with_label_values(&["peer"]).get()
        })
        .sum();
    assert!(refused > 0, "refused handshakes are counted");

    // Nothing refused was written.
    let all = good
        .read_node(
            &c.addrs[&leader].to_string(),
            replog::proto::ReplayRequest {
                start: Some(replog::proto::replay_request::Start::FromSequence(1)),
                ..Default::default()
            },
            100,
        )
        .await
        .unwrap();
    assert_eq!(all.len(), 10);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_certificates_are_principals_with_the_rights_granted_to_their_name() {
    let pki = TempDir::new().unwrap();
    let ca = Ca::new("cluster CA");
    let files: Vec<TlsFiles> = (1..=3)
        .map(|id| node_files(pki.path(), id, &ca, &ca.pem()))
        .collect();
    let tokens = pki.path().join("tokens.yaml");
    let mut grants = replog::auth::TokenFile::default();
    grants
        .grant_certificate("ingest", replog::auth::Role::Writer, &["secure".to_owned()])
        .unwrap();
    let (_, admin) = grants
        .create_token("ops", replog::auth::Role::Admin, &[], "now")
        .unwrap();
    grants.write(&tokens).unwrap();
    let c = TlsCluster::start_auth(&files, true, Some(tokens)).await;
    let leader = c.leader().await;
    let follower = c.addrs.keys().copied().find(|id| *id != leader).unwrap();
    let via_follower = [c.addrs[&follower].to_string()];
    // Its certificate names it: writes of its tenant go through (forwarded by the follower to
    // the leader's peer listener over mTLS), another tenant's do not.
    let ingest = ca.client("ingest");
    let ingest = tls_client(
        &via_follower,
        Some(trust(&ca.pem(), Some(&ingest))),
        Duration::from_secs(30),
    );
    ingest.write_batch(vec![entry(1)]).await.unwrap();
    let other = NewEntry {
        tenant: "other".to_owned(),
        ..entry(2)
    };
    let e = ingest.write_batch(vec![other]).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert_eq!(
        ingest.truncate(1).await.unwrap_err().code(),
        tonic::Code::PermissionDenied
    );
    // A certificate of the CA whose name has no grant: PERMISSION_DENIED, saying so.
    let stranger = ca.client("stranger");
    let stranger_tls = Some(trust(&ca.pem(), Some(&stranger)));
    let s = tls_client(&via_follower, stranger_tls.clone(), Duration::from_secs(5));
    let e = s.write_batch(vec![entry(3)]).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e}");
    assert!(e.to_string().contains("stranger"), "{e}");
    // A token goes before the certificate.
    let with_token = Client::new(
        &via_follower,
        ClientOptions {
            tls: stranger_tls,
            token: Some(admin),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    with_token.truncate(1).await.unwrap();
    // The public services on a peer listener are for members only.
    let channel = Endpoint::from_shared(format!("https://{}", c.peer_addrs[&leader]))
        .unwrap()
        .tls_config(trust(&ca.pem(), Some(&ca.client("ingest"))))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut log = replog::proto::log_service_client::LogServiceClient::new(channel);
    let s = log
        .write(replog::proto::WriteRequest {
            tenant: "secure".to_owned(),
            data: b"sneaky".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::PermissionDenied, "{s:?}");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tls_files_stop_the_node_with_a_clear_error() {
    let pki = TempDir::new().unwrap();
    let ca = Ca::new("cluster CA");
    let good = node_files(pki.path(), 1, &ca, &ca.pem());
    let (expired, expired_key) = ca.leaf(&["127.0.0.1"], true);
    let (_, other_key) = ca.leaf(&["127.0.0.1"], false);
    let cases = [
        (
            "expired",
            TlsFiles {
                cert: put(pki.path(), "expired.pem", &expired),
                key: put(pki.path(), "expired-key.pem", &expired_key),
                ..good.clone()
            },
        ),
        (
            "does not match the key",
            TlsFiles {
                key: put(pki.path(), "other-key.pem", &other_key),
                ..good.clone()
            },
        ),
        (
            "missing.pem",
            TlsFiles {
                ca: pki.path().join("missing.pem"),
                ..good.clone()
            },
        ),
        (
            "no usable PEM private key",
            TlsFiles {
                key: put(pki.path(), "garbage.pem", "not a key"),
                ..good.clone()
            },
        ),
    ];
    for (expect, files) in cases {
        let dir = TempDir::new().unwrap();
        let l = common::cluster::loopback_listeners().await;
        let mut cfg = config(1, &l, dir.path());
        cfg.init = true;
        cfg.tls = Some(NodeTls {
            client: files.clone(),
            peer: files,
            client_cert_auth: false,
        });
        match Node::start_on(cfg, l).await {
            Err(NodeError::Config(m)) => assert!(m.contains(expect), "{expect}: {m}"),
            Err(e) => panic!("{expect}: {e}"),
            Ok(n) => {
                n.shutdown().await.unwrap();
                panic!("{expect}: the node started");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotated_certificates_and_ca_are_picked_up_without_a_restart() {
    let pki = TempDir::new().unwrap();
    let old = Ca::new("old CA");
    let new = Ca::new("new CA");
    let dirs: Vec<PathBuf> = (1..=3)
        .map(|id| {
            let d = pki.path().join(format!("node-{id}"));
            std::fs::create_dir_all(&d).unwrap();
            d
        })
        .collect();
    let files: Vec<TlsFiles> = (1..=3)
        .map(|id| node_files(&dirs[(id - 1) as usize], id, &old, &old.pem()))
        .collect();
    let c = TlsCluster::start(&files, false).await;
    c.leader().await;
    let endpoints = c.endpoints();
    let trusts_old = tls_client(&endpoints, Some(trust(&old.pem(), None)), DEADLINE);
    trusts_old.write_batch(vec![entry(0)]).await.unwrap();
    let trusts_new = tls_client(
        &endpoints,
        Some(trust(&new.pem(), None)),
        Duration::from_secs(1),
    );
    assert!(trusts_new.write_batch(vec![entry(1)]).await.is_err());

    // Rotation: every node trusts both CAs and serves a certificate from the new one.
    let bundle = format!("{}{}", old.pem(), new.pem());
    for id in 1..=3u64 {
        node_files(&dirs[(id - 1) as usize], id, &new, &bundle);
    }
    eventually("every node serves its new certificate", || {
        let endpoints = endpoints.clone();
        let new_pem = new.pem();
        async move {
            for e in &endpoints {
                let one = tls_client(
                    std::slice::from_ref(e),
                    Some(trust(&new_pem, None)),
                    Duration::from_millis(200),
                );
                if one.node_status(e).await.is_err() {
                    return false;
                }
            }
            true
        }
    })
    .await;
    // The cluster went on: writes commit, over connections made with the new material.
    for n in c.nodes.values() {
        let m = n.core().metrics();
        assert!(m.tls_reloads.with_label_values(&["client", "ok"]).get() >= 1);
        assert!(m.tls_reloads.with_label_values(&["peer", "ok"]).get() >= 1);
        assert!(m.tls_cert_expiry.with_label_values(&["peer"]).get() > 1_700_000_000);
    }
    let both = tls_client(&endpoints, Some(trust(&new.pem(), None)), DEADLINE);
    let w = both
        .write_batch((2..12).map(entry).collect())
        .await
        .unwrap();
    assert_eq!(w.last_sequence, 11);
    c.shutdown().await;
}

/// Through the binary: a TLS node serves the CLI given the CA (and a client certificate when
/// it asks for one), refuses plaintext and strangers, and refuses to start on bad files.
#[test]
fn the_binary_serves_tls_and_refuses_plaintext_and_bad_files() {
    use common::process::{ServeProc, cli, fails, ok};
    let dir = TempDir::new().unwrap();
    let pki = replog::tls::throwaway_ca(
        &dir.path().join("tls"),
        &[vec!["localhost".to_owned(), "127.0.0.1".to_owned()]],
    )
    .unwrap();
    let f = &pki.nodes[0];
    let (cert, key, ca) = (
        f.cert.to_str().unwrap(),
        f.key.to_str().unwrap(),
        f.ca.to_str().unwrap(),
    );
    let mut node = ServeProc::start(
        1,
        dir.path(),
        "127.0.0.1:0",
        &[
            "--tls-cert",
            cert,
            "--tls-key",
            key,
            "--tls-ca",
            ca,
            "--client-cert-auth",
        ],
    );
    let (client_cert, client_key) = (
        pki.client.0.to_str().unwrap(),
        pki.client.1.to_str().unwrap(),
    );
    let tls = ["--ca", ca, "--cert", client_cert, "--key", client_key];
    let with = |args: &[&str]| -> Vec<String> {
        args.iter()
            .chain(tls.iter())
            .chain(["--endpoints", node.addr.as_str()].iter())
            .map(|s| s.to_string())
            .collect()
    };
    let args = with(&["write", "--tenant", "t", "--data", "secret"]);
    let out = ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.trim(), "1");
    let args = with(&["cluster", "status", "-o", "json"]);
    let s: serde_json::Value =
        serde_json::from_str(&ok(&args.iter().map(String::as_str).collect::<Vec<_>>())).unwrap();
    assert_eq!(s["members"][0]["peer_address"], node.peer_addr.as_str());

    // Plaintext, or TLS without the client certificate: refused (exit 1), nothing written.
    for extra in [&[][..], &["--ca", ca][..]] {
        let mut args = vec![
            "write",
            "--tenant",
            "t",
            "--data",
            "x",
            "--retry-timeout",
            "1s",
            "--endpoints",
            node.addr.as_str(),
        ];
        args.extend_from_slice(extra);
        let out = cli(&args, b"", Duration::from_secs(30));
        assert_eq!(out.status.code(), Some(1), "{extra:?}");
    }
    let args = with(&["replay"]);
    let out = ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.lines().count(), 1, "{out}");
    node.stop();

    // Bad files: exit 2, the file and the reason named.
    let other = dir.path().join("other");
    let other_pki = replog::tls::throwaway_ca(&other, &[vec!["127.0.0.1".to_owned()]]).unwrap();
    let other_key = other_pki.nodes[0].key.to_str().unwrap();
    let data = dir.path().join("bad");
    let serve_fails = |tls: &[&str]| {
        let mut args = vec![
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "",
            "--data-dir",
            data.to_str().unwrap(),
        ];
        args.extend_from_slice(tls);
        fails(&args, b"", 2)
    };
    let e = serve_fails(&["--tls-cert", cert, "--tls-key", other_key, "--tls-ca", ca]);
    assert!(
        e.contains("does not match the key") && e.contains(other_key),
        "{e}"
    );
    let e = serve_fails(&["--tls-cert", cert]);
    assert!(e.contains("tls.key"), "{e}");
}

#[test]
fn the_binary_refuses_other_cas_non_members_and_expired_files_and_reloads_on_sighup() {
    use common::process::{ServeProc, cli, fails, wait_until};
    let dir = TempDir::new().unwrap();
    let ca = Ca::new("cluster CA");
    let files = node_files(dir.path(), 1, &ca, &ca.pem());
    let (cert, key, ca_file) = (
        files.cert.to_str().unwrap().to_owned(),
        files.key.to_str().unwrap().to_owned(),
        files.ca.to_str().unwrap().to_owned(),
    );
    let (app_cert, app_key) = ca.client("app");
    let app = (
        put(dir.path(), "app.pem", &app_cert),
        put(dir.path(), "app-key.pem", &app_key),
    );
    let (stranger_cert, stranger_key) = Ca::new("another CA").client("app");
    let stranger = (
        put(dir.path(), "stranger.pem", &stranger_cert),
        put(dir.path(), "stranger-key.pem", &stranger_key),
    );
    let node = ServeProc::start(
        1,
        dir.path(),
        "127.0.0.1:0",
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-ca",
            &ca_file,
            "--client-cert-auth",
        ],
    );
    let as_ = |who: &(PathBuf, PathBuf), endpoint: &str, args: &[&str]| {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        v.extend([
            "--ca".into(),
            ca_file.clone(),
            "--cert".into(),
            who.0.display().to_string(),
            "--key".into(),
            who.1.display().to_string(),
            "--endpoints".into(),
            endpoint.to_owned(),
            "--retry-timeout".into(),
            "2s".into(),
        ]);
        let refs: Vec<&str> = v.iter().map(String::as_str).collect();
        cli(&refs, b"", Duration::from_secs(60))
    };
    let out = as_(
        &app,
        &node.addr,
        &["write", "--tenant", "t", "--data", "one"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A client certificate from another CA: refused at the handshake.
    let out = as_(
        &stranger,
        &node.addr,
        &["write", "--tenant", "t", "--data", "x"],
    );
    assert_eq!(out.status.code(), Some(1));
    // The cluster CA's certificate that names no member: PERMISSION_DENIED on the peer port.
    let out = as_(
        &app,
        &node.peer_addr,
        &["write", "--tenant", "t", "--data", "x"],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("PERMISSION_DENIED") && err.contains("member"),
        "{err}"
    );

    // A rotated certificate, picked up on SIGHUP without a restart.
    let (new_cert, new_key) = ca.leaf(&["localhost", "127.0.0.1"], false);
    put(dir.path(), "node-1.pem", &new_cert);
    put(dir.path(), "node-1-key.pem", &new_key);
    node.signal(libc::SIGHUP);
    wait_until(
        "the certificate is reloaded",
        Duration::from_secs(60),
        || {
            node.scrape().lines().any(|l| {
                l.strip_prefix("replog_tls_reloads_total{listener=\"client\",result=\"ok\"} ")
                    .and_then(|v| v.parse::<f64>().ok())
                    .is_some_and(|v| v >= 1.0)
            })
        },
    );
    let out = as_(
        &app,
        &node.addr,
        &["write", "--tenant", "t", "--data", "two"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = as_(&app, &node.addr, &["replay"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2);
    drop(node);

    // An expired certificate stops a node at start, named.
    let (old_cert, old_key) = ca.leaf(&["127.0.0.1"], true);
    let old = put(dir.path(), "old.pem", &old_cert);
    let old_key = put(dir.path(), "old-key.pem", &old_key);
    let data = dir.path().join("expired");
    let e = fails(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "",
            "--data-dir",
            data.to_str().unwrap(),
            "--tls-cert",
            old.to_str().unwrap(),
            "--tls-key",
            old_key.to_str().unwrap(),
            "--tls-ca",
            &ca_file,
        ],
        b"",
        2,
    );
    assert!(e.contains("old.pem") && e.contains("expired"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_over_https_answer_http1_scrapers() {
    use rustls::pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = TempDir::new().unwrap();
    let ca = Ca::new("cluster CA");
    let files = node_files(pki.path(), 1, &ca, &ca.pem());
    let l = common::cluster::loopback_listeners().await;
    let dir = TempDir::new().unwrap();
    let mut cfg = config(1, &l, dir.path());
    cfg.init = true;
    cfg.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    cfg.tls = Some(NodeTls {
        client: files.clone(),
        peer: files,
        client_cert_auth: false,
    });
    cfg.auth.metrics_tls = true;
    let node = Node::start_on(cfg, l).await.unwrap();
    let addr = node.metrics_addr().unwrap();
    // A scraper that offers HTTP/1.1 only (ALPN), as Prometheus may.
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(ca.pem().as_bytes()).unwrap())
        .unwrap();
    let mut client = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    client.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = connector.connect(name, tcp).await.unwrap();
    tls.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    tls.read_to_string(&mut body).await.unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("replog_raft_term"), "{body}");
    // Plaintext is refused.
    let mut plain = tokio::net::TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got).await;
    assert!(!String::from_utf8_lossy(&got).contains("replog_raft_term"));
    node.shutdown().await.unwrap();
}

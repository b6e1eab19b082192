//! Authentication, authorization and quotas: bearer tokens scoped to tenants, the admin role,
//! tenants kept invisible to principals outside their scope, revocation, and per-tenant
//! quotas (RESOURCE_EXHAUSTED with nothing written, replay throttled), against in-process
//! clusters (port 0, temp dirs) and through the `replog` binary.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::cluster::{TestCluster, eventually};
use common::process::{ServeProc, cli, fails, ok, ok_in, wait_until};
use futures::StreamExt;
use replog::auth::{Role, TokenFile};
use replog::client::{Client, ClientError, ClientOptions, NewEntry};
use replog::core::{Quota, QuotaConfig};
use replog::proto::log_service_client::LogServiceClient;
use replog::proto::{Operation, QuotaLimits, ReplayRequest, WriteRequest, replay_request::Start};
use tonic::Code;

/// A token file with one token per (principal, role, tenants); returns the tokens in order.
fn token_file(path: &Path, grants: &[(&str, Role, &[&str])]) -> Vec<String> {
    let mut f = TokenFile::read(path).unwrap();
    let tokens = grants
        .iter()
        .map(|(p, role, tenants)| {
            let tenants: Vec<String> = tenants.iter().map(|t| (*t).to_owned()).collect();
            f.create_token(p, *role, &tenants, "test").unwrap().1
        })
        .collect();
    f.write(path).unwrap();
    tokens
}

fn client(c: &TestCluster, token: Option<&str>) -> Client {
    client_to(
        &c.addrs.values().map(|a| a.to_string()).collect::<Vec<_>>(),
        token,
    )
}

fn client_to(endpoints: &[String], token: Option<&str>) -> Client {
    let opts = ClientOptions {
        retry_timeout: Duration::from_secs(20),
        token: token.map(str::to_owned),
        ..ClientOptions::default()
    };
    Client::new(endpoints, opts).unwrap()
}

fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (Code, String) {
    let e = r.expect_err("the call must fail");
    (e.code(), e.to_string())
}

fn entry(tenant: &str, data: &str) -> NewEntry {
    NewEntry {
        tenant: tenant.to_owned(),
        operation: Operation::Insert,
        data: data.as_bytes().to_vec(),
    }
}

async fn replay_all(
    c: &Client,
    req: ReplayRequest,
) -> Result<Vec<replog::proto::Entry>, ClientError> {
    let mut s = c.replay(req).await?;
    let mut out = Vec::new();
    while let Some(e) = s.next().await {
        out.push(e?);
    }
    Ok(out)
}

/// A 3-node cluster with authentication on and this token file.
async fn secure_cluster(tokens: PathBuf, quotas: QuotaConfig) -> TestCluster {
    TestCluster::start_configured(3, move |cfg| {
        cfg.auth.token_file = Some(tokens.clone());
        cfg.quotas = quotas.clone();
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_token_cannot_touch_another_tenant_and_admin_calls_need_admin() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.yaml");
    let t = token_file(
        &path,
        &[
            ("alice", Role::Writer, &["a"]),
            ("bob", Role::Reader, &["b"]),
            ("root", Role::Admin, &[]),
            ("both", Role::Writer, &["a", "c"]),
        ],
    );
    let (alice_t, bob_t, root_t, both_t) = (&t[0], &t[1], &t[2], &t[3]);
    let c = secure_cluster(path, QuotaConfig::default()).await;
    let leader = c.leader().await;
    // Every client goes through a follower first: forwarded writes keep the caller's rights.
    let follower = *c.addrs.keys().find(|id| **id != leader).unwrap();
    let via_follower = vec![c.addrs[&follower].to_string()];
    let alice = client_to(&via_follower, Some(alice_t));
    let bob = client_to(&via_follower, Some(bob_t));
    let both = client_to(&via_follower, Some(both_t));
    let root = client(&c, Some(root_t));

    // No credentials, or a bad token: UNAUTHENTICATED.
    let anonymous = client(&c, None);
    let (code_, msg) = code(anonymous.write("a", Operation::Insert, b"x".to_vec()).await);
    assert_eq!(code_, Code::Unauthenticated, "{msg}");
    let forged = client(&c, Some("rlg_000000000000_forged"));
    assert_eq!(code(forged.cluster_status().await).0, Code::Unauthenticated);

    // Alice writes her tenant (through a follower), not another.
    alice
        .write("a", Operation::Insert, b"a1".to_vec())
        .await
        .unwrap();
    root.write("b", Operation::Insert, b"secret-b1".to_vec())
        .await
        .unwrap();
    let (code_, msg) = code(alice.write("b", Operation::Insert, b"x".to_vec()).await);
    assert_eq!(code_, Code::PermissionDenied, "{msg}");
    assert!(msg.contains("alice") && msg.contains("\"b\""), "{msg}");
    // A batch with one entry outside the scope writes nothing.
    let (code_, _) = code(
        alice
            .write_batch(vec![entry("a", "a2"), entry("b", "x")])
            .await,
    );
    assert_eq!(code_, Code::PermissionDenied);
    // A reader cannot write, even its own tenant.
    let (code_, msg) = code(bob.write("b", Operation::Insert, b"x".to_vec()).await);
    assert_eq!(code_, Code::PermissionDenied);
    assert!(msg.contains("writer role"), "{msg}");

    // Replay: another tenant is refused; no filter means her own tenant only.
    let (code_, _) = code(
        replay_all(
            &alice,
            ReplayRequest {
                tenant: Some("b".into()),
                ..Default::default()
            },
        )
        .await,
    );
    assert_eq!(code_, Code::PermissionDenied);
    let mine = replay_all(&alice, ReplayRequest::default()).await.unwrap();
    assert!(
        !mine.is_empty() && mine.iter().all(|e| e.tenant == "a"),
        "{mine:?}"
    );
    // With two tenants and no filter: refused, naming its own tenants only.
    let (code_, msg) = code(replay_all(&both, ReplayRequest::default()).await);
    assert_eq!(code_, Code::PermissionDenied);
    assert!(!msg.contains("\"b\""), "{msg}");
    let theirs = replay_all(&bob, ReplayRequest::default()).await.unwrap();
    assert!(theirs.iter().all(|e| e.tenant == "b"), "{theirs:?}");

    // Checkpoints: her tenant only; another tenant's is not found, and never listed.
    alice
        .create_checkpoint("cp-a", Some("a".into()), None)
        .await
        .unwrap();
    root.create_checkpoint("cp-b", Some("b".into()), None)
        .await
        .unwrap();
    let (code_, _) = code(
        alice
            .create_checkpoint("cp-x", Some("b".into()), None)
            .await,
    );
    assert_eq!(code_, Code::PermissionDenied);
    let (code_, _) = code(alice.create_checkpoint("cp-all", None, None).await);
    assert_eq!(code_, Code::PermissionDenied);
    let (code_, msg) = code(alice.get_checkpoint("cp-b").await);
    assert_eq!(code_, Code::NotFound, "{msg}");
    let (code_, _) = code(
        replay_all(
            &alice,
            ReplayRequest {
                start: Some(Start::Checkpoint("cp-b".into())),
                ..Default::default()
            },
        )
        .await,
    );
    assert_eq!(code_, Code::NotFound);
    let listed: Vec<String> = alice
        .list_checkpoints(None)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(listed, vec!["cp-a".to_owned()]);
    assert_eq!(root.list_checkpoints(None).await.unwrap().len(), 2);
    assert_eq!(
        code(alice.list_checkpoints(Some("b".into())).await).0,
        Code::PermissionDenied
    );

    // Admin calls need admin.
    assert_eq!(code(alice.truncate(1).await).0, Code::PermissionDenied);
    assert_eq!(code(alice.segments().await).0, Code::PermissionDenied);
    assert_eq!(
        code(alice.add_node(9, "127.0.0.1:1", true).await).0,
        Code::PermissionDenied
    );
    assert_eq!(code(alice.remove_node(3).await).0, Code::PermissionDenied);
    assert_eq!(
        code(alice.transfer_leader(1).await).0,
        Code::PermissionDenied
    );
    assert_eq!(
        code(alice.set_quota("a", QuotaLimits::default(), true).await).0,
        Code::PermissionDenied
    );
    root.segments().await.unwrap();
    // Status: without details for a non-admin, with them for the admin.
    let s = alice.cluster_status().await.unwrap();
    assert_eq!(s.members.len(), 3);
    assert!(
        s.members
            .iter()
            .all(|m| m.peer_address.is_empty() && !m.address.is_empty())
    );
    let s = root.cluster_status().await.unwrap();
    assert!(s.members.iter().all(|m| !m.peer_address.is_empty()));
    // Quotas of other tenants are not listed.
    root.set_quota(
        "b",
        QuotaLimits {
            write_entries_per_sec: Some(1000),
            ..Default::default()
        },
        false,
    )
    .await
    .unwrap();
    assert!(alice.list_quotas("").await.unwrap().quotas.is_empty());
    assert_eq!(root.list_quotas("").await.unwrap().quotas.len(), 1);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_token_stops_working_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.yaml");
    let t = token_file(&path, &[("carol", Role::Writer, &["*"])]);
    let c = secure_cluster(path.clone(), QuotaConfig::default()).await;
    let carol = client(&c, Some(&t[0]));
    carol
        .write("any", Operation::Insert, b"1".to_vec())
        .await
        .unwrap();
    let mut f = TokenFile::read(&path).unwrap();
    let id = f.tokens[0].id.clone();
    assert!(f.revoke(&id));
    f.write(&path).unwrap();
    eventually("the revoked token is refused", || async {
        matches!(
            carol.write("any", Operation::Insert, b"2".to_vec()).await,
            Err(e) if e.code() == Code::Unauthenticated
        )
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_a_quota_a_write_is_resource_exhausted_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.yaml");
    let t = token_file(&path, &[("root", Role::Admin, &[])]);
    let mut quotas = QuotaConfig::default();
    quotas.tenants.insert(
        "slow".into(),
        Quota {
            write_entries_per_sec: Some(1),
            ..Default::default()
        },
    );
    quotas.tenants.insert(
        "small".into(),
        Quota {
            retained_bytes: Some(100),
            ..Default::default()
        },
    );
    let c = secure_cluster(path, quotas).await;
    let leader = c.leader().await;
    let root = client(&c, Some(&t[0]));

    // Raw calls to the leader, to see the answers the client would retry.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", c.addrs[&leader]))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let creds = replog::client::Credentials::bearer(Some(&t[0])).unwrap();
    let mut raw = LogServiceClient::with_interceptor(channel, creds);
    let write = |tenant: &str, data: &[u8]| WriteRequest {
        tenant: tenant.to_owned(),
        operation: Operation::Insert as i32,
        data: data.to_vec(),
        ..Default::default()
    };
    raw.write(write("slow", b"first")).await.unwrap();
    // The bucket holds one second of one entry: the next write at once is refused.
    let refused = raw.write(write("slow", b"second")).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let delay = replog::wire::retry_delay(&refused).expect("a retry delay");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(1),
        "{delay:?}"
    );
    assert!(
        refused.message().contains("write_entries_per_sec"),
        "{refused:?}"
    );
    // The client waits as asked and gets it through.
    root.write("slow", Operation::Insert, b"third".to_vec())
        .await
        .unwrap();
    let slow = replay_all(
        &root,
        ReplayRequest {
            tenant: Some("slow".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let data: Vec<&[u8]> = slow.iter().map(|e| e.data.as_slice()).collect();
    assert_eq!(
        data,
        vec![&b"first"[..], b"third"],
        "the refused write wrote nothing"
    );

    // Retained bytes: 80 fit, 30 more do not (once the node has counted the log).
    raw.write(write("small", &[b'x'; 80])).await.unwrap();
    let quotas_of_leader = c.nodes[&leader].core().quotas();
    eventually("the leader has counted the retained bytes", || async {
        quotas_of_leader.retained("small") == Some(80)
    })
    .await;
    let refused = raw.write(write("small", &[b'y'; 30])).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(replog::wire::retry_delay(&refused).is_none());
    assert!(refused.message().contains("retained_bytes"), "{refused:?}");
    // Through the client (keyed writes): refused for good, and its next write, of another
    // tenant, is not held back behind the refused one.
    let quick = client_to(&[c.addrs[&leader].to_string()], Some(&t[0]));
    let (code_, _) = code(
        quick
            .write("small", Operation::Insert, vec![b'y'; 30])
            .await,
    );
    assert_eq!(code_, Code::ResourceExhausted);
    quick
        .write("other", Operation::Insert, b"next".to_vec())
        .await
        .unwrap();
    // A replicated quota over the configured one lifts the limit.
    root.set_quota(
        "small",
        QuotaLimits {
            retained_bytes: Some(0),
            ..Default::default()
        },
        false,
    )
    .await
    .unwrap();
    eventually("the replicated quota applies", || {
        let mut raw = raw.clone();
        let req = write("small", &[b'z'; 30]);
        async move { raw.write(req).await.is_ok() }
    })
    .await;
    let small = replay_all(
        &root,
        ReplayRequest {
            tenant: Some("small".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let sizes: Vec<usize> = small.iter().map(|e| e.data.len()).collect();
    assert_eq!(sizes, vec![80, 30]);
    assert!(small.iter().all(|e| e.data[0] != b'y'));

    // Replay over its quota is slowed down, not refused.
    root.set_quota(
        "slow",
        QuotaLimits {
            write_entries_per_sec: Some(0),
            replay_bytes_per_sec: Some(100),
            ..Default::default()
        },
        false,
    )
    .await
    .unwrap();
    for i in 0..5 {
        root.write("slow", Operation::Insert, vec![b'r'; 60 + i])
            .await
            .unwrap();
    }
    eventually("replay waits for its quota", || async {
        let all = replay_all(
            &root,
            ReplayRequest {
                tenant: Some("slow".into()),
                limit: 0,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(all.len(), 7);
        c.nodes.values().any(|n| {
            n.core()
                .metrics()
                .replay_throttled_seconds
                .with_label_values(&["slow"])
                .get()
                > 0.0
        })
    })
    .await;
    let exceeded = c.nodes[&leader]
        .core()
        .metrics()
        .quota_exceeded
        .with_label_values(&["slow", "write_entries_per_sec"])
        .get();
    assert!(exceeded >= 1);
    c.shutdown().await;
}

#[test]
fn metrics_of_other_tenants_are_not_shown_to_a_scoped_principal() {
    let m = replog::metrics::NodeMetrics::new().unwrap();
    m.quota_exceeded
        .with_label_values(&["a", "write_entries_per_sec"])
        .inc();
    m.quota_exceeded
        .with_label_values(&["secret-b", "write_entries_per_sec"])
        .inc();
    let scoped = replog::auth::Principal {
        name: "alice".into(),
        role: Role::Reader,
        tenants: replog::auth::Tenants::parse(&["a".to_owned()]).unwrap(),
        source: replog::auth::Source::Token,
    };
    let seen = m.render_for(&scoped);
    assert!(seen.contains("tenant=\"a\""), "{seen}");
    assert!(!seen.contains("secret-b"), "{seen}");
    assert!(
        seen.contains("replog_raft_term"),
        "node metrics stay: {seen}"
    );
    assert!(m.render().contains("secret-b"));
}

/// `GET /metrics` with an optional bearer token: the status line and the body.
fn get_metrics(addr: &str, token: Option<&str>) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    (
        head.lines().next().unwrap_or("").to_owned(),
        body.to_owned(),
    )
}

#[test]
fn tokens_roles_and_quotas_through_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.yaml");
    let file = tokens.to_str().unwrap();
    // Tokens are made by the CLI and printed once.
    let admin = ok(&[
        "auth",
        "token",
        "create",
        "--file",
        file,
        "--principal",
        "ops",
        "--role",
        "admin",
    ]);
    let admin = admin.trim().to_owned();
    let alice = ok(&[
        "auth",
        "token",
        "create",
        "--file",
        file,
        "--principal",
        "alice",
        "--role",
        "writer",
        "--tenants",
        "a",
    ])
    .trim()
    .to_owned();
    assert!(alice.starts_with("rlg_") && alice != admin);
    let text = std::fs::read_to_string(&tokens).unwrap();
    assert!(!text.contains(&alice), "a token is never stored");
    let listed = ok(&["auth", "token", "list", "--file", file, "-o", "json"]);
    assert_eq!(listed.lines().count(), 2, "{listed}");
    // Bad grants are refused with a usage error.
    let err = fails(
        &[
            "auth",
            "token",
            "create",
            "--file",
            file,
            "--principal",
            "x",
            "--role",
            "admin",
            "--tenants",
            "a",
        ],
        b"",
        2,
    );
    assert!(err.contains("admin has every tenant"), "{err}");
    fails(
        &[
            "auth",
            "token",
            "create",
            "--file",
            file,
            "--principal",
            "x",
            "--role",
            "king",
        ],
        b"",
        2,
    );

    let node = ServeProc::start(
        1,
        dir.path(),
        "127.0.0.1:0",
        &[
            "--init",
            "--auth",
            "on",
            "--token-file",
            file,
            "--metrics-token",
        ],
    );
    let ep = node.addr.clone();
    let as_ = |token: &str, args: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        v.extend([
            "--endpoints".into(),
            ep.clone(),
            "--token".into(),
            token.to_owned(),
        ]);
        v
    };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&refs, b"", Duration::from_secs(60))
    };
    // Without a token: UNAUTHENTICATED, at once.
    let out = cli(
        &["write", "--tenant", "a", "--data", "x", "--endpoints", &ep],
        b"",
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("UNAUTHENTICATED"));
    // Alice: her tenant yes, another no.
    let out = run(as_(&alice, &["write", "--tenant", "a", "--data", "hello"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(as_(&alice, &["write", "--tenant", "b", "--data", "x"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PERMISSION_DENIED"));
    let out = run(as_(&alice, &["replay", "--tenant", "b"]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PERMISSION_DENIED"));
    let out = run(as_(&alice, &["truncate", "--before", "1"]));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PERMISSION_DENIED"));
    let out = run(as_(
        &alice,
        &["checkpoint", "create", "--name", "cp", "--tenant", "b"],
    ));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PERMISSION_DENIED"));
    let out = run(as_(&admin, &["write", "--tenant", "b", "--data", "secret"]));
    assert!(out.status.success());
    let out = run(as_(&alice, &["replay"]));
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(seen.contains("hello") && !seen.contains("secret"), "{seen}");

    // Quotas through the CLI: a retained-bytes limit refuses the write that would pass it.
    let out = run(as_(
        &alice,
        &["quota", "set", "--tenant", "a", "--retained-bytes", "10"],
    ));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PERMISSION_DENIED"));
    let out = run(as_(
        &admin,
        &["quota", "set", "--tenant", "a", "--retained-bytes", "10"],
    ));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until(
        "the retained bytes are counted",
        Duration::from_secs(60),
        || {
            let out = run(as_(
                &admin,
                &["quota", "list", "--tenant", "a", "-o", "json"],
            ));
            String::from_utf8_lossy(&out.stdout).contains("\"retained_bytes_used\": 5")
        },
    );
    let out = run(as_(&alice, &["write", "--tenant", "a", "--data", "123456"]));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("RESOURCE_EXHAUSTED") && err.contains("retained_bytes"),
        "{err}"
    );
    let out = run(as_(&alice, &["replay", "--tenant", "a"]));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        1,
        "nothing written"
    );
    // A rate quota slows the CLI down but writes everything.
    ok_in(
        &as_(
            &admin,
            &[
                "quota",
                "set",
                "--tenant",
                "r",
                "--write-entries-per-sec",
                "2",
            ],
        )
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
        b"",
    );
    let lines = b"1\n2\n3\n4\n";
    let args = as_(&admin, &["write", "--tenant", "r"]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = ok_in(&refs, lines);
    assert_eq!(out.lines().count(), 4, "{out}");

    // /metrics behind a token, a scoped principal seeing its own tenant's series only.
    ok_in(
        &as_(
            &admin,
            &["quota", "set", "--tenant", "b", "--retained-bytes", "1MiB"],
        )
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>(),
        b"",
    );
    let (status, _) = get_metrics(&node.metrics, None);
    assert!(status.contains("401"), "{status}");
    let (_, body) = get_metrics(&node.metrics, Some("rlg_000000000000_forged"));
    assert!(!body.contains("replog_raft_term"), "{body}");
    wait_until(
        "tenant b's retained bytes are counted",
        Duration::from_secs(60),
        || {
            let (status, body) = get_metrics(&node.metrics, Some(&admin));
            assert!(status.contains("200"), "{status}");
            body.contains("replog_tenant_retained_bytes{tenant=\"b\"}")
        },
    );
    let (_, body) = get_metrics(&node.metrics, Some(&alice));
    assert!(!body.contains("tenant=\"b\""), "{body}");
    assert!(body.contains("tenant=\"a\""), "{body}");
    assert!(body.contains("replog_raft_term"), "{body}");
}

#[test]
fn a_node_off_loopback_needs_a_token_file_unless_auth_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("n");
    let d = d.to_str().unwrap();
    let err = fails(
        &[
            "serve",
            "--listen",
            "0.0.0.0:0",
            "--insecure",
            "--data-dir",
            d,
            "--metrics-listen",
            "",
        ],
        b"",
        2,
    );
    assert!(
        err.contains("auth.token_file") && err.contains("--auth off"),
        "{err}"
    );
    let err = fails(
        &[
            "serve",
            "--auth",
            "on",
            "--data-dir",
            d,
            "--metrics-listen",
            "",
            "--listen",
            "127.0.0.1:0",
        ],
        b"",
        2,
    );
    assert!(err.contains("auth.token_file"), "{err}");
    let err = fails(
        &[
            "serve",
            "--auth",
            "on",
            "--token-file",
            "/nonexistent/tokens.yaml",
            "--data-dir",
            d,
            "--metrics-listen",
            "",
            "--listen",
            "127.0.0.1:0",
        ],
        b"",
        2,
    );
    assert!(err.contains("/nonexistent/tokens.yaml"), "{err}");
}

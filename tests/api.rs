//! The public gRPC API and the Rust client against in-process nodes (port 0, temp dirs):
//! health, reflection (v1 and v1alpha), idempotent retries, replica redirection, limits.

mod common;

use std::time::Duration;

use common::cluster::{TestCluster, eventually};
use futures::StreamExt;
use replog::client::{Client, ClientOptions, NewEntry};
use replog::proto::Operation;
use replog::proto::{ReplayRequest, replay_request::Start};
use tonic::Code;

fn client(endpoints: &[String]) -> Client {
    let opts = ClientOptions {
        retry_timeout: Duration::from_secs(20),
        ..ClientOptions::default()
    };
    Client::new(endpoints, opts).unwrap()
}

fn entries(tenant: &str, n: usize) -> Vec<NewEntry> {
    (0..n)
        .map(|i| NewEntry {
            tenant: tenant.to_owned(),
            operation: Operation::Insert,
            data: format!("{tenant}-{i}").into_bytes(),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_v1_and_v1alpha() {
    let c = TestCluster::start(1).await;
    let addr = format!("http://{}", c.addrs[&1]);
    let channel = tonic::transport::Endpoint::from_shared(addr.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "replog.v1.LogService", "replog.v1.AdminService"] {
        let mut serving = false;
        for _ in 0..100 {
            let r = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.to_owned(),
                })
                .await
                .unwrap()
                .into_inner();
            serving =
                r.status == tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
            if serving {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(serving, "{service:?} is not SERVING");
    }

    use tonic_reflection::pb::{v1, v1alpha};
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut r = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let mut stream = r
        .server_reflection_info(futures::stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        stream.next().await.unwrap().unwrap().message_response
    else {
        panic!("not a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for want in [
        "replog.v1.LogService",
        "replog.v1.AdminService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "replog.v1.LogService".to_owned(),
            ),
        ),
    };
    let mut r = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let mut stream = r
        .server_reflection_info(futures::stream::iter([req]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream.next().await.unwrap().unwrap().message_response;
    assert!(
        matches!(
            resp,
            Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(ref f))
                if !f.file_descriptor_proto.is_empty()
        ),
        "{resp:?}"
    );
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_key_is_applied_once_and_replay_verifies_checksums() {
    let c = TestCluster::start(3).await;
    let leader = c.leader().await;
    let follower = *c.nodes.keys().find(|id| **id != leader).unwrap();
    let cl = client(&[c.addrs[&follower].to_string()]);
    let first = cl.write_batch_keyed(entries("a", 3), 77, 1).await.unwrap();
    assert!(!first.duplicate);
    assert_eq!((first.first_sequence, first.last_sequence), (1, 3));
    // The follower forwarded it; the reply names the leader, which the client now asks first.
    assert_eq!(first.leader_id, leader);
    assert_eq!(first.leader_address, c.addrs[&leader].to_string());
    assert!(
        cl.endpoints()
            .contains(&format!("http://{}", c.addrs[&leader]))
    );
    // The same key again, as after a lost reply: the original result, nothing written.
    let again = cl.write_batch_keyed(entries("a", 3), 77, 1).await.unwrap();
    assert!(again.duplicate);
    assert_eq!((again.first_sequence, again.last_sequence), (1, 3));
    let next = cl.write_batch(entries("b", 2)).await.unwrap();
    assert_eq!((next.first_sequence, next.last_sequence), (4, 5));

    let got: Vec<_> = cl
        .replay(ReplayRequest {
            start: Some(Start::FromSequence(1)),
            ..Default::default()
        })
        .await
        .unwrap()
        .collect()
        .await;
    let got: Vec<_> = got.into_iter().map(|e| e.unwrap()).collect();
    assert_eq!(got.len(), 5);
    assert!(got.iter().all(|e| replog::client::verify(e).is_ok()));
    let mut bad = got[0].clone();
    bad.data[0] ^= 1;
    let err = replog::client::verify(&bad).unwrap_err();
    assert_eq!(err.code(), Code::DataLoss);

    // Tenant filter and limit.
    let only_b: Vec<_> = cl
        .replay(ReplayRequest {
            tenant: Some("b".into()),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(only_b.len(), 1);
    assert_eq!(only_b[0].as_ref().unwrap().sequence, 4);
    c.shutdown().await;
}

fn quick_staleness(cfg: &mut replog::node::NodeConfig) {
    cfg.limits.max_leader_silence = Duration::from_millis(300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_refuses_reads_and_the_client_goes_elsewhere() {
    let c = TestCluster::start_tweaked(3, bytesize::ByteSize::mib(1), quick_staleness).await;
    let leader = c.leader().await;
    let cut = *c.nodes.keys().find(|id| **id != leader).unwrap();
    let cl = client(&[c.addrs[&leader].to_string()]);
    cl.write_batch(entries("t", 5)).await.unwrap();
    c.wait_applied(6).await;
    // Cut one follower off from everyone.
    for (id, n) in &c.nodes {
        if *id == cut {
            for other in c.nodes.keys().filter(|o| **o != cut) {
                n.core().switch().block(*other);
            }
        } else {
            n.core().switch().block(cut);
        }
    }
    let cut_node = &c.nodes[&cut];
    eventually("the cut-off replica is out of sync", || async {
        cut_node.core().replica_state() != replog::core::ReplicaState::InSync
    })
    .await;
    // Asked directly, it refuses with UNAVAILABLE naming the leader (its vote still names it:
    // pre-vote keeps a cut-off follower from starting elections)...
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", c.addrs[&cut]))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let status = replog::proto::log_service_client::LogServiceClient::new(channel)
        .replay(ReplayRequest::default())
        .await
        .expect_err("a cut-off replica served a replay");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(
        replog::wire::leader_hint(&status),
        Some((leader, c.addrs[&leader].to_string())),
        "{status:?}"
    );
    // ...so a client that knows only that replica is served by the leader.
    let alone = client(&[c.addrs[&cut].to_string()]);
    let got: Vec<_> = alone
        .replay(ReplayRequest::default())
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(got.len(), 5);
    assert!(
        alone
            .endpoints()
            .contains(&format!("http://{}", c.addrs[&leader]))
    );
    for n in c.nodes.values() {
        n.core().switch().heal();
    }
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_enforced_with_their_names() {
    fn small(cfg: &mut replog::node::NodeConfig) {
        cfg.limits.max_batch_entries = 4;
        cfg.limits.max_batch_bytes = bytesize::ByteSize::kib(1);
        cfg.limits.max_entry_bytes = bytesize::ByteSize::b(600);
        cfg.limits.max_replay_streams = 1;
        cfg.limits.max_checkpoints = 1;
    }
    let c = TestCluster::start_tweaked(1, bytesize::ByteSize::mib(1), small).await;
    let cl = client(&[c.addrs[&1].to_string()]);
    let e = cl.write_batch(entries("t", 5)).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.to_string().contains("limits.max_batch_entries"), "{e}");
    let big = |n: usize| NewEntry {
        tenant: "t".into(),
        operation: Operation::Insert,
        data: vec![b'x'; n],
    };
    let e = cl
        .write_batch(vec![big(500), big(500), big(500)])
        .await
        .unwrap_err();
    assert!(e.to_string().contains("limits.max_batch_bytes"), "{e}");
    let e = cl.write_batch(vec![big(700)]).await.unwrap_err();
    assert!(e.to_string().contains("limits.max_entry_bytes"), "{e}");
    cl.write_batch(vec![big(10)]).await.unwrap();

    let mut follow = cl
        .replay(ReplayRequest {
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(follow.next().await.unwrap().is_ok());
    let e = match cl.replay(ReplayRequest::default()).await {
        Ok(mut s) => s.next().await.unwrap().unwrap_err(),
        Err(e) => e,
    };
    assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
    assert!(e.to_string().contains("limits.max_replay_streams"), "{e}");
    drop(follow);

    cl.create_checkpoint("one", None, None).await.unwrap();
    let e = cl.create_checkpoint("two", None, None).await.unwrap_err();
    assert!(e.to_string().contains("limits.max_checkpoints"), "{e}");
    // Re-setting an existing checkpoint is within the limit.
    cl.create_checkpoint("one", Some("t".into()), Some(1))
        .await
        .unwrap();
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followed_replay_resumes_on_another_node_when_its_node_stops() {
    let mut c = TestCluster::start(3).await;
    let leader = c.leader().await;
    let serving = *c.nodes.keys().find(|id| **id != leader).unwrap();
    let other = *c
        .nodes
        .keys()
        .find(|id| **id != leader && **id != serving)
        .unwrap();
    let writer = client(&[c.addrs[&leader].to_string()]);
    writer.write_batch(entries("a", 3)).await.unwrap();
    c.wait_applied(4).await;
    // The reader knows the serving follower first, then another node.
    let reader = client(&[c.addrs[&serving].to_string(), c.addrs[&other].to_string()]);
    let mut stream = reader
        .replay(ReplayRequest {
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap();
    for want in 1..=3 {
        assert_eq!(stream.next().await.unwrap().unwrap().sequence, want);
    }
    c.stop(serving).await;
    writer.write_batch(entries("b", 3)).await.unwrap();
    let mut rest = Vec::new();
    while rest.len() < 3 {
        let e = tokio::time::timeout(Duration::from_secs(30), stream.next())
            .await
            .expect("the stream resumed")
            .unwrap()
            .unwrap();
        rest.push(e.sequence);
    }
    assert_eq!(
        rest,
        [4, 5, 6],
        "nothing lost or repeated across the resume"
    );
    c.shutdown().await;
}

/// Raft traffic has its own listener: on the client port the Raft service does not exist, on
/// the peer port the public services do not; membership names peer addresses and the cluster
/// status shows both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_and_clients_have_separate_listeners() {
    use replog::proto::log_service_client::LogServiceClient;
    use replog::proto::raft::{RaftMessage, raft_service_client::RaftServiceClient};
    let c = TestCluster::start(3).await;
    let leader = c.leader().await;
    for id in 1..=3 {
        let (client_port, peer_port) = (c.addrs[&id], c.peer_addrs[&id]);
        assert_ne!(client_port, peer_port);
        let vote = |addr: std::net::SocketAddr| async move {
            let mut raft = RaftServiceClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            raft.vote(RaftMessage {
                from: 99,
                body: Default::default(),
            })
            .await
            .unwrap_err()
        };
        let on_client = vote(client_port).await;
        assert_eq!(on_client.code(), Code::Unimplemented, "{on_client:?}");
        // On the peer port the call reaches Raft (refused only for its empty body).
        let on_peer = vote(peer_port).await;
        assert_eq!(on_peer.code(), Code::InvalidArgument, "{on_peer:?}");
        // The peer port serves the public services to members only, for the calls they
        // forward (with TLS, mTLS tells members apart: tests/tls.rs): a call there counts as
        // forwarded, so a follower answers with its leader hint instead of forwarding again.
        let mut log = LogServiceClient::connect(format!("http://{peer_port}"))
            .await
            .unwrap();
        let r = log
            .write(replog::proto::WriteRequest::default())
            .await
            .unwrap_err();
        let expected = if id == leader {
            Code::InvalidArgument
        } else {
            Code::Unavailable
        };
        assert_eq!(r.code(), expected, "{r:?}");
    }
    let membership = c.nodes[&leader].core().membership();
    for id in 1..=3 {
        assert_eq!(membership.members[&id], c.peer_addrs[&id].to_string());
    }
    // Every node learns every member's client address, and its status shows both.
    let cl = client(&[c.addrs[&leader].to_string()]);
    let mut status = None;
    for _ in 0..200 {
        let s = cl.cluster_status().await.unwrap();
        if s.members.iter().all(|m| m.role != "unreachable") {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let status = status.expect("every member reachable through its client address");
    for m in &status.members {
        assert_eq!(m.address, c.addrs[&m.id].to_string());
        assert_eq!(m.peer_address, c.peer_addrs[&m.id].to_string());
    }
    c.shutdown().await;
}

//! The container image and the compose cluster, run for real with Docker.
//!
//! No image can be pulled here, so the test makes its base image itself: the libraries the
//! binary links (from `ldd`), and `sh`, `cp` and `mkdir`, imported with `docker import`. It
//! then builds `deploy/docker/Dockerfile`, the file users build, with `BINARY=prebuilt` (the
//! binary cargo built for these tests instead of running cargo in the build stage) and that
//! base as `RUST_IMAGE` and `RUNTIME_IMAGE`, and starts
//! `deploy/compose/docker-compose.yml` as it is. Through the published ports and a `replog
//! verify` container on the compose network it writes and replays, kills the leader and keeps
//! writing, cuts a node off the network and back, restarts every node one at a time, and
//! upgrades every node to a new image over the same volumes; `verify` then checks that nothing
//! acknowledged was lost, duplicated or reordered on any member.
//!
//! Needs Docker and Compose (`docker compose` or `docker-compose`), as CI has.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::process::{BIN, cli};

const COMPOSE_FILE: &str = "deploy/compose/docker-compose.yml";
const ENDPOINTS: &str = "127.0.0.1:7401,127.0.0.1:7402,127.0.0.1:7403";
const NODES: [&str; 3] = ["replog1", "replog2", "replog3"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    let shown = format!("{cmd:?}");
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e} (Docker is needed for this test)"))
}

fn ok(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn docker(args: &[&str]) -> Command {
    let mut c = Command::new("docker");
    c.args(args);
    c
}

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `replog args...` from the host, which must succeed (with its own retries through leader
/// changes); its stdout.
fn cli_ok(args: &[&str]) -> String {
    let out = cli(args, b"", Duration::from_secs(90));
    assert!(
        out.status.success(),
        "replog {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The compose cluster of one test run; `down -v` and image removal when dropped.
struct Cluster {
    project: String,
    compose: Vec<String>,
    images: Vec<String>,
    image: String,
}

impl Cluster {
    fn compose(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.compose[0]);
        c.args(&self.compose[1..])
            .args(["-p", &self.project, "-f", COMPOSE_FILE])
            .args(args)
            .current_dir(root())
            .env("REPLOG_IMAGE", &self.image);
        c
    }

    fn container(&self, service: &str) -> String {
        let id = ok(&mut self.compose(&["ps", "-q", service]));
        let id = id.trim().to_owned();
        assert!(!id.is_empty(), "no container for {service}");
        id
    }

    fn network(&self) -> String {
        format!("{}_replog", self.project)
    }

    /// `replog cluster status` through the published ports, if it answers.
    fn status(&self) -> Option<serde_json::Value> {
        let out = cli(
            &[
                "cluster",
                "status",
                "-o",
                "json",
                "--retry-timeout",
                "2s",
                "--endpoints",
                ENDPOINTS,
            ],
            b"",
            Duration::from_secs(30),
        );
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).ok())
            .flatten()
    }

    /// Waits until there is a leader and all three members are in sync.
    fn wait_healthy(&self, what: &str) -> serde_json::Value {
        let mut last = None;
        wait_until(what, Duration::from_secs(120), || {
            last = self.status();
            last.as_ref().is_some_and(|s| {
                let m = s["members"].as_array().cloned().unwrap_or_default();
                s["leader_id"].as_u64().is_some()
                    && m.len() == 3
                    && m.iter().all(|m| m["in_sync"] == true)
            })
        });
        last.unwrap_or_default()
    }

    fn leader_service(&self) -> &'static str {
        let s = self.wait_healthy("a leader");
        let id = s["leader_id"].as_u64().unwrap_or(0) as usize;
        NODES[id - 1]
    }

    fn write(&self, tenant: &str, data: &str, endpoints: &str) -> u64 {
        let args = ["write", "--tenant", tenant, "--data", data];
        cli_ok(&[&args[..], &["--endpoints", endpoints]].concat())
            .trim()
            .parse()
            .expect("a sequence number")
    }

    fn replay(&self, tenant: &str, endpoint: &str) -> Vec<String> {
        cli_ok(&["replay", "--tenant", tenant, "--endpoints", endpoint])
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
                v["data"].as_str().unwrap_or_default().to_owned()
            })
            .collect()
    }

    fn health(&self, service: &str) -> String {
        ok(&mut docker(&[
            "inspect",
            "-f",
            "{{.State.Health.Status}}",
            &self.container(service),
        ]))
        .trim()
        .to_owned()
    }

    fn wait_container_healthy(&self, service: &str) {
        wait_until(
            &format!("{service}'s Docker health check"),
            Duration::from_secs(120),
            || self.health(service) == "healthy",
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Ok(out) = self
                .compose(&["logs", "--no-color", "--tail", "60"])
                .output()
        {
            eprintln!("{}", String::from_utf8_lossy(&out.stdout));
        }
        for c in ["verify", "single"] {
            let _ = docker(&["rm", "-f", "-v", &format!("{}-{c}", self.project)]).output();
        }
        let _ = self.compose(&["down", "-v", "--timeout", "5"]).output();
        for image in &self.images {
            let _ = docker(&["rmi", "-f", image]).output();
        }
        // The build stage's images (the classic builder keeps them, untagged).
        let _ = docker(&[
            "image",
            "prune",
            "-f",
            "--filter",
            "label=replog.stage=build",
        ])
        .output();
    }
}

/// `docker compose` (v2) or `docker-compose` (v1).
fn compose_command() -> Vec<String> {
    let v2 = Command::new("docker").args(["compose", "version"]).output();
    if v2.is_ok_and(|o| o.status.success()) {
        return vec!["docker".into(), "compose".into()];
    }
    let v1 = Command::new("docker-compose").arg("version").output();
    assert!(
        v1.is_ok_and(|o| o.status.success()),
        "neither `docker compose` nor `docker-compose` works"
    );
    vec!["docker-compose".into()]
}

/// A base image made of this machine's files: the binary's shared libraries (the dynamic
/// loader among them), and `sh`, `cp` and `mkdir` with theirs (the Dockerfile's build stage
/// runs `sh -c "mkdir ... && cp ..."` when BINARY=prebuilt).
fn import_base_image(tag: &str, scratch: &Path) {
    let rootfs = scratch.join("rootfs");
    std::fs::create_dir_all(rootfs.join("tmp")).unwrap();
    let mut files: Vec<String> = Vec::new();
    for (tool, at) in [
        (BIN, None),
        ("/bin/sh", Some("bin/sh")),
        ("/bin/cp", Some("bin/cp")),
        ("/bin/mkdir", Some("bin/mkdir")),
    ] {
        let real = std::fs::canonicalize(tool).unwrap_or_else(|e| panic!("{tool}: {e}"));
        if let Some(at) = at {
            let dest = rootfs.join(at);
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(&real, &dest).unwrap();
        }
        let ldd = ok(Command::new("ldd").arg(&real));
        for line in ldd.lines() {
            let path = match line.split_once("=>") {
                Some((_, rhs)) => rhs.trim().split(' ').next().unwrap_or(""),
                None => line.trim().split(' ').next().unwrap_or(""),
            };
            // linux-vdso.so.1 comes from the kernel.
            if path.starts_with('/') && !files.iter().any(|f| f == path) {
                files.push(path.to_owned());
            }
        }
    }
    for path in &files {
        let dest = rootfs.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(path, &dest).unwrap_or_else(|e| panic!("copy {path}: {e}"));
    }
    let tar = scratch.join("base.tar");
    ok(Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    ok(docker(&["import"]).arg(&tar).arg(tag));
}

/// Builds deploy/docker/Dockerfile from a context holding what it copies: the binary as
/// target/release/replog and deploy/docker/data/, with `base` as both the build stage's and
/// the runtime's image.
fn build_image(tag: &str, base: &str, version: &str, scratch: &Path) {
    let ctx = scratch.join("context");
    let bin_dir = ctx.join("target/release");
    std::fs::create_dir_all(&bin_dir).unwrap();
    let bin = bin_dir.join("replog");
    if !bin.exists() {
        std::fs::copy(BIN, &bin).unwrap();
        // As the Dockerfile's cargo stage does (CARGO_PROFILE_RELEASE_STRIP=debuginfo), when
        // binutils are here.
        let _ = Command::new("strip")
            .arg("--strip-debug")
            .arg(&bin)
            .status();
    }
    let data = ctx.join("deploy/docker/data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(
        root().join("deploy/docker/data/README"),
        data.join("README"),
    )
    .unwrap();
    // The classic builder: BuildKit needs the buildx plugin, which CI's Docker lacks. The
    // Dockerfile works with both.
    ok(docker(&["build", "-q"])
        .env("DOCKER_BUILDKIT", "0")
        .arg("-f")
        .arg(root().join("deploy/docker/Dockerfile"))
        .args(["--build-arg", "BINARY=prebuilt"])
        .args(["--build-arg", &format!("RUNTIME_IMAGE={base}")])
        .args(["--build-arg", &format!("RUST_IMAGE={base}")])
        .args(["--build-arg", &format!("VERSION={version}")])
        .args(["-t", tag])
        .arg(&ctx));
}

/// Starts `replog verify` in a container on the compose network, writing through the nodes'
/// service names until it gets SIGINT.
fn start_verify(c: &Cluster, name: &str) -> Child {
    Command::new("docker")
        .args(["run", "--rm", "--name", name, "--network", &c.network()])
        .args(["-e", "RUST_LOG=warn", &c.image])
        .args([
            "verify",
            "--endpoints",
            "replog1:7400,replog2:7400,replog3:7400",
            "--duration",
            "30m",
            "--producers",
            "2",
            "--stall-threshold",
            "30s",
            "-o",
            "json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("docker run verify")
}

#[test]
fn image_and_compose_cluster_survive_kills_partitions_restarts_and_an_upgrade() {
    ok(&mut docker(&["info", "-f", "{{.ServerVersion}}"]));
    let run_id = format!("replogci{}", std::process::id());
    let scratch = tempfile::tempdir().unwrap();
    let base = format!("{run_id}-base:latest");
    let v1 = format!("{run_id}:v1");
    let v2 = format!("{run_id}:v2");
    let mut cluster = Cluster {
        project: run_id.clone(),
        compose: compose_command(),
        images: vec![base.clone(), v1.clone(), v2.clone()],
        image: v1.clone(),
    };

    // The image: built from the Dockerfile users build, on a base made here.
    import_base_image(&base, scratch.path());
    build_image(&v1, &base, "ci-1", scratch.path());
    let size: u64 = ok(&mut docker(&["image", "inspect", "-f", "{{.Size}}", &v1]))
        .trim()
        .parse()
        .unwrap();
    eprintln!("image {v1}: {:.1} MiB", size as f64 / (1 << 20) as f64);
    let user = ok(&mut docker(&[
        "image",
        "inspect",
        "-f",
        "{{.Config.User}}",
        &v1,
    ]));
    assert_eq!(user.trim(), "10001:10001");

    // Out of the box the image listens on every interface, so it asks for a token file (or a
    // knowing REPLOG_AUTH__ENABLED=false) and for TLS (or a knowing REPLOG_TLS__INSECURE), and
    // says so, exit 2, rather than serving anyone in plaintext.
    let refused = run(&mut docker(&["run", "--rm", &v1]));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("auth.token_file"), "{stderr}");
    let refused = run(&mut docker(&[
        "run",
        "--rm",
        "-e",
        "REPLOG_AUTH__ENABLED=false",
        &v1,
    ]));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("TLS is off"), "{stderr}");

    // One node configured by a mounted file (REPLOG_CONFIG), a variable over one of its keys;
    // bound to every interface, it advertises its host name.
    let file = scratch.path().join("replog.yaml");
    std::fs::write(
        &file,
        "node:\n  id: 7\ntls:\n  insecure: true\nauth:\n  enabled: false\n",
    )
    .unwrap();
    let single = format!("{run_id}-single");
    ok(docker(&["run", "-d", "--name", &single, "-v"])
        .arg(format!("{}:/etc/replog/replog.yaml:ro", file.display()))
        .args(["-e", "REPLOG_CONFIG=/etc/replog/replog.yaml"])
        .args(["-e", "REPLOG_NODE__ID=8", &v1]));
    let hostname = ok(&mut docker(&[
        "inspect",
        "-f",
        "{{.Config.Hostname}}",
        &single,
    ]));
    let mut member = serde_json::Value::Null;
    wait_until("the single node's status", Duration::from_secs(60), || {
        let out = run(&mut docker(&[
            "exec", &single, "replog", "cluster", "status", "-o", "json",
        ]));
        member = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .map(|s| s["members"][0].clone())
            .unwrap_or_default();
        out.status.success() && member["id"].is_u64()
    });
    // The file's TLS and auth keys let it start; the variable's id won over the file's 7.
    assert_eq!(member["id"], 8, "{member}");
    assert_eq!(
        member["address"],
        format!("{}:7400", hostname.trim()),
        "{member}"
    );
    ok(&mut docker(&["rm", "-f", "-v", &single]));

    // The monitoring profile is a valid part of the compose file (its images cannot be pulled
    // here).
    ok(&mut cluster.compose(&["--profile", "monitoring", "config", "-q"]));

    // The cluster, healthy by Docker's health check (grpc.health.v1) and by replog's own.
    ok(&mut cluster.compose(&["up", "-d", "--no-build"]));
    for n in NODES {
        cluster.wait_container_healthy(n);
    }
    cluster.wait_healthy("a healthy cluster");
    let top = ok(&mut docker(&[
        "top",
        &cluster.container("replog1"),
        "-o",
        "pid,uid,args",
    ]));
    assert!(top.contains("10001"), "not running as uid 10001:\n{top}");

    // Writes and replays through each published port.
    let mut written = Vec::new();
    for (i, port) in ["7401", "7402", "7403"].iter().enumerate() {
        let data = format!("hello-{i}");
        cluster.write("ci", &data, &format!("127.0.0.1:{port}"));
        written.push(data);
    }
    for port in ["7401", "7402", "7403"] {
        wait_until("a replay with every write", Duration::from_secs(30), || {
            cluster.replay("ci", &format!("127.0.0.1:{port}")) == written
        });
    }

    let verify = start_verify(&cluster, &format!("{run_id}-verify"));

    // Kill the leader (SIGKILL), keep writing through the others, then bring it back.
    let leader = cluster.leader_service();
    ok(&mut docker(&["kill", &cluster.container(leader)]));
    let others: Vec<String> = NODES
        .iter()
        .zip(["7401", "7402", "7403"])
        .filter(|(n, _)| **n != leader)
        .map(|(_, p)| format!("127.0.0.1:{p}"))
        .collect();
    for i in 0..10 {
        let data = format!("after-kill-{i}");
        cluster.write("ci", &data, &others.join(","));
        written.push(data);
    }
    ok(&mut docker(&["start", &cluster.container(leader)]));
    cluster.wait_healthy("the killed leader back in sync");

    // Cut a follower off the network; the other two keep writing; reconnect it.
    let leader = cluster.leader_service();
    let follower = NODES.iter().find(|n| **n != leader).copied().unwrap();
    let net = cluster.network();
    let follower_id = cluster.container(follower);
    ok(&mut docker(&["network", "disconnect", &net, &follower_id]));
    for i in 0..10 {
        let data = format!("partitioned-{i}");
        let port = 7401 + NODES.iter().position(|n| *n == leader).unwrap();
        cluster.write("ci", &data, &format!("127.0.0.1:{port}"));
        written.push(data);
    }
    wait_until(
        "the cut-off node seen out of sync",
        Duration::from_secs(30),
        || {
            cluster.status().is_some_and(|s| {
                s["members"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|m| m["in_sync"] == false)
            })
        },
    );
    ok(&mut docker(&[
        "network",
        "connect",
        "--alias",
        follower,
        &net,
        &follower_id,
    ]));
    cluster.wait_healthy("the reconnected node back in sync");

    // A rolling restart: SIGTERM (docker stop) stops each node cleanly (exit 0), one at a time,
    // each back in sync before the next.
    for n in NODES {
        let id = cluster.container(n);
        ok(&mut docker(&["stop", "-t", "30", &id]));
        let code = ok(&mut docker(&["inspect", "-f", "{{.State.ExitCode}}", &id]));
        assert_eq!(code.trim(), "0", "{n} did not stop cleanly on SIGTERM");
        ok(&mut docker(&["start", &id]));
        cluster.wait_healthy(&format!("{n} back after its restart"));
    }

    // An upgrade: every node recreated from a new image over its volume, one at a time.
    build_image(&v2, &base, "ci-2", scratch.path());
    let v2_id = ok(&mut docker(&["image", "inspect", "-f", "{{.Id}}", &v2]));
    cluster.image = v2.clone();
    for n in NODES {
        ok(&mut cluster.compose(&["up", "-d", "--no-build", "--no-deps", n]));
        let image = ok(&mut docker(&[
            "inspect",
            "-f",
            "{{.Image}}",
            &cluster.container(n),
        ]));
        assert_eq!(image.trim(), v2_id.trim(), "{n} not on the new image");
        cluster.wait_healthy(&format!("{n} upgraded and in sync"));
    }
    for i in 0..3 {
        let data = format!("upgraded-{i}");
        cluster.write("ci", &data, ENDPOINTS);
        written.push(data);
    }

    // verify: stop writing (SIGINT), then its check of every member.
    ok(&mut docker(&[
        "kill",
        "--signal",
        "SIGINT",
        &format!("{run_id}-verify"),
    ]));
    let out = verify.wait_with_output().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "verify printed no report ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    eprintln!("verify: {report}");
    assert!(out.status.success(), "verify failed: {report}");
    assert!(report["acknowledged"].as_u64().unwrap_or(0) > 0, "{report}");
    for field in [
        "lost",
        "duplicated",
        "reordered",
        "divergent",
        "unreadable_members",
    ] {
        assert_eq!(report[field], 0, "{field}: {report}");
    }

    // Everything written through the published ports is still there, in order, on every node.
    for port in ["7401", "7402", "7403"] {
        wait_until("every write on every node", Duration::from_secs(30), || {
            cluster.replay("ci", &format!("127.0.0.1:{port}")) == written
        });
    }
}

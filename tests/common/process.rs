//! Driving the real `replog` binary: `replog serve` processes on port 0 and CLI commands with
//! deadlines. Every wait has a deadline; nothing sleeps for a fixed time to "let it settle".
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_replog");

/// A running `replog serve`.
pub struct ServeProc {
    pub id: u64,
    pub child: Child,
    /// Client gRPC address (host:port).
    pub addr: String,
    /// Advertised peer address (host:port): what membership names.
    pub peer_addr: String,
    /// `/metrics` address (host:port).
    pub metrics: String,
    pub data_dir: PathBuf,
    /// Where its stderr goes (for failure messages).
    pub log: PathBuf,
}

impl ServeProc {
    /// Starts `replog serve --id id --listen listen --metrics-listen 127.0.0.1:0 --data-dir dir
    /// extra...` and waits for the line that says where it listens.
    pub fn start(id: u64, dir: &Path, listen: &str, extra: &[&str]) -> ServeProc {
        Self::start_in(Command::new(BIN), id, dir, listen, "127.0.0.1:0", extra)
    }

    /// Like [`ServeProc::start`], with `cmd` as the program to run (e.g. `ip netns exec NS
    /// replog`: it execs, so the child's pid is the node's) and metrics on `metrics_listen`.
    pub fn start_in(
        mut cmd: Command,
        id: u64,
        dir: &Path,
        listen: &str,
        metrics_listen: &str,
        extra: &[&str],
    ) -> ServeProc {
        let data_dir = dir.join(format!("node-{id}"));
        let log = dir.join(format!("node-{id}.log"));
        // Warnings and errors only, unless the caller's `cmd` asks for more.
        if !cmd.get_envs().any(|(k, _)| k == "RUST_LOG") {
            cmd.env("RUST_LOG", "warn");
        }
        let mut child = cmd
            .args(["serve", "--id", &id.to_string(), "--listen", listen])
            .args(["--metrics-listen", metrics_listen, "--data-dir"])
            .arg(&data_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn replog serve");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        let log_path = log.clone();
        std::thread::spawn(move || {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .expect("node log");
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(file, "{line}");
                if line.contains("serving gRPC on") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("node {id} did not start: {}", read(&log)));
        let addr = between(&line, "serving gRPC on ", " ");
        let peer_addr = between(&line, "), peers on ", " ");
        let metrics = between(&line, "metrics on http://", "/metrics");
        ServeProc {
            id,
            child,
            addr,
            peer_addr,
            metrics,
            data_dir,
            log,
        }
    }

    /// SIGKILL: no shutdown at all.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends a signal (SIGSTOP, SIGCONT, ...) to the node.
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, sig);
        }
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(&mut self) {
        // SAFETY: kill(2) on our child's pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "node {} exited {status}", self.id);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("node {} did not stop on SIGTERM", self.id);
    }

    /// The text of `/metrics`.
    pub fn scrape(&self) -> String {
        let mut s = std::net::TcpStream::connect(&self.metrics).expect("connect to /metrics");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(s, "GET /metrics HTTP/1.0\r\nHost: {}\r\n\r\n", self.metrics).unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).expect("read /metrics");
        let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP response");
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{head}"
        );
        body.to_owned()
    }

    /// The value of an unlabelled metric.
    pub fn metric(&self, name: &str) -> f64 {
        self.scrape()
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("metric {name} not found"))
    }
}

impl Drop for ServeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn between(s: &str, start: &str, end: &str) -> String {
    let rest = &s[s.find(start).expect(start) + start.len()..];
    rest[..rest.find(end).unwrap_or(rest.len())].to_owned()
}

pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// Runs `replog args...` with `stdin`, killing it after `timeout`.
pub fn cli(args: &[&str], stdin: &[u8], timeout: Duration) -> Output {
    let mut child = Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("REPLOG_ENDPOINTS")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn replog");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => out.expect("wait for replog"),
        Err(_) => {
            // SAFETY: kill(2) on our child's pid.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
            }
            panic!(
                "`replog {}` did not finish within {timeout:?}",
                args.join(" ")
            );
        }
    }
}

/// Runs a CLI command that must succeed; returns its stdout.
pub fn ok(args: &[&str]) -> String {
    ok_in(args, b"")
}

pub fn ok_in(args: &[&str], stdin: &[u8]) -> String {
    let out = cli(args, stdin, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "`replog {}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 stdout")
}

/// Runs a CLI command that must fail with exit code `code`; returns its stderr.
pub fn fails(args: &[&str], stdin: &[u8], code: i32) -> String {
    let out = cli(args, stdin, Duration::from_secs(60));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "`replog {}`: {err}",
        args.join(" ")
    );
    err
}

/// Polls `cond` until it holds or `timeout` passes.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Node 1 initialises a cluster; nodes 2..=n start empty and are added with `cluster
/// add-node`; returns once every member is in sync. `extra` goes to every `replog serve`.
pub fn start_cluster_with(dir: &Path, n: u64, extra: &[&str]) -> Vec<ServeProc> {
    let with = |mode: &'static str| [extra, &[mode]].concat();
    let mut nodes = vec![ServeProc::start(1, dir, "127.0.0.1:0", &with("--init"))];
    for id in 2..=n {
        let p = ServeProc::start(id, dir, "127.0.0.1:0", &with("--no-init"));
        ok(&[
            "cluster",
            "add-node",
            "--id",
            &id.to_string(),
            "--addr",
            &p.peer_addr,
            "--endpoints",
            &nodes[0].addr,
        ]);
        nodes.push(p);
    }
    let ids: Vec<u64> = (1..=n).collect();
    wait_until("every member in sync", Duration::from_secs(60), || {
        all_in_sync(&status(&nodes[0].addr), &ids)
    });
    nodes
}

/// `cluster status -o json` from `endpoint`.
pub fn status(endpoint: &str) -> serde_json::Value {
    let out = ok(&["cluster", "status", "-o", "json", "--endpoints", endpoint]);
    serde_json::from_str(&out).expect("status JSON")
}

/// True when the status lists exactly `ids`, all in sync, with a leader.
pub fn all_in_sync(s: &serde_json::Value, ids: &[u64]) -> bool {
    let members = s["members"].as_array().cloned().unwrap_or_default();
    let mut seen: Vec<u64> = members.iter().filter_map(|m| m["id"].as_u64()).collect();
    seen.sort();
    s["leader_id"].as_u64().is_some() && seen == ids && members.iter().all(|m| m["in_sync"] == true)
}

/// Replayed entries as `(sequence, tenant, data)`.
pub fn replay_lines(out: &str) -> Vec<(u64, String, String)> {
    out.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            (
                v["sequence"].as_u64().expect("sequence"),
                v["tenant"].as_str().expect("tenant").to_owned(),
                v["data"].as_str().expect("data").to_owned(),
            )
        })
        .collect()
}

/// True when member `id` holds everything the leader holds (lag 0), has applied all of it, and
/// is in sync.
pub fn caught_up(s: &serde_json::Value, id: u64) -> bool {
    s["members"].as_array().into_iter().flatten().any(|m| {
        m["id"] == id
            && m["lag"] == 0
            && m["applied_index"] == m["last_index"]
            && m["in_sync"] == true
    })
}

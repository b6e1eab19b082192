//! `replog wal ...` driven through the real binary, as an operator would.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn replog(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_replog"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run replog");
    // A command that fails on its arguments exits before reading stdin: a broken pipe is fine.
    let _ = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes());
    child.wait_with_output().expect("wait for replog")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

#[test]
fn append_replay_segments_verify_checkpoint_truncate() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("wal");
    let d = d.to_str().unwrap();
    let out = replog(
        &["wal", "append", "--dir", d, "--tenant", "acme"],
        "hello\nworld\n{\"k\":1}\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout(&out), "1\n2\n3\n");
    let out = replog(
        &[
            "wal", "append", "--dir", d, "--tenant", "beta", "--op", "delete",
        ],
        "gone\n",
    );
    assert_eq!(stdout(&out), "4\n");

    let entries = json_lines(&replog(&["wal", "replay", "--dir", d, "-o", "json"], ""));
    assert_eq!(entries.len(), 4);
    let e = &entries[3];
    assert_eq!(
        (
            e["sequence"].as_u64(),
            e["tenant"].as_str(),
            e["operation"].as_str(),
            e["data"].as_str()
        ),
        (Some(4), Some("beta"), Some("delete"), Some("gone"))
    );
    assert!(e["checksum"].as_u64().is_some());
    let ts = e["timestamp"].as_str().unwrap();
    assert!(humantime::parse_rfc3339(ts).is_ok(), "{ts} is RFC 3339");
    assert_eq!(entries[2]["data"].as_str(), Some("{\"k\":1}"));

    let only_acme = json_lines(&replog(
        &[
            "wal", "replay", "--dir", d, "-o", "json", "--tenant", "acme", "--from", "2",
        ],
        "",
    ));
    assert_eq!(
        only_acme
            .iter()
            .map(|e| e["sequence"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![2, 3]
    );

    let segs: serde_json::Value = serde_json::from_str(&stdout(&replog(
        &["wal", "segments", "--dir", d, "-o", "json"],
        "",
    )))
    .unwrap();
    assert_eq!(segs[0]["status"].as_str(), Some("active"));
    assert_eq!(segs[0]["end_seq"].as_u64(), Some(4));

    let out = replog(&["wal", "verify", "--dir", d], "");
    assert!(out.status.success());
    assert!(stdout(&out).contains(" ok "), "{}", stdout(&out));

    assert_eq!(
        stdout(&replog(
            &["wal", "checkpoint", "--dir", d, "--name", "c1"],
            ""
        )),
        "4\n"
    );
    replog(&["wal", "append", "--dir", d, "--tenant", "acme"], "five\n");
    let after = json_lines(&replog(
        &[
            "wal",
            "replay",
            "--dir",
            d,
            "-o",
            "json",
            "--checkpoint",
            "c1",
        ],
        "",
    ));
    assert_eq!(
        after
            .iter()
            .map(|e| e["data"].as_str().unwrap())
            .collect::<Vec<_>>(),
        vec!["five"]
    );

    assert!(
        replog(&["wal", "truncate", "--dir", d, "--before", "3"], "")
            .status
            .success()
    );
    let out = replog(&["wal", "replay", "--dir", d, "--from", "1"], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("before the log start 3"));
    assert_eq!(
        json_lines(&replog(&["wal", "replay", "--dir", d, "-o", "json"], "")).len(),
        3
    );
}

#[test]
fn bad_input_gets_a_message_and_an_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let cases: [(&[&str], i32, &str); 5] = [
        (
            &["wal", "append", "--dir", d, "--tenant", ""],
            1,
            "tenant id is empty",
        ),
        (
            &["wal", "append", "--dir", d, "--tenant", "t", "--op", "frob"],
            2,
            "unknown operation",
        ),
        (
            &[
                "wal",
                "append",
                "--dir",
                d,
                "--tenant",
                "t",
                "--segment-size",
                "1KB",
            ],
            2,
            "segment_size",
        ),
        (
            &["wal", "replay", "--dir", "/nonexistent/replog"],
            1,
            "no WAL directory",
        ),
        (
            &["wal", "replay", "--dir", d, "--checkpoint", "nope"],
            1,
            "checkpoint \"nope\" not found",
        ),
    ];
    for (args, code, message) in cases {
        let out = replog(args, "x\n");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(message), "{args:?}: {err}");
    }
}

#[test]
fn verify_reports_a_corrupted_sealed_segment() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let lines: String = (0..300)
        .map(|i| format!("entry number {i} with some padding\n"))
        .collect();
    let out = replog(
        &[
            "wal",
            "append",
            "--dir",
            d,
            "--tenant",
            "t",
            "--segment-size",
            "4KiB",
        ],
        &lines,
    );
    assert!(out.status.success());
    let mut segs: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    let victim = &segs[1];
    let mut bytes = std::fs::read(victim).unwrap();
    bytes[500] ^= 0x04;
    std::fs::write(victim, &bytes).unwrap();
    let out = replog(&["wal", "verify", "--dir", d], "");
    assert_eq!(out.status.code(), Some(1));
    let name = victim.file_name().unwrap().to_str().unwrap();
    assert!(
        stdout(&out)
            .lines()
            .any(|l| l.starts_with(name) && l.contains("CORRUPTED")),
        "{}",
        stdout(&out)
    );
    let out = replog(&["wal", "replay", "--dir", d], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("corrupted entry"));
}

#[test]
fn sigkill_loses_no_acknowledged_entry() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_replog"))
        .args(["wal", "append", "--dir", d, "--tenant", "t"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        // Far more than will be acknowledged before the kill; stops when the pipe breaks.
        for i in 0..1_000_000u32 {
            if writeln!(stdin, "line-{i}").is_err() {
                break;
            }
        }
    });
    let mut acked = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        acked.push(line.unwrap().parse::<u64>().unwrap());
        if acked.len() == 2_000 {
            child.kill().unwrap();
            break;
        }
    }
    child.wait().unwrap();
    writer.join().unwrap();
    assert_eq!(acked, (1..=2_000).collect::<Vec<_>>());
    let out = replog(&["wal", "replay", "--dir", d, "-o", "json"], "");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries = json_lines(&out);
    assert!(
        entries.len() >= acked.len(),
        "{} entries after the kill, {} acknowledged",
        entries.len(),
        acked.len()
    );
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e["sequence"].as_u64(), Some(i as u64 + 1));
        assert_eq!(e["data"].as_str(), Some(format!("line-{i}").as_str()));
    }
    assert!(Path::new(d).join("LOCK").exists());
}

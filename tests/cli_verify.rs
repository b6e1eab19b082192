//! `replog verify` through the binary: a clean run against a node reports every write and exits
//! 0; bad arguments are refused with a message and exit code 2.

mod common;

use common::process::*;

#[test]
fn verify_reports_a_clean_run_and_refuses_bad_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = ServeProc::start(1, dir.path(), "127.0.0.1:0", &["--init"]);
    let out = ok(&[
        "verify",
        "--count",
        "40",
        "--producers",
        "3",
        "-o",
        "json",
        "--endpoints",
        &node.addr,
    ]);
    let r: serde_json::Value = serde_json::from_str(&out).expect("a JSON report");
    assert_eq!(r["ok"], true, "{r:#}");
    assert_eq!(r["attempted"], 40);
    assert_eq!(r["acknowledged"], 40);
    for k in [
        "lost",
        "duplicated",
        "reordered",
        "sequence_gaps",
        "divergent",
        "tenant_read_mismatches",
    ] {
        assert_eq!(r[k], 0, "{k}");
    }
    let members = r["members"].as_array().expect("members");
    assert_eq!(members.len(), 1);
    assert_eq!(members[0]["run_entries"], 40);
    // The table says the same, and a second run checks only its own entries.
    let table = ok(&["verify", "--count", "5", "--endpoints", &node.addr]);
    assert!(table.lines().any(|l| l == "OK"), "{table}");
    assert!(table.contains("acknowledged         5"), "{table}");

    let e = &node.addr;
    let bad: [(&[&str], &str); 4] = [
        (
            &["verify", "--producers", "0", "--endpoints", e],
            "--producers",
        ),
        (&["verify", "--size", "10", "--endpoints", e], "--size"),
        (
            &[
                "verify",
                "--count",
                "5",
                "--duration",
                "1s",
                "--endpoints",
                e,
            ],
            "cannot be used",
        ),
        (
            &["verify", "--tenant", "no spaces", "--endpoints", e],
            "tenant",
        ),
    ];
    for (args, says) in bad {
        let err = fails(args, b"", 2);
        assert!(err.contains(says), "`replog {}`: {err}", args.join(" "));
    }
    node.stop();
}

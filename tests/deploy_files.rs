//! The deployment files in `deploy/` that no container here can run, checked with the tools
//! their users run: alert rules with `promtool check rules` and `promtool test rules`, every
//! dashboard query parsed by promtool, the metric names they use against what the code
//! exports, the Kubernetes manifests against the API schemas (`kubernetes-validate`, rendered
//! with kustomize when `kubectl` is here), the pods' start script for each kind of pod, and the
//! systemd unit with `systemd-analyze verify`. `bash .ci/run` installs promtool and
//! kubernetes-validate when they are missing.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::process::BIN;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `program args...`, failing the test with a hint when the tool is missing.
fn run(program: &str, args: &[&str], cwd: &Path, install_hint: &str) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} ({e}): {install_hint}"))
}

fn assert_ok(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// `kubernetes-validate` (Kubernetes 1.31 schemas, unknown fields refused) on `files` in `cwd`.
fn validate_k8s(files: &[&str], cwd: &Path) -> Output {
    let mut args = vec![
        "-m",
        "kubernetes_validate",
        "--strict",
        "--quiet",
        "-k",
        "1.31.0",
    ];
    args.extend_from_slice(files);
    run("python3", &args, cwd, KUBEVAL)
}

const PROMTOOL: &str = "install Debian's `prometheus` package (bash .ci/run does)";
const KUBEVAL: &str = "python3 -m pip install kubernetes-validate (bash .ci/run does)";

/// Every metric name the code registers (string literals `"replog_..."` and `"wal_..."`), with
/// the series names a histogram adds.
fn exported_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut stack = vec![root().join("src")];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                for lit in text.split('"').skip(1).step_by(2) {
                    let is_name = (lit.starts_with("replog_") || lit.starts_with("wal_"))
                        && lit.chars().all(|c| c.is_ascii_lowercase() || c == '_');
                    if is_name {
                        for suffix in ["", "_bucket", "_sum", "_count"] {
                            names.insert(format!("{lit}{suffix}"));
                        }
                    }
                }
            }
        }
    }
    names
}

/// The metric names a PromQL expression uses (identifiers starting `replog_` or `wal_`).
fn metrics_in(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts = (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'))
            && (expr[i..].starts_with("replog_") || expr[i..].starts_with("wal_"));
        if starts {
            let end = expr[i..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(expr.len(), |n| i + n);
            out.push(expr[i..end].to_owned());
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// The dashboard's queries, with Grafana's variables replaced by values PromQL accepts.
fn dashboard_queries() -> Vec<(String, String)> {
    let path = root().join("deploy/observability/grafana/replog.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("dashboard JSON");
    assert_eq!(dash["uid"], "replog-overview");
    let mut ids = BTreeSet::new();
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate id"
        );
        assert!(p["gridPos"]["w"].as_u64().is_some(), "{p}");
        if p["type"] == "row" {
            continue;
        }
        let title = p["title"].as_str().expect("title").to_owned();
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for t in targets {
            let expr = t["expr"]
                .as_str()
                .expect("expr")
                .replace("$__rate_interval", "1m")
                .replace("$job", ".*")
                .replace("$instance", ".*");
            out.push((title.clone(), expr));
        }
    }
    out
}

/// The issue asks for these on the dashboard and in the alerts.
#[test]
fn dashboard_and_alerts_cover_what_operators_watch() {
    let queries = dashboard_queries();
    let titles: BTreeSet<&str> = queries.iter().map(|(t, _)| t.as_str()).collect();
    for want in [
        "Write rate",
        "Write latency (received on the leader to acknowledged)",
        "Replication lag per peer (entries, on the leader)",
        "Leader changes",
        "fsync latency",
        "Segments",
        "Disk",
        "Replay",
        "gRPC errors by code",
    ] {
        assert!(titles.contains(want), "no panel {want:?} in {titles:?}");
    }
    let rules =
        std::fs::read_to_string(root().join("deploy/observability/prometheus/alerts.yml")).unwrap();
    for want in [
        "ReplogNoLeader",
        "ReplogReplicaOutOfSync",
        "ReplogLeaderFlapping",
        "ReplogFsyncSlow",
        "ReplogDiskNearlyFull",
        "ReplogNodeDown",
    ] {
        assert!(
            rules.contains(&format!("alert: {want}\n")),
            "no alert {want}"
        );
    }
}

/// A renamed metric breaks the dashboard or an alert silently: every name they use must be one
/// the code registers.
#[test]
fn dashboard_and_alerts_use_only_exported_metrics() {
    let exported = exported_metrics();
    assert!(exported.contains("replog_raft_is_leader"), "{exported:?}");
    let rules =
        std::fs::read_to_string(root().join("deploy/observability/prometheus/alerts.yml")).unwrap();
    let mut used: Vec<(String, String)> = dashboard_queries()
        .into_iter()
        .flat_map(|(t, e)| metrics_in(&e).into_iter().map(move |m| (t.clone(), m)))
        .collect();
    used.extend(
        metrics_in(&rules)
            .into_iter()
            .map(|m| ("alerts.yml".to_owned(), m)),
    );
    assert!(used.len() > 20, "{used:?}");
    let unknown: Vec<_> = used.iter().filter(|(_, m)| !exported.contains(m)).collect();
    assert!(unknown.is_empty(), "not exported by replog: {unknown:?}");
}

/// `promtool check rules` and the rules' unit tests; then every dashboard query, parsed by
/// promtool as a recording rule.
#[test]
fn alert_rules_and_dashboard_queries_pass_promtool() {
    let dir = root().join("deploy/observability/prometheus");
    let out = run(
        "promtool",
        &["check", "rules", "alerts.yml"],
        &dir,
        PROMTOOL,
    );
    assert_ok(&out, "promtool check rules alerts.yml");
    let out = run(
        "promtool",
        &["test", "rules", "alerts_test.yml"],
        &dir,
        PROMTOOL,
    );
    let text = assert_ok(&out, "promtool test rules alerts_test.yml");
    assert!(text.contains("SUCCESS"), "{text}");

    let tmp = tempfile::tempdir().unwrap();
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (title, expr)) in dashboard_queries().iter().enumerate() {
        file.push_str(&format!(
            "      - record: dashboard:query_{i}\n        # {}\n        expr: {}\n",
            title.replace('\n', " "),
            serde_json::to_string(expr).unwrap()
        ));
    }
    std::fs::write(tmp.path().join("dashboard.yml"), &file).unwrap();
    let out = run(
        "promtool",
        &["check", "rules", "dashboard.yml"],
        tmp.path(),
        PROMTOOL,
    );
    assert_ok(
        &out,
        &format!("promtool check rules on the dashboard's queries:\n{file}"),
    );

    // The check can fail: a broken query is refused.
    std::fs::write(
        tmp.path().join("broken.yml"),
        "groups:\n  - name: b\n    rules:\n      - record: b\n        expr: sum(rate(x[1m])\n",
    )
    .unwrap();
    let out = run(
        "promtool",
        &["check", "rules", "broken.yml"],
        tmp.path(),
        PROMTOOL,
    );
    assert!(!out.status.success(), "promtool accepted a broken query");
}

fn kubernetes_files() -> Vec<String> {
    let k = std::fs::read_to_string(root().join("deploy/kubernetes/kustomization.yaml")).unwrap();
    let mut listed = Vec::new();
    let mut in_resources = false;
    for line in k.lines() {
        if line.starts_with("resources:") {
            in_resources = true;
        } else if in_resources && let Some(f) = line.trim().strip_prefix("- ") {
            listed.push(f.to_owned());
        } else if !line.starts_with(' ') {
            in_resources = false;
        }
    }
    listed
}

/// Every manifest passes the Kubernetes 1.31 schemas strictly (no unknown field), the
/// kustomization lists every manifest, and the rendered kustomization passes too.
#[test]
fn kubernetes_manifests_pass_the_api_schemas() {
    let dir = root().join("deploy/kubernetes");
    let listed = kubernetes_files();
    let mut present: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml")
        .collect();
    present.sort();
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(sorted, present, "kustomization.yaml resources vs files");

    let files: Vec<&str> = listed.iter().map(String::as_str).collect();
    let out = validate_k8s(&files, &dir);
    assert_ok(&out, "kubernetes-validate");

    // The validator can fail: a misspelt field is refused.
    let tmp = tempfile::tempdir().unwrap();
    let sts = std::fs::read_to_string(dir.join("statefulset.yaml")).unwrap();
    let broken = sts.replacen("  replicas: 3", "  replica: 3", 1);
    assert_ne!(broken, sts);
    std::fs::write(tmp.path().join("broken.yaml"), broken).unwrap();
    let out = validate_k8s(&["broken.yaml"], tmp.path());
    assert!(!out.status.success(), "the validator accepted `replica:`");

    // Rendered as users apply it (kubectl's built-in kustomize), when kubectl is here.
    if let Ok(out) = Command::new("kubectl")
        .args(["kustomize", "deploy/kubernetes"])
        .current_dir(root())
        .output()
    {
        let rendered = assert_ok(&out, "kubectl kustomize deploy/kubernetes");
        assert!(rendered.contains("namespace: replog"), "{rendered}");
        std::fs::write(tmp.path().join("rendered.yaml"), rendered).unwrap();
        let out = validate_k8s(&["rendered.yaml"], tmp.path());
        assert_ok(&out, "kubernetes-validate of the rendered kustomization");
    }
}

/// The pods' start script (from the ConfigMap), run for a first member, the last first member
/// and a pod added by scaling up, with a stand-in for the binary that prints what it got.
#[test]
fn kubernetes_start_script_bootstraps_first_members_and_joins_the_rest() {
    let cm = std::fs::read_to_string(root().join("deploy/kubernetes/configmap.yaml")).unwrap();
    let script: String = cm
        .split("  start.sh: |\n")
        .nth(1)
        .expect("start.sh in the ConfigMap")
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let start = tmp.path().join("start.sh");
    std::fs::write(&start, &script).unwrap();
    let stub = tmp.path().join("replog");
    std::fs::write(
        &stub,
        "#!/bin/sh\nenv | grep '^REPLOG_NODE__' | sort\nfor a in \"$@\"; do echo \"arg $a\"; done\n",
    )
    .unwrap();
    let mut perms = std::fs::metadata(&stub).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&stub, perms).unwrap();
    let pod = |name: &str| -> Output {
        Command::new("sh")
            .arg(&start)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("REPLOG_BIN", &stub)
            .env("POD_NAME", name)
            .env("POD_NAMESPACE", "prod")
            .env("PEER_SERVICE", "replog-peer")
            .env("CLIENT_SERVICE", "replog")
            .env("REPLOG_CLUSTER_DOMAIN", "cluster.local")
            .env("INITIAL_MEMBERS", "3")
            .output()
            .unwrap()
    };
    let members = "1=replog-0.replog-peer.prod.svc.cluster.local:7500,\
                   2=replog-1.replog-peer.prod.svc.cluster.local:7500,\
                   3=replog-2.replog-peer.prod.svc.cluster.local:7500";
    let first = assert_ok(&pod("replog-0"), "start.sh for replog-0");
    assert!(first.contains("REPLOG_NODE__ID=1\n"), "{first}");
    assert!(
        first.contains(
            "REPLOG_NODE__PEER_ADVERTISE=replog-0.replog-peer.prod.svc.cluster.local:7500\n"
        ),
        "{first}"
    );
    assert!(
        first.contains(&format!("arg --initial-members\narg {members}\n")),
        "{first}"
    );
    let third = assert_ok(&pod("replog-2"), "start.sh for replog-2");
    assert!(third.contains("REPLOG_NODE__ID=3\n"), "{third}");
    assert!(third.contains(&format!("arg {members}\n")), "{third}");
    let added = assert_ok(&pod("replog-3"), "start.sh for replog-3");
    assert!(added.contains("REPLOG_NODE__ID=4\n"), "{added}");
    assert!(
        added.contains("REPLOG_NODE__ADVERTISE=replog-3.replog-peer.prod.svc.cluster.local:7400\n"),
        "{added}"
    );
    assert!(
        added.contains("arg --join\narg replog.prod.svc.cluster.local:7400\n"),
        "{added}"
    );
    assert!(!added.contains("--initial-members"), "{added}");
    let bad = pod("replog");
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");

    // The configuration it points the node at is one the node accepts.
    let yaml: String = cm
        .split("  replog.yaml: |\n")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| l.is_empty() || l.starts_with("    "))
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let cfg: serde_yaml_ng::Value = serde_yaml_ng::from_str(&yaml).expect("replog.yaml");
    assert_eq!(
        cfg["node"]["data_dir"].as_str(),
        Some("/var/lib/replog/data")
    );
}

/// `systemd-analyze verify` accepts the unit (every key known, the binary executable).
#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(root().join("deploy/systemd/replog.service")).unwrap();
    for key in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "EnvironmentFile=",
    ] {
        assert!(unit.contains(key), "{key}");
    }
    // `systemd-analyze verify` of the unit as installed with the binary built here; its stderr.
    let verify = |unit: &str| -> (bool, String) {
        let tmp = tempfile::tempdir().unwrap();
        let local = unit.replace("/usr/local/bin/replog", BIN);
        std::fs::write(tmp.path().join("replog.service"), local).unwrap();
        let out = run(
            "systemd-analyze",
            &["verify", "./replog.service"],
            tmp.path(),
            "install systemd",
        );
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        (out.status.success(), stderr)
    };
    let (ok, stderr) = verify(&unit);
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("replog.service"))
        .collect();
    assert!(ok && problems.is_empty(), "{stderr}");

    // A misspelt key is reported: the check can fail.
    let (_, stderr) = verify(&unit.replace("ProtectSystem=strict", "ProtectSystm=strict"));
    assert!(stderr.contains("ProtectSystm"), "{stderr}");
}

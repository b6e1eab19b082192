//! The WAL's Prometheus metrics, and the `periodic` sync policy (observed through them).

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use prometheus::Registry;
use replog::fs::MemFs;
use replog::wal::{Manager, SyncPolicy, WalConfig};

fn value(registry: &Registry, name: &str) -> f64 {
    let families = registry.gather();
    let family = families
        .iter()
        .find(|f| f.name() == name)
        .unwrap_or_else(|| panic!("{name} is registered"));
    let m = &family.get_metric()[0];
    match family.get_field_type() {
        prometheus::proto::MetricType::COUNTER => m.get_counter().get_value(),
        prometheus::proto::MetricType::GAUGE => m.get_gauge().get_value(),
        prometheus::proto::MetricType::HISTOGRAM => m.get_histogram().get_sample_count() as f64,
        other => panic!("unexpected type {other:?}"),
    }
}

#[test]
fn the_five_wal_metrics_are_registered_and_move() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::new();
    let wal = Manager::open_with(
        small_config(dir.path()),
        Arc::new(replog::fs::StdFs),
        Some(&registry),
    )
    .unwrap();
    for i in 0..100u32 {
        wal.write(record("t", &i.to_le_bytes())).unwrap();
    }
    assert_eq!(value(&registry, "wal_entries_written_total"), 100.0);
    assert!(value(&registry, "wal_bytes_written_total") >= 100.0 * 64.0);
    assert_eq!(
        value(&registry, "wal_segments_count"),
        wal.segments().len() as f64
    );
    assert_eq!(
        value(&registry, "wal_segments"),
        wal.segments().len() as f64
    );
    assert!(
        value(&registry, "wal_sync_duration_seconds") >= 100.0,
        "immediate: an fsync per lone write"
    );
    let replays = value(&registry, "wal_replay_duration_seconds");
    wal.replay(1, |_| std::ops::ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(
        value(&registry, "wal_replay_duration_seconds"),
        replays + 1.0
    );
}

#[test]
fn periodic_fsyncs_on_its_own_within_the_interval() {
    let fs = MemFs::new();
    let registry = Registry::new();
    let cfg = WalConfig {
        sync_policy: SyncPolicy::Periodic,
        sync_interval: Duration::from_millis(20),
        ..small_config(mem_dir())
    };
    let wal = Manager::open_with(cfg.clone(), Arc::new(fs.clone()), Some(&registry)).unwrap();
    let syncs = value(&registry, "wal_sync_duration_seconds");
    for i in 0..10u32 {
        wal.write(record("t", &i.to_le_bytes())).unwrap();
    }
    // Acknowledged before any fsync...
    assert_eq!(value(&registry, "wal_sync_duration_seconds"), syncs);
    // ...and fsync'd by the timer, with no further call.
    let deadline = Instant::now() + Duration::from_secs(10);
    while value(&registry, "wal_sync_duration_seconds") == syncs {
        assert!(Instant::now() < deadline, "no periodic fsync within 10s");
        std::thread::sleep(Duration::from_millis(5));
    }
    fs.crash();
    drop(wal);
    let wal = open_mem(&fs, cfg);
    assert_eq!(summary(&wal).len(), 10);
}

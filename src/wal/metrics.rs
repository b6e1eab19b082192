//! The WAL's Prometheus metrics, registered into a registry the caller passes.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};

#[derive(Clone)]
pub struct WalMetrics {
    pub entries_written: IntCounter,
    pub bytes_written: IntCounter,
    /// `wal_segments_count`: the name issue 2 fixed. promtool flags the `_count` suffix on a
    /// gauge, so the same value is also exported as `wal_segments`.
    pub segments: IntGauge,
    pub segments_gauge: IntGauge,
    pub replay_duration: Histogram,
    pub sync_duration: Histogram,
    /// Sealed segments known damaged and not yet repaired.
    pub damaged_segments: IntGauge,
    /// Damaged segments rewritten from a replica's frames.
    pub segments_repaired: IntCounter,
    /// Bytes read by tenant-filtered replays (index runs and records, or frames scanned).
    pub tenant_read_bytes: IntCounter,
    /// Segments a tenant-filtered replay scanned because they had no usable tenant index.
    pub tenant_scans: IntCounter,
    /// Segment rolls that waited for the next segment's file (its preparation had not ended).
    pub roll_waits: IntCounter,
}

impl WalMetrics {
    /// Creates the metrics; registers them into `registry` if one is given.
    pub fn new(registry: Option<&Registry>) -> prometheus::Result<Self> {
        let m = WalMetrics {
            entries_written: IntCounter::new(
                "wal_entries_written_total",
                "Records appended to the WAL.",
            )?,
            bytes_written: IntCounter::new(
                "wal_bytes_written_total",
                "Bytes of frames written to WAL segments.",
            )?,
            segments: IntGauge::new(
                "wal_segments_count",
                "Segment files currently held by the WAL.",
            )?,
            segments_gauge: IntGauge::new(
                "wal_segments",
                "Segment files currently held by the WAL (wal_segments_count under a name promtool accepts).",
            )?,
            replay_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "wal_replay_duration_seconds",
                    "Duration of WAL replays and of recovery on open.",
                )
                .buckets(prometheus::exponential_buckets(0.0001, 4.0, 12)?),
            )?,
            sync_duration: Histogram::with_opts(
                HistogramOpts::new("wal_sync_duration_seconds", "Duration of WAL fsyncs.")
                    .buckets(prometheus::exponential_buckets(0.000_01, 2.5, 14)?),
            )?,
            damaged_segments: IntGauge::new(
                "wal_damaged_segments",
                "Sealed WAL segments found damaged (a bad checksum or frame) and not yet repaired.",
            )?,
            segments_repaired: IntCounter::new(
                "wal_segments_repaired_total",
                "Damaged WAL segments rewritten from frames fetched from a healthy replica.",
            )?,
            tenant_read_bytes: IntCounter::new(
                "wal_tenant_read_bytes_total",
                "Bytes read by tenant-filtered replays: tenant index runs and the records they point at, or whole frames of segments scanned without an index.",
            )?,
            tenant_scans: IntCounter::new(
                "wal_tenant_scans_total",
                "Segments a tenant-filtered replay scanned whole because they had no usable tenant index.",
            )?,
            roll_waits: IntCounter::new(
                "wal_roll_waits_total",
                "Segment rolls that waited for the next segment's file because its preparation (zero-fill) had not ended.",
            )?,
        };
        if let Some(r) = registry {
            r.register(Box::new(m.entries_written.clone()))?;
            r.register(Box::new(m.bytes_written.clone()))?;
            r.register(Box::new(m.segments.clone()))?;
            r.register(Box::new(m.segments_gauge.clone()))?;
            r.register(Box::new(m.replay_duration.clone()))?;
            r.register(Box::new(m.sync_duration.clone()))?;
            r.register(Box::new(m.damaged_segments.clone()))?;
            r.register(Box::new(m.segments_repaired.clone()))?;
            r.register(Box::new(m.tenant_read_bytes.clone()))?;
            r.register(Box::new(m.tenant_scans.clone()))?;
            r.register(Box::new(m.roll_waits.clone()))?;
        }
        Ok(m)
    }

    pub fn set_segments(&self, n: usize) {
        self.segments.set(n as i64);
        self.segments_gauge.set(n as i64);
    }
}

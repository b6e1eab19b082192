//! Per-tenant quotas, like Kafka's produce and fetch quotas and NATS account limits: write
//! entries/s and bytes/s, replay bytes/s, and the bytes a tenant may keep in the log.
//!
//! A tenant's quota comes, limit by limit, from the one set with `replog quota set`
//! (replicated, in the state machine), else the node's `quotas.tenants.<tenant>`, else
//! `quotas.default`; `0` is no limit. Bytes are data bytes.
//!
//! - **Write rates** are token buckets on the leader, refilled at the rate and holding one
//!   second of it. A write over them is refused whole (RESOURCE_EXHAUSTED, nothing written)
//!   with the delay after which it would pass; a batch larger than one second of the rate
//!   passes on a full bucket and leaves it in debt, so it is never refused for good.
//! - **Replay** is throttled, not refused: a stream sleeps while its tenants' buckets are in
//!   debt (each node serves its own replays, so each node counts them).
//! - **Retained bytes** are counted by a task of every node while some tenant has such a
//!   limit: it reads the committed log once, then each new commit, summing each tenant's data
//!   bytes per range of [`USAGE_RANGE`] sequence numbers, and forgets a range once a truncation
//!   (or retention) has passed it whole. A write that would take a tenant over is refused
//!   until the log is truncated; until the first read is done the limit is not enforced.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Core, CoreError};
use crate::metrics::NodeMetrics;
use crate::raft::state_machine::SmShared;
use crate::raft::types::QuotaLimits;
use crate::wal::{ProducerKey, SequenceNumber};

/// Sequence numbers per range of the retained-bytes count (a truncation frees a tenant's
/// bytes once a whole range is below the log start).
pub const USAGE_RANGE: u64 = 1 << 16;

/// Tenants whose rate buckets are kept at most; idle ones (full buckets) are dropped first.
const MAX_BUCKETS: usize = 100_000;

/// Tenants named in quota metrics at most; others are counted under `_other`.
const MAX_TENANT_SERIES: usize = 1_000;

/// Records read per step of the retained-bytes count.
const USAGE_READ_BATCH: usize = 8192;

/// A tenant's quota: each limit per second (bytes are data bytes) or in all; `None` leaves the
/// limit to the next source (replicated, then the node's config for the tenant, then its
/// default); `Some(0)` is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Quota {
    pub write_entries_per_sec: Option<u64>,
    pub write_bytes_per_sec: Option<u64>,
    pub replay_bytes_per_sec: Option<u64>,
    pub retained_bytes: Option<u64>,
}

impl Quota {
    /// `self`'s limits, with those it leaves unset taken from `below`.
    pub fn over(self, below: Quota) -> Quota {
        QuotaLimits::from(self).over(below.into()).into()
    }

    pub fn is_empty(&self) -> bool {
        *self == Quota::default()
    }
}

/// The replicated form (the state machine's).
impl From<Quota> for QuotaLimits {
    fn from(q: Quota) -> QuotaLimits {
        QuotaLimits {
            write_entries_per_sec: q.write_entries_per_sec,
            write_bytes_per_sec: q.write_bytes_per_sec,
            replay_bytes_per_sec: q.replay_bytes_per_sec,
            retained_bytes: q.retained_bytes,
        }
    }
}

impl From<QuotaLimits> for Quota {
    fn from(q: QuotaLimits) -> Quota {
        Quota {
            write_entries_per_sec: q.write_entries_per_sec,
            write_bytes_per_sec: q.write_bytes_per_sec,
            replay_bytes_per_sec: q.replay_bytes_per_sec,
            retained_bytes: q.retained_bytes,
        }
    }
}

/// The `quotas:` keys of the config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaConfig {
    /// Every tenant's quota, unless it has its own.
    pub default: Quota,
    /// Quotas of named tenants (over `default`, limit by limit).
    pub tenants: BTreeMap<String, Quota>,
}

/// Which limit a write or replay went over (also the metrics' `quota` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    WriteEntries,
    WriteBytes,
    ReplayBytes,
    RetainedBytes,
}

impl Limit {
    pub fn key(self) -> &'static str {
        match self {
            Limit::WriteEntries => "write_entries_per_sec",
            Limit::WriteBytes => "write_bytes_per_sec",
            Limit::ReplayBytes => "replay_bytes_per_sec",
            Limit::RetainedBytes => "retained_bytes",
        }
    }
}

/// A token bucket holding up to one second of its rate.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rate: u64, now: Instant) -> Bucket {
        Bucket {
            tokens: rate as f64,
            at: now,
        }
    }

    fn refill(&mut self, rate: u64, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * rate as f64).min(rate as f64);
        self.at = now;
    }

    /// How long until `n` may be taken (zero: now). More than the bucket holds needs it full.
    fn wait_for(&self, rate: u64, n: u64) -> Duration {
        let need = (n as f64).min(rate as f64);
        if self.tokens >= need {
            return Duration::ZERO;
        }
        Duration::from_secs_f64((need - self.tokens) / rate as f64)
    }
}

#[derive(Default)]
struct TenantBuckets {
    entries: Option<Bucket>,
    bytes: Option<Bucket>,
    replay: Option<Bucket>,
}

/// Each tenant's data bytes per range of sequence numbers, and in all.
#[derive(Default)]
struct Usage {
    /// Counting (some tenant has a retained-bytes limit).
    on: bool,
    /// The count covers the log from its start up to here.
    scanned: SequenceNumber,
    /// The first full read is done: the count can be enforced.
    ready: bool,
    ranges: BTreeMap<u64, HashMap<Arc<str>, u64>>,
    totals: HashMap<Arc<str>, u64>,
}

impl Usage {
    fn add(&mut self, seq: SequenceNumber, tenant: &str, bytes: u64) {
        let range = self.ranges.entry(seq / USAGE_RANGE).or_default();
        match range.get_mut(tenant) {
            Some(b) => *b += bytes,
            None => {
                range.insert(Arc::from(tenant), bytes);
            }
        }
        match self.totals.get_mut(tenant) {
            Some(b) => *b += bytes,
            None => {
                self.totals.insert(Arc::from(tenant), bytes);
            }
        }
    }

    /// Forgets the ranges wholly below `log_start`.
    fn truncate(&mut self, log_start: SequenceNumber) {
        let keep = self.ranges.split_off(&(log_start / USAGE_RANGE));
        for (_, range) in std::mem::replace(&mut self.ranges, keep) {
            for (t, b) in range {
                if let Some(total) = self.totals.get_mut(&t) {
                    *total = total.saturating_sub(b);
                    if *total == 0 {
                        self.totals.remove(&t);
                    }
                }
            }
        }
        self.scanned = self.scanned.max(log_start);
    }
}

/// The node's quotas: configured, replicated, and their counters.
pub struct Quotas {
    config: QuotaConfig,
    sm: Arc<SmShared>,
    buckets: parking_lot::Mutex<HashMap<String, TenantBuckets>>,
    usage: parking_lot::Mutex<Usage>,
    metrics: NodeMetrics,
    /// Tenants named in metrics so far (bounded by [`MAX_TENANT_SERIES`]).
    series: parking_lot::Mutex<std::collections::HashSet<String>>,
    /// Producers with a keyed write refused by a quota: its producer seq, and when.
    held: parking_lot::Mutex<HashMap<u64, (u64, Instant)>>,
}

/// How long a producer's later writes wait behind one a quota refused, at most (a client
/// that gave up on it goes on after this).
pub const PRODUCER_HOLD: Duration = Duration::from_secs(60);

/// A write's demand on one tenant.
pub struct Demand<'a> {
    pub tenant: &'a str,
    pub entries: u64,
    pub bytes: u64,
}

impl Quotas {
    pub fn new(config: QuotaConfig, sm: Arc<SmShared>, metrics: NodeMetrics) -> Quotas {
        Quotas {
            config,
            sm,
            buckets: parking_lot::Mutex::new(HashMap::new()),
            usage: parking_lot::Mutex::new(Usage::default()),
            metrics,
            series: parking_lot::Mutex::new(Default::default()),
            held: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// Whether any quota is set anywhere (else every check is skipped).
    pub fn active(&self) -> bool {
        !self.config.default.is_empty()
            || !self.config.tenants.is_empty()
            || !self.sm.read(|i| i.quotas.is_empty())
    }

    /// `tenant`'s quota, limit by limit: replicated, else configured for it, else default.
    pub fn effective(&self, tenant: &str) -> Quota {
        let replicated = self
            .sm
            .read(|i| i.quotas.get(tenant).copied().map(Quota::from));
        let configured = self.config.tenants.get(tenant).copied().unwrap_or_default();
        replicated
            .unwrap_or_default()
            .over(configured)
            .over(self.config.default)
    }

    /// The quotas set with `replog quota set`.
    pub fn replicated(&self) -> BTreeMap<String, Quota> {
        self.sm.read(|i| {
            i.quotas
                .iter()
                .map(|(t, q)| (t.clone(), Quota::from(*q)))
                .collect()
        })
    }

    pub fn configured(&self) -> &QuotaConfig {
        &self.config
    }

    /// The tenant's label in metrics (`_other` past [`MAX_TENANT_SERIES`] tenants).
    fn label<'a>(&self, tenant: &'a str) -> &'a str {
        let mut s = self.series.lock();
        if s.contains(tenant) {
            return tenant;
        }
        if s.len() < MAX_TENANT_SERIES {
            s.insert(tenant.to_owned());
            return tenant;
        }
        "_other"
    }

    fn exceeded(&self, tenant: &str, limit: Limit) {
        self.metrics
            .quota_exceeded
            .with_label_values(&[self.label(tenant), limit.key()])
            .inc();
    }

    /// [`Quotas::admit_write`] for a write that may carry an idempotency key. A producer's
    /// writes after one a quota refused are refused too, until that one is admitted (or
    /// [`PRODUCER_HOLD`] passes), so its pipeline stays in order: the log holds a prefix of
    /// it, as after a leader change.
    pub fn admit_keyed_write(
        &self,
        producer: Option<ProducerKey>,
        demands: &[Demand<'_>],
    ) -> Result<(), CoreError> {
        let Some(key) = producer else {
            return self.admit_write(demands);
        };
        let now = Instant::now();
        {
            let mut held = self.held.lock();
            if let Some(&(seq, at)) = held.get(&key.id) {
                if now.duration_since(at) > PRODUCER_HOLD {
                    held.remove(&key.id);
                } else if key.seq > seq {
                    return Err(CoreError::QuotaExceeded {
                        message: format!(
                            "producer {:#x}: its write {seq} was refused by a quota and this later one ({}) waits for it",
                            key.id, key.seq
                        ),
                        retry_after: Some(Duration::from_millis(10)),
                    });
                }
            }
        }
        match self.admit_write(demands) {
            Ok(()) => {
                self.held.lock().remove(&key.id);
                Ok(())
            }
            // Only a refusal the producer retries holds its later writes: one refused for
            // retained bytes fails for good, and is never resent.
            Err(
                e @ CoreError::QuotaExceeded {
                    retry_after: Some(_),
                    ..
                },
            ) => {
                let mut held = self.held.lock();
                if held.len() >= MAX_BUCKETS {
                    held.clear();
                }
                let seq = held
                    .get(&key.id)
                    .map_or(key.seq, |(s, _)| (*s).min(key.seq));
                held.insert(key.id, (seq, now));
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Admits a write's demands on their tenants' quotas, taking from the write buckets; or
    /// refuses it whole, taking nothing.
    pub fn admit_write(&self, demands: &[Demand<'_>]) -> Result<(), CoreError> {
        if !self.active() {
            return Ok(());
        }
        let quotas: Vec<Quota> = demands.iter().map(|d| self.effective(d.tenant)).collect();
        // Retained bytes first: no rate is spent on a write refused for them.
        for (d, q) in demands.iter().zip(&quotas) {
            if let Some(limit) = q.retained_bytes.filter(|l| *l > 0)
                && let Some(held) = self.retained(d.tenant)
                && held + d.bytes > limit
            {
                self.exceeded(d.tenant, Limit::RetainedBytes);
                return Err(CoreError::QuotaExceeded {
                    message: format!(
                        "tenant {:?} keeps {held} bytes in the log and this write adds {}: its quota retained_bytes is {limit}; truncate the log or wait for retention",
                        d.tenant, d.bytes
                    ),
                    retry_after: None,
                });
            }
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        if buckets.len() >= MAX_BUCKETS {
            buckets.clear();
        }
        // Check every bucket first, then take: a refused write takes nothing.
        let mut wait = (Duration::ZERO, Limit::WriteEntries, "");
        for (d, q) in demands.iter().zip(&quotas) {
            let rated = |r: Option<u64>| r.is_some_and(|r| r > 0);
            if !rated(q.write_entries_per_sec) && !rated(q.write_bytes_per_sec) {
                continue;
            }
            let b = buckets.entry(d.tenant.to_owned()).or_default();
            for (limit, rate, bucket, n) in [
                (
                    Limit::WriteEntries,
                    q.write_entries_per_sec,
                    &mut b.entries,
                    d.entries,
                ),
                (
                    Limit::WriteBytes,
                    q.write_bytes_per_sec,
                    &mut b.bytes,
                    d.bytes,
                ),
            ] {
                let Some(rate) = rate.filter(|r| *r > 0) else {
                    continue;
                };
                let bucket = bucket.get_or_insert_with(|| Bucket::full(rate, now));
                bucket.refill(rate, now);
                let w = bucket.wait_for(rate, n);
                if w > wait.0 {
                    wait = (w, limit, d.tenant);
                }
            }
        }
        if !wait.0.is_zero() {
            let (after, limit, tenant) = wait;
            let q = self.effective(tenant);
            let rate = match limit {
                Limit::WriteEntries => q.write_entries_per_sec,
                _ => q.write_bytes_per_sec,
            }
            .unwrap_or(0);
            drop(buckets);
            self.exceeded(tenant, limit);
            return Err(CoreError::QuotaExceeded {
                message: format!(
                    "tenant {tenant:?} is over its quota {} ({rate}); retry in {} ms",
                    limit.key(),
                    after.as_millis().max(1)
                ),
                retry_after: Some(after),
            });
        }
        for (d, q) in demands.iter().zip(&quotas) {
            if let Some(b) = buckets.get_mut(d.tenant) {
                if q.write_entries_per_sec.is_some_and(|r| r > 0)
                    && let Some(e) = &mut b.entries
                {
                    e.tokens -= d.entries as f64;
                }
                if q.write_bytes_per_sec.is_some_and(|r| r > 0)
                    && let Some(e) = &mut b.bytes
                {
                    e.tokens -= d.bytes as f64;
                }
            }
        }
        Ok(())
    }

    /// Takes `bytes` replayed of `tenant` from its replay bucket; returns how long the stream
    /// should wait before sending more (zero: no wait).
    pub fn replayed(&self, tenant: &str, bytes: u64) -> Duration {
        if !self.active() {
            return Duration::ZERO;
        }
        let Some(rate) = self
            .effective(tenant)
            .replay_bytes_per_sec
            .filter(|r| *r > 0)
        else {
            return Duration::ZERO;
        };
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        if buckets.len() >= MAX_BUCKETS {
            buckets.clear();
        }
        let b = buckets.entry(tenant.to_owned()).or_default();
        let bucket = b.replay.get_or_insert_with(|| Bucket::full(rate, now));
        bucket.refill(rate, now);
        bucket.tokens -= bytes as f64;
        if bucket.tokens >= 0.0 {
            return Duration::ZERO;
        }
        let wait = Duration::from_secs_f64(-bucket.tokens / rate as f64);
        drop(buckets);
        self.metrics
            .replay_throttled_seconds
            .with_label_values(&[self.label(tenant)])
            .inc_by(wait.as_secs_f64());
        wait
    }

    /// The data bytes `tenant` keeps in the log, once the count is ready.
    pub fn retained(&self, tenant: &str) -> Option<u64> {
        let u = self.usage.lock();
        (u.on && u.ready).then(|| u.totals.get(tenant).copied().unwrap_or(0))
    }

    /// Whether some tenant has a retained-bytes limit (so the count must run).
    fn retained_limited(&self) -> bool {
        let limited = |q: &Quota| q.retained_bytes.is_some_and(|l| l > 0);
        limited(&self.config.default)
            || self.config.tenants.values().any(limited)
            || self.sm.read(|i| {
                i.quotas
                    .values()
                    .any(|q| q.retained_bytes.is_some_and(|l| l > 0))
            })
    }
}

impl Core {
    pub fn quotas(&self) -> &Quotas {
        &self.quotas
    }

    /// Changes a tenant's replicated quota (see [`crate::raft::Request::SetQuota`]). Runs on
    /// the leader.
    pub async fn set_quota(
        &self,
        tenant: String,
        clear: bool,
        set: Quota,
    ) -> Result<(), CoreError> {
        crate::wire::check_name("tenant", &tenant)?;
        let cmd = crate::raft::Request::SetQuota {
            tenant,
            clear,
            set: set.into(),
        };
        match self.raft.propose(cmd).await? {
            crate::raft::Response::QuotaSet => Ok(()),
            other => Err(CoreError::Internal(format!(
                "unexpected reply to a quota change: {other:?}"
            ))),
        }
    }
}

/// Counts each tenant's retained data bytes while some tenant has a retained-bytes limit (see
/// the module doc), until the node stops.
pub async fn count_retained(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    let mut applied = core.applied_watch();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let q = core.quotas();
        let limited = q.retained_limited();
        if !limited {
            let mut u = q.usage.lock();
            if u.on {
                *u = Usage::default();
                core.metrics().tenant_retained_bytes.reset();
            }
        } else if let Err(e) = count_step(&core).await {
            tracing::warn!(error = %e, "counting retained bytes per tenant; retried in 1 s");
        }
        // Without a limit to count for, only the tick (a limit set meanwhile is seen within a
        // second): no wake-up per applied write.
        let more = async {
            if limited {
                applied.changed().await.is_ok()
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
            alive = more => if !alive { return },
        }
    }
}

/// Brings the count up to what this node has applied.
async fn count_step(core: &Arc<Core>) -> Result<(), CoreError> {
    let q = core.quotas();
    let log_start = core.readable_start()?;
    let mut pos = {
        let mut u = q.usage.lock();
        if !u.on {
            u.on = true;
            u.scanned = log_start;
        }
        u.truncate(log_start);
        u.scanned
    };
    loop {
        let upto = *core.applied_watch().borrow();
        if pos >= upto {
            break;
        }
        let chunk = core
            .read_chunk(pos, upto, None, USAGE_READ_BATCH, |e| {
                (
                    e.sequence_number,
                    Arc::<str>::from(e.tenant_id),
                    e.data.len() as u64,
                )
            })
            .await?;
        let mut u = q.usage.lock();
        if u.scanned != pos {
            // Reset meanwhile (a truncation past `pos`): start over from where it says.
            return Ok(());
        }
        for (seq, tenant, bytes) in &chunk.entries {
            u.add(*seq, tenant, *bytes);
        }
        u.scanned = chunk.next;
        pos = chunk.next;
        if chunk.entries.is_empty() {
            break;
        }
    }
    let mut u = q.usage.lock();
    u.ready = true;
    // Gauges for the tenants with a retained-bytes limit.
    let g = &core.metrics().tenant_retained_bytes;
    g.reset();
    for (t, b) in &u.totals {
        if q.effective(t).retained_bytes.is_some_and(|l| l > 0) {
            g.with_label_values(&[q.label(t)])
                .set(i64::try_from(*b).unwrap_or(i64::MAX));
        }
    }
    drop(u);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_holds_a_second_and_lets_a_big_batch_through_when_full() {
        let t0 = Instant::now();
        let mut b = Bucket::full(100, t0);
        assert_eq!(b.wait_for(100, 100), Duration::ZERO);
        b.tokens -= 100.0;
        let w = b.wait_for(100, 10);
        assert!(
            w > Duration::from_millis(90) && w <= Duration::from_millis(100),
            "{w:?}"
        );
        b.refill(100, t0 + Duration::from_millis(500));
        assert!((b.tokens - 50.0).abs() < 1e-6);
        // More than a second's worth: passes once the bucket is full, leaving a debt.
        assert!(b.wait_for(100, 1000) > Duration::ZERO);
        b.refill(100, t0 + Duration::from_secs(10));
        assert_eq!(b.wait_for(100, 1000), Duration::ZERO);
    }

    #[test]
    fn usage_forgets_whole_ranges_below_the_log_start() {
        let mut u = Usage::default();
        u.add(1, "a", 10);
        u.add(USAGE_RANGE + 5, "a", 7);
        u.add(USAGE_RANGE + 6, "b", 3);
        assert_eq!(u.totals.get("a"), Some(&17));
        u.truncate(USAGE_RANGE + 1);
        assert_eq!(u.totals.get("a"), Some(&7));
        assert_eq!(u.totals.get("b"), Some(&3));
        u.truncate(3 * USAGE_RANGE);
        assert!(u.totals.is_empty());
    }

    #[test]
    fn a_quota_takes_each_limit_from_the_nearest_source() {
        let replicated = Quota {
            write_entries_per_sec: Some(5),
            ..Default::default()
        };
        let configured = Quota {
            write_entries_per_sec: Some(50),
            write_bytes_per_sec: Some(1000),
            ..Default::default()
        };
        let default = Quota {
            retained_bytes: Some(1 << 20),
            write_bytes_per_sec: Some(1),
            ..Default::default()
        };
        let q = replicated.over(configured).over(default);
        assert_eq!(q.write_entries_per_sec, Some(5));
        assert_eq!(q.write_bytes_per_sec, Some(1000));
        assert_eq!(q.retained_bytes, Some(1 << 20));
        assert_eq!(q.replay_bytes_per_sec, None);
    }
}

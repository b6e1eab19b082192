//! The load: `clients` tasks, each writing one value at a time and waiting for its
//! acknowledgement, over `connections` HTTP/2 connections (client `c` uses connection
//! `c % connections`), pointed at the leader or spread over every node (connection `i` to node
//! `i % 3`). A warm-up, then a measured window: only writes acknowledged inside it count.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::client::{self, Values, Writer};
use crate::cluster::Cluster;
use crate::cpu;

/// Pause before retrying a failed write.
const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// How long the clients may take to finish their last write once time is up.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Latencies are recorded in microseconds, up to this.
const MAX_LATENCY_US: u64 = 60_000_000;

const WARM_UP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

/// Where the connections go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Every connection to the node that was leader when the cluster became ready.
    Leader,
    /// Connection `i` to node `i % 3`; followers forward writes to the leader.
    All,
}

/// A load shape, written `CLIENTSxCONNECTIONS` (spread over all nodes) or
/// `CLIENTSxCONNECTIONS@leader`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Shape {
    pub clients: usize,
    pub connections: usize,
    pub target: Target,
}

impl FromStr for Shape {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Shape> {
        let (counts, target) = match s.split_once('@') {
            None => (s, Target::All),
            Some((c, "leader")) => (c, Target::Leader),
            Some((c, "all")) => (c, Target::All),
            Some((_, t)) => bail!("shape {s:?}: unknown target {t:?} (leader or all)"),
        };
        let (clients, connections) = counts
            .split_once('x')
            .ok_or_else(|| anyhow!("shape {s:?}: expected CLIENTSxCONNECTIONS[@leader]"))?;
        let clients: usize = clients
            .trim()
            .parse()
            .with_context(|| format!("shape {s:?}: clients"))?;
        let connections: usize = connections
            .trim()
            .parse()
            .with_context(|| format!("shape {s:?}: connections"))?;
        if clients == 0 || connections == 0 || connections > clients {
            bail!("shape {s:?}: need 1 <= connections <= clients");
        }
        Ok(Shape {
            clients,
            connections,
            target,
        })
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        write!(
            f,
            "{}/{}, {}",
            plural(self.clients, "client"),
            plural(self.connections, "conn"),
            match self.target {
                Target::Leader => "leader",
                Target::All => "all nodes",
            }
        )
    }
}

/// What one run measured.
pub struct Measured {
    pub acked: u64,
    pub errors: u64,
    /// The first error seen in the window, if any.
    pub first_error: Option<String>,
    /// Latency of each acknowledged write, µs, from its first attempt.
    pub latency_us: Histogram<u64>,
    pub elapsed: Duration,
    /// utime + stime of the 3 servers over the window.
    pub server_cpu: Duration,
    /// utime + stime of the harness (the clients) over the window.
    pub client_cpu: Duration,
    /// The machine's CPU time the hypervisor stole over the window, % of all CPU time.
    pub steal_pct: f64,
}

struct ClientOutcome {
    acked: u64,
    errors: u64,
    first_error: Option<String>,
    latency_us: Histogram<u64>,
}

fn new_histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).context("creating a histogram")
}

/// Runs `shape` against `cluster`: `warm_up`, then `duration` measured.
pub async fn run(
    cluster: &mut Cluster,
    shape: Shape,
    warm_up: Duration,
    duration: Duration,
) -> Result<Measured> {
    let mut channels = Vec::with_capacity(shape.connections);
    for i in 0..shape.connections {
        let addr = match shape.target {
            Target::Leader => &cluster.leader,
            Target::All => &cluster.endpoints[i % cluster.endpoints.len()],
        };
        let channel = client::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        channels.push(channel);
    }
    let phase = Arc::new(AtomicU8::new(WARM_UP));
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..shape.clients {
        let writer = Writer::new(cluster.system, channels[c % shape.connections].clone());
        let phase = Arc::clone(&phase);
        let hist = new_histogram()?;
        tasks.spawn(client_loop(c, writer, phase, hist));
    }

    tokio::time::sleep(warm_up).await;
    let pids = cluster.pids();
    let server0 = cpu::processes(&pids)?;
    let client0 = cpu::harness()?;
    let machine0 = cpu::machine()?;
    let start = Instant::now();
    phase.store(MEASURE, Ordering::SeqCst);
    tokio::time::sleep(duration).await;
    phase.store(STOP, Ordering::SeqCst);
    let elapsed = start.elapsed();
    let server_cpu = cpu::processes(&pids)?.saturating_sub(server0);
    let client_cpu = cpu::harness()?.saturating_sub(client0);
    let steal_pct = cpu::machine()?.steal_pct_since(&machine0);
    cluster
        .check_running()
        .context("a server died during the run")?;

    let mut measured = Measured {
        acked: 0,
        errors: 0,
        first_error: None,
        latency_us: new_histogram()?,
        elapsed,
        server_cpu,
        client_cpu,
        steal_pct,
    };
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Some(outcome) = tasks.join_next().await {
            let outcome = outcome.context("a client task failed")?;
            measured.acked += outcome.acked;
            measured.errors += outcome.errors;
            if measured.first_error.is_none() {
                measured.first_error = outcome.first_error;
            }
            measured
                .latency_us
                .add(&outcome.latency_us)
                .context("merging latencies")?;
        }
        anyhow::Ok(())
    })
    .await;
    match drained {
        Ok(result) => result?,
        Err(_) => bail!("the clients' last writes were not answered within {DRAIN_TIMEOUT:?}"),
    }
    Ok(measured)
}

/// One client: writes until told to stop, one at a time, retrying a failed write after
/// [`RETRY_PAUSE`]. Counts only what completes inside the measured window.
async fn client_loop(
    id: usize,
    mut writer: Writer,
    phase: Arc<AtomicU8>,
    mut latency_us: Histogram<u64>,
) -> ClientOutcome {
    let mut values = Values::new(id);
    let (mut acked, mut errors, mut first_error) = (0, 0, None);
    let mut seq = 0u64;
    'writes: while phase.load(Ordering::Relaxed) != STOP {
        let value = values.next_value();
        let first_attempt = Instant::now();
        loop {
            let result = writer.write(id, seq, value.clone()).await;
            let now = phase.load(Ordering::Relaxed);
            match result {
                Ok(()) => {
                    if now == MEASURE {
                        let us = first_attempt.elapsed().as_micros() as u64;
                        latency_us.saturating_record(us.clamp(1, MAX_LATENCY_US));
                        acked += 1;
                    }
                    break;
                }
                Err(status) => {
                    if now == MEASURE {
                        errors += 1;
                        if first_error.is_none() {
                            first_error =
                                Some(format!("{:?}: {}", status.code(), status.message()));
                        }
                    }
                    if now == STOP {
                        break 'writes;
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
        seq += 1;
    }
    ClientOutcome {
        acked,
        errors,
        first_error,
        latency_us,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_parse_and_print() -> Result<()> {
        let s: Shape = "1x1@leader".parse()?;
        assert_eq!((s.clients, s.connections, s.target), (1, 1, Target::Leader));
        let s: Shape = "256x16".parse()?;
        assert_eq!((s.clients, s.connections, s.target), (256, 16, Target::All));
        assert_eq!(s.to_string(), "256 clients/16 conns, all nodes");
        for bad in ["", "4", "0x1", "4x0", "4x8", "4x2@west", "ax2"] {
            assert!(bad.parse::<Shape>().is_err(), "{bad:?} was accepted");
        }
        Ok(())
    }
}

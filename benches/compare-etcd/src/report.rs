//! One line per run as it finishes, then medians per (shape, system) and the replog / etcd
//! throughput ratio; as text, or as one JSON document.

use std::io::Write;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::client::System;
use crate::load::{Measured, Shape};

#[derive(Clone, Debug, Serialize)]
pub struct RunResult {
    pub system: System,
    pub shape: String,
    #[serde(skip)]
    pub shape_value: Shape,
    pub clients: usize,
    pub connections: usize,
    pub target: crate::load::Target,
    pub run: u32,
    pub acked: u64,
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    pub seconds: f64,
    pub writes_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub server_cpu_seconds: f64,
    /// Server CPU (3 processes, user + system) per acknowledged write, µs.
    pub cpu_us_per_write: f64,
    /// The harness's own CPU per acknowledged write, µs (the clients share the 2 cores).
    pub client_cpu_us_per_write: f64,
    /// The machine's CPU time stolen by the hypervisor during the run, % of all CPU time
    /// (/proc/stat). Where it is high the host ran other guests on these cores: compare only
    /// runs side by side.
    pub steal_pct: f64,
}

impl RunResult {
    pub fn new(system: System, shape: Shape, run: u32, m: &Measured) -> RunResult {
        let seconds = m.elapsed.as_secs_f64();
        let per_write = |cpu: std::time::Duration| {
            if m.acked == 0 {
                f64::NAN
            } else {
                cpu.as_secs_f64() * 1e6 / m.acked as f64
            }
        };
        let ms = |q: f64| m.latency_us.value_at_quantile(q) as f64 / 1000.0;
        RunResult {
            system,
            shape: shape.to_string(),
            shape_value: shape,
            clients: shape.clients,
            connections: shape.connections,
            target: shape.target,
            run,
            acked: m.acked,
            errors: m.errors,
            first_error: m.first_error.clone(),
            seconds,
            writes_per_sec: m.acked as f64 / seconds,
            p50_ms: ms(0.50),
            p99_ms: ms(0.99),
            server_cpu_seconds: m.server_cpu.as_secs_f64(),
            cpu_us_per_write: per_write(m.server_cpu),
            client_cpu_us_per_write: per_write(m.client_cpu),
            steal_pct: m.steal_pct,
        }
    }
}

/// Medians over the runs of one (shape, system).
#[derive(Debug, Serialize)]
pub struct Summary {
    pub shape: String,
    pub system: System,
    pub runs: usize,
    pub writes_per_sec: f64,
    pub writes_per_sec_min: f64,
    pub writes_per_sec_max: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub cpu_us_per_write: f64,
    pub client_cpu_us_per_write: f64,
    pub steal_pct: f64,
    /// Summed over the runs.
    pub errors: u64,
}

#[derive(Debug, Serialize)]
pub struct Ratio {
    pub shape: String,
    /// Median replog writes/s over median etcd writes/s.
    pub replog_over_etcd_throughput: f64,
}

#[derive(Serialize)]
struct Document<'a> {
    config: serde_json::Map<String, serde_json::Value>,
    runs: &'a [RunResult],
    /// Runs left out for their steal (--max-steal) and run again.
    discarded: &'a [RunResult],
    summary: Vec<Summary>,
    ratios: Vec<Ratio>,
}

pub struct Output {
    json: bool,
    /// Width of the shape column.
    shape_width: usize,
    config: Vec<(&'static str, String)>,
    runs: Vec<RunResult>,
    discarded: Vec<RunResult>,
    /// --max-steal: above it a run is left out, or (its last attempt) warned about.
    max_steal: f64,
}

impl Output {
    pub fn new(json: bool, shapes: &[Shape], max_steal: f64) -> Output {
        Output {
            json,
            shape_width: shapes
                .iter()
                .map(|s| s.to_string().len())
                .max()
                .unwrap_or(0),
            config: Vec::new(),
            runs: Vec::new(),
            discarded: Vec::new(),
            max_steal,
        }
    }

    /// Progress goes to stdout as text, to stderr when stdout carries JSON.
    fn progress(&self, line: &str) {
        if self.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }

    pub fn header(&mut self, config: &[(&'static str, String)]) {
        self.config = config.to_vec();
        for (k, v) in config {
            self.progress(&format!("{k}: {v}"));
        }
    }

    pub fn run(&mut self, r: RunResult) {
        let line = self.line(&r);
        self.progress(&line);
        self.runs.push(r);
    }

    /// A run left out of the medians because the hypervisor stole more than `max_steal`% of
    /// the CPU time during it; it is run again.
    pub fn discarded(&mut self, r: RunResult) {
        let line = format!(
            "{}  (steal above {}%: left out, run again)",
            self.line(&r),
            self.max_steal
        );
        self.progress(&line);
        self.discarded.push(r);
    }

    fn line(&self, r: &RunResult) -> String {
        let mut line = format!(
            "{:<w$}  {:<6} run {}: {:>9} writes/s  p50 {:>7.2} ms  p99 {:>7.2} ms  cpu {:>6.1} µs/write (client {:.1})  steal {:.1}%  errors {}",
            r.shape,
            r.system.name(),
            r.run,
            thousands(r.writes_per_sec),
            r.p50_ms,
            r.p99_ms,
            r.cpu_us_per_write,
            r.client_cpu_us_per_write,
            r.steal_pct,
            r.errors,
            w = self.shape_width,
        );
        if let Some(e) = &r.first_error {
            line.push_str(&format!(" (first: {e})"));
        }
        line
    }

    pub fn finish(&self, shapes: &[Shape], systems: &[System]) -> Result<()> {
        let mut summary = Vec::new();
        let mut ratios = Vec::new();
        for shape in shapes {
            let mut tputs = Vec::new();
            for &system in systems {
                let runs: Vec<&RunResult> = self
                    .runs
                    .iter()
                    .filter(|r| r.system == system && r.shape_value == *shape)
                    .collect();
                if runs.is_empty() {
                    continue;
                }
                let med = |f: fn(&RunResult) -> f64| median(runs.iter().map(|r| f(r)).collect());
                let tput: Vec<f64> = runs.iter().map(|r| r.writes_per_sec).collect();
                let s = Summary {
                    shape: shape.to_string(),
                    system,
                    runs: runs.len(),
                    writes_per_sec: med(|r| r.writes_per_sec),
                    writes_per_sec_min: tput.iter().copied().fold(f64::INFINITY, f64::min),
                    writes_per_sec_max: tput.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                    p50_ms: med(|r| r.p50_ms),
                    p99_ms: med(|r| r.p99_ms),
                    cpu_us_per_write: med(|r| r.cpu_us_per_write),
                    client_cpu_us_per_write: med(|r| r.client_cpu_us_per_write),
                    steal_pct: med(|r| r.steal_pct),
                    errors: runs.iter().map(|r| r.errors).sum(),
                };
                tputs.push((s.system, s.writes_per_sec));
                summary.push(s);
            }
            let get = |sys| tputs.iter().find(|(s, _)| *s == sys).map(|(_, t)| *t);
            if let (Some(r), Some(e)) = (get(System::Replog), get(System::Etcd)) {
                ratios.push(Ratio {
                    shape: shape.to_string(),
                    replog_over_etcd_throughput: r / e,
                });
            }
        }
        if self.json {
            let config = self
                .config
                .iter()
                .map(|(k, v)| ((*k).to_owned(), serde_json::Value::String(v.clone())))
                .collect();
            let doc = Document {
                config,
                runs: &self.runs,
                discarded: &self.discarded,
                summary,
                ratios,
            };
            let mut stdout = std::io::stdout().lock();
            serde_json::to_writer_pretty(&mut stdout, &doc).context("writing JSON")?;
            writeln!(stdout).context("writing JSON")?;
            return Ok(());
        }
        let runs = self.runs.iter().map(|r| r.run).max().unwrap_or(0);
        println!();
        println!(
            "medians of {runs} run(s) per row; CPU = user + system time of the 3 servers per acknowledged write"
        );
        println!(
            "{:<w$}  {:<6} {:>10} {:>21} {:>9} {:>9} {:>13} {:>8} {:>7}  replog/etcd",
            "shape",
            "system",
            "writes/s",
            "(min - max)",
            "p50 ms",
            "p99 ms",
            "cpu µs/write",
            "steal %",
            "errors",
            w = self.shape_width,
        );
        for shape in shapes {
            let name = shape.to_string();
            for s in summary.iter().filter(|s| s.shape == name) {
                let ratio = match (s.system, ratios.iter().find(|r| r.shape == name)) {
                    (System::Replog, Some(r)) => format!("{:.2}x", r.replog_over_etcd_throughput),
                    _ => String::new(),
                };
                println!(
                    "{:<w$}  {:<6} {:>10} {:>21} {:>9.2} {:>9.2} {:>13.1} {:>8.1} {:>7}  {}",
                    s.shape,
                    s.system.name(),
                    thousands(s.writes_per_sec),
                    format!(
                        "({} - {})",
                        thousands(s.writes_per_sec_min),
                        thousands(s.writes_per_sec_max)
                    ),
                    s.p50_ms,
                    s.p99_ms,
                    s.cpu_us_per_write,
                    s.steal_pct,
                    s.errors,
                    ratio,
                    w = self.shape_width,
                );
            }
        }
        if !self.discarded.is_empty() {
            println!();
            println!(
                "{} run(s) left out for their steal and run again (lines marked above)",
                self.discarded.len()
            );
        }
        if let Some(warning) = steal_warning(&self.runs, self.max_steal) {
            println!();
            println!("{warning}");
        }
        Ok(())
    }
}

/// A warning when the hypervisor stole more than `max_steal`% of the CPU time in some counted
/// run (its last attempt): the machine's speed then changed under the measurement, for one
/// system more than the other, and only ratios of runs side by side mean much.
fn steal_warning(runs: &[RunResult], max_steal: f64) -> Option<String> {
    let stolen: Vec<&RunResult> = runs.iter().filter(|r| r.steal_pct > max_steal).collect();
    let worst = stolen.iter().map(|r| r.steal_pct).fold(0.0, f64::max);
    (!stolen.is_empty()).then(|| {
        format!(
            "warning: in {} of {} counted runs the hypervisor stole more than {max_steal}% of this machine's CPU time (up to {worst:.1}%): \
             the host ran other guests on these cores, so absolute figures are low and vary; compare runs side by side",
            stolen.len(),
            runs.len(),
        )
    })
}

/// The median (the mean of the middle two for an even count); NaN for none.
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// 12345.6 -> "12,346".
fn thousands(x: f64) -> String {
    if !x.is_finite() {
        return format!("{x}");
    }
    let digits = format!("{:.0}", x.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if x < 0.0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }

    #[test]
    fn warns_of_stolen_cpu() {
        let m = Measured {
            acked: 10,
            errors: 0,
            first_error: None,
            latency_us: hdrhistogram::Histogram::new(3).expect("histogram"),
            elapsed: std::time::Duration::from_secs(1),
            server_cpu: std::time::Duration::from_millis(1),
            client_cpu: std::time::Duration::from_millis(1),
            steal_pct: 1.0,
        };
        let shape: Shape = "1x1@leader".parse().expect("shape");
        let calm = RunResult::new(System::Replog, shape, 1, &m);
        assert_eq!(calm.steal_pct, 1.0);
        assert_eq!(steal_warning(std::slice::from_ref(&calm), 5.0), None);
        let stolen = RunResult::new(
            System::Etcd,
            shape,
            1,
            &Measured {
                steal_pct: 12.5,
                ..m
            },
        );
        let w = steal_warning(&[calm, stolen], 5.0).expect("a warning");
        assert!(
            w.contains("in 1 of 2 counted runs") && w.contains("up to 12.5%"),
            "{w}"
        );
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(thousands(0.4), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1234567.8), "1,234,568");
    }
}

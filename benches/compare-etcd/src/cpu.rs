//! CPU time of processes, from /proc/<pid>/stat (utime + stime, all threads), and the
//! machine's CPU time stolen by the hypervisor, from /proc/stat.

use std::time::Duration;

use anyhow::{Context, Result, bail};

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 when unknown).
fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// utime + stime of one process; `pid` "self" reads the harness itself.
fn process_ticks(pid: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) is in parentheses and may hold spaces: fields are counted
    // after its closing parenthesis, which is field 2's end; utime and stime are fields 14, 15.
    let Some(end) = stat.rfind(')') else {
        bail!("{path}: no command name");
    };
    let fields: Vec<&str> = stat[end + 1..].split_whitespace().collect();
    let field = |n: usize| -> Result<u64> {
        let s = fields
            .get(n - 3)
            .with_context(|| format!("{path}: no field {n}"))?;
        s.parse::<u64>()
            .with_context(|| format!("{path}: field {n} is {s:?}"))
    };
    Ok(field(14)? + field(15)?)
}

/// The CPU time used so far by all of `pids`.
pub fn processes(pids: &[u32]) -> Result<Duration> {
    let mut ticks = 0;
    for pid in pids {
        ticks += process_ticks(&pid.to_string())?;
    }
    Ok(to_duration(ticks))
}

/// The CPU time used so far by the harness (the load generator).
pub fn harness() -> Result<Duration> {
    Ok(to_duration(process_ticks("self")?))
}

/// The machine's CPU time so far, all CPUs, in clock ticks: all of it, and the part the
/// hypervisor gave to other guests while this one wanted to run (`steal`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MachineTicks {
    pub total: u64,
    pub steal: u64,
}

impl MachineTicks {
    /// The share of the CPU time between `earlier` and `self` that was stolen, in percent
    /// (0 when no time passed).
    pub fn steal_pct_since(&self, earlier: &MachineTicks) -> f64 {
        let total = self.total.saturating_sub(earlier.total);
        if total == 0 {
            return 0.0;
        }
        self.steal.saturating_sub(earlier.steal) as f64 * 100.0 / total as f64
    }
}

/// The first line of /proc/stat: `cpu user nice system idle iowait irq softirq steal guest
/// guest_nice` (guest time is already counted in user and nice).
pub fn machine() -> Result<MachineTicks> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_machine(&stat)
}

fn parse_machine(stat: &str) -> Result<MachineTicks> {
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("/proc/stat: no `cpu` line")?;
    let fields = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| {
            f.parse::<u64>()
                .with_context(|| format!("/proc/stat: {f:?} in {line:?}"))
        })
        .collect::<Result<Vec<u64>>>()?;
    if fields.len() < 8 {
        bail!("/proc/stat: fewer than 8 fields in {line:?}");
    }
    Ok(MachineTicks {
        total: fields.iter().sum(),
        steal: fields[7],
    })
}

fn to_duration(ticks: u64) -> Duration {
    let hz = ticks_per_second();
    Duration::from_micros(ticks * 1_000_000 / hz)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    #[test]
    fn reads_own_cpu_time() -> anyhow::Result<()> {
        // Spin until a clock tick has been charged (10 ms at 100 Hz), for at most 5 s.
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut x = 0u64;
        while super::harness()? == Duration::ZERO && Instant::now() < deadline {
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        assert!(super::harness()? > Duration::ZERO);
        assert!(super::processes(&[std::process::id()])? > Duration::ZERO);
        assert!(super::processes(&[u32::MAX]).is_err());
        Ok(())
    }

    #[test]
    fn machine_steal() -> anyhow::Result<()> {
        let before =
            super::parse_machine("cpu  100 0 50 800 10 0 5 35 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")?;
        assert_eq!(
            before,
            super::MachineTicks {
                total: 1000,
                steal: 35
            }
        );
        let after = super::parse_machine("cpu  140 0 60 845 10 0 5 40 0 0\n")?;
        assert_eq!(after.steal_pct_since(&before), 5.0);
        assert_eq!(after.steal_pct_since(&after), 0.0);
        assert!(super::parse_machine("cpu  1 2 3\n").is_err());
        assert!(super::parse_machine("intr 1 2\n").is_err());
        let now = super::machine()?;
        assert!(now.total > 0 && now.steal <= now.total);
        Ok(())
    }
}

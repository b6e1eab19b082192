//! CPU time of processes, from /proc/<pid>/stat (utime + stime, all threads).

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
}

//! What the load costs the servers, read from `/proc`: each server process's CPU time and peak memory, and the
//! latency percentiles of the report.

use std::time::Duration;

/// CPU time (user + system) and peak resident memory of one process, from `/proc`.
#[derive(Debug, Clone)]
pub(super) struct ProcessUsage {
    pub(super) pid: u32,
    pub(super) name: String,
    pub(super) cpu: Duration,
    pub(super) peak_rss_kib: u64,
}

pub(super) fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8_lossy(&out.stdout).trim().parse().ok())
        .unwrap_or(100)
}

pub(super) fn usage_of(pid: u32, ticks: u64) -> Option<ProcessUsage> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime), counted after the command name's closing parenthesis.
    let cpu_ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let peak_rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> =
        cmdline.split(|b| *b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let program = args.first().map(|a| a.rsplit('/').next().unwrap_or(a))?;
    let name = match (program.strip_prefix("postgres: "), args.get(1)) {
        // PostgreSQL's backends rewrite their argv into one string ("postgres: user database host state").
        (Some(title), _) => format!("postgres {title}"),
        (None, Some(sub)) if !sub.starts_with('-') => format!("{program} {sub}"),
        (None, _) => program.to_owned(),
    };
    let cpu = Duration::from_micros(cpu_ticks * 1_000_000 / ticks.max(1));
    Some(ProcessUsage { pid, name, cpu, peak_rss_kib })
}

/// The CPU time `usage`'s process spent since `before` was read (all of it when the process is new).
pub(super) fn spent_since(before: &[ProcessUsage], usage: &ProcessUsage) -> Duration {
    before.iter().find(|b| b.pid == usage.pid).map_or(usage.cpu, |b| usage.cpu.saturating_sub(b.cpu))
}

/// The CPU time the processes of `before` spent until `after`.
pub(super) fn cpu_spent(before: &[ProcessUsage], after: &[ProcessUsage]) -> Duration {
    after.iter().map(|usage| spent_since(before, usage)).sum()
}

/// Every process whose program name is one of `programs`, except this one; when `roots` names processes, only
/// those among them and their descendants, so that another stack or database cluster on the machine is not counted.
pub(super) fn server_processes(programs: &[String], roots: &[u32], ticks: u64) -> Vec<ProcessUsage> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    let mut found: Vec<ProcessUsage> = entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me && descends_from(*pid, roots))
        .filter_map(|pid| usage_of(pid, ticks))
        .filter(|usage| programs.iter().any(|p| usage.name == *p || usage.name.starts_with(&format!("{p} "))))
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name).then(a.pid.cmp(&b.pid)));
    found
}

/// Whether `pid` is one of `roots` or descends from one, its parents followed through `/proc`; any process does
/// when `roots` is empty.
pub(super) fn descends_from(pid: u32, roots: &[u32]) -> bool {
    if roots.is_empty() {
        return true;
    }
    let mut current = pid;
    // Bounded: a process tree is never this deep, and a parent that vanished ends the walk.
    for _ in 0..64 {
        if roots.contains(&current) {
            return true;
        }
        match parent_of(current) {
            Some(parent) if parent > 1 => current = parent,
            _ => return false,
        }
    }
    false
}

fn parent_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| line.strip_prefix("PPid:"))?.trim().parse().ok()
}

pub(super) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A child of this process is under it; this process is not under its child; with no roots, every process
    /// counts.
    #[test]
    fn processes_are_counted_under_their_roots_only() {
        let mut child = std::process::Command::new("sleep").arg("10").spawn().expect("start sleep");
        let (me, pid) = (std::process::id(), child.id());
        let under_me = descends_from(pid, &[me]);
        let me_under_child = descends_from(me, &[pid]);
        let _ = child.kill();
        let _ = child.wait();
        assert!(under_me, "a child is under its parent");
        assert!(!me_under_child, "a parent is not under its child");
        assert!(descends_from(me, &[]), "no roots: every process");
        assert!(descends_from(me, &[pid, me]), "a root is under itself");
    }
}

//! The machine: cores, CPU pinning with `taskset`, and per-process figures from `/proc`
//! (resident memory, CPU time), so the report can say who had which core and who was busy.

use anyhow::{bail, Context, Result};
use std::process::Command;
use std::time::Duration;

/// Clock ticks per second of `/proc/stat` (`getconf CLK_TCK`; 100 on Linux).
const CLK_TCK: f64 = 100.0;

/// Online cores as the kernel counts them (ignores this process's affinity).
pub fn online_cores() -> usize {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| cpu_list(s.trim()).ok())
        .map(|v| v.len())
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
}

/// Parses a CPU list such as `0-3,6`.
pub fn cpu_list(s: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => out.extend(a.trim().parse::<usize>()?..=b.trim().parse::<usize>()?),
            None => out.push(part.trim().parse()?),
        }
    }
    if out.is_empty() {
        bail!("empty CPU list {s:?}");
    }
    Ok(out)
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

pub fn taskset_available() -> bool {
    Command::new("taskset")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The kernel id of the calling thread (`/proc/thread-self` points at `<pid>/task/<tid>`).
fn current_tid() -> Result<String> {
    let link = std::fs::read_link("/proc/thread-self").context("reading /proc/thread-self")?;
    link.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .context("no thread id")
}

/// Pins the calling thread to `cpus` (a taskset CPU list). Threads it starts afterwards inherit
/// the affinity, so pinning the main thread first pins the whole load generator.
pub fn pin_current_thread(cpus: &str) -> Result<()> {
    let tid = current_tid()?;
    let out = Command::new("taskset")
        .args(["-pc", cpus, &tid])
        .output()
        .context("running taskset")?;
    if !out.status.success() {
        bail!(
            "taskset -pc {cpus} {tid}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Resident set size of a process, in bytes (`VmRSS`), and its peak (`VmHWM`).
pub fn rss(pid: u32) -> Result<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> Option<u64> {
        s.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    Ok((
        field("VmRSS:").context("no VmRSS")?,
        field("VmHWM:").unwrap_or(0),
    ))
}

/// Time a process's threads spent on a CPU and waiting runnable for one (run-queue delay),
/// summed over its threads (`/proc/<pid>/task/*/schedstat`, nanoseconds).
pub fn sched(pid: u32) -> (Duration, Duration) {
    let mut on = 0u64;
    let mut wait = 0u64;
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in rd.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("schedstat")) {
                let mut f = s.split_whitespace().map(|x| x.parse::<u64>().unwrap_or(0));
                on += f.next().unwrap_or(0);
                wait += f.next().unwrap_or(0);
            }
        }
    }
    (Duration::from_nanos(on), Duration::from_nanos(wait))
}

/// Time of the given CPUs from `/proc/stat`, split as (tasks: user + nice + system,
/// interrupts: irq + softirq, steal: taken by the hypervisor).
pub fn cpus_time(cpus: &[usize]) -> (Duration, Duration, Duration) {
    let Ok(s) = std::fs::read_to_string("/proc/stat") else {
        return (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    };
    let (mut tasks, mut irq, mut steal) = (0u64, 0u64, 0u64);
    for l in s.lines() {
        let mut f = l.split_whitespace();
        let Some(name) = f.next() else { continue };
        let Some(n) = name
            .strip_prefix("cpu")
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if !cpus.contains(&n) {
            continue;
        }
        let v: Vec<u64> = f.map(|x| x.parse().unwrap_or(0)).collect();
        let at = |i: usize| v.get(i).copied().unwrap_or(0);
        tasks += at(0) + at(1) + at(2);
        irq += at(5) + at(6);
        steal += at(7);
    }
    let d = |t: u64| Duration::from_secs_f64(t as f64 / CLK_TCK);
    (d(tasks), d(irq), d(steal))
}

/// Bytes written to block devices so far (all disks but loop, ram and zram devices).
pub fn disk_written() -> u64 {
    let Ok(rd) = std::fs::read_dir("/sys/block") else {
        return 0;
    };
    let mut sectors = 0u64;
    for d in rd.flatten() {
        let name = d.file_name().to_string_lossy().into_owned();
        if name.starts_with("loop") || name.starts_with("ram") || name.starts_with("zram") {
            continue;
        }
        if let Ok(s) = std::fs::read_to_string(d.path().join("stat")) {
            sectors += s
                .split_whitespace()
                .nth(6)
                .and_then(|x| x.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    sectors * 512
}

/// Bytes a process has caused to be written to storage (`write_bytes` of `/proc/<pid>/io`).
pub fn proc_written(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("write_bytes:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// CPU use of the relay, the load generator and everything else on the relay's cores,
/// between two moments.
#[derive(Debug, Clone)]
pub struct CpuMeter {
    relay_pid: u32,
    relay_cpus: Vec<usize>,
    relay0: (Duration, Duration),
    gen0: (Duration, Duration),
    cpus0: (Duration, Duration, Duration),
    gen_cpus: Vec<usize>,
    gen_cpus0: (Duration, Duration, Duration),
    disk0: u64,
    relay_disk0: u64,
    t0: std::time::Instant,
}

/// Shares of one core over the interval (1.0 = one core for the whole interval).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    /// The relay's threads on a CPU.
    pub relay_cores_busy: f64,
    /// The relay's threads runnable but waiting for a CPU (others, or each other).
    pub relay_runqueue_wait: f64,
    pub loadgen_cores_busy: f64,
    /// Task time on the relay's cores not spent in the relay's threads: other processes
    /// (kernel workers included). Zero when not pinned.
    pub others_on_relay_cores: f64,
    /// Interrupt and softirq time on the relay's cores (loopback TCP is processed there,
    /// mostly on the relay's behalf).
    pub irq_on_relay_cores: f64,
    /// Time the hypervisor took from the relay's cores.
    pub steal_on_relay_cores: f64,
    /// The load generator waiting runnable for a CPU.
    pub loadgen_runqueue_wait: f64,
    /// Task time on the load generator's cores not spent in the load generator.
    pub others_on_loadgen_cores: f64,
    /// Bytes per second written to the disks by everyone, and by the relay.
    pub disk_write_bytes_per_s: f64,
    pub relay_write_bytes_per_s: f64,
}

impl CpuMeter {
    pub fn start(relay_pid: u32, relay_cpus: &[usize]) -> CpuMeter {
        let gen_cpus = loadgen_cpus();
        CpuMeter {
            relay_pid,
            relay_cpus: relay_cpus.to_vec(),
            relay0: sched(relay_pid),
            gen0: sched(std::process::id()),
            cpus0: cpus_time(relay_cpus),
            gen_cpus0: cpus_time(&gen_cpus),
            gen_cpus,
            disk0: disk_written(),
            relay_disk0: proc_written(relay_pid),
            t0: std::time::Instant::now(),
        }
    }
    pub fn stop(&self) -> CpuUse {
        let wall = self.t0.elapsed().as_secs_f64().max(1e-9);
        let (r_on, r_wait) = sched(self.relay_pid);
        let (g_on, g_wait) = sched(std::process::id());
        let (gen_tasks, _, _) = cpus_time(&self.gen_cpus);
        let gen_on = g_on.saturating_sub(self.gen0.0).as_secs_f64();
        let relay_on = r_on.saturating_sub(self.relay0.0).as_secs_f64();
        let (tasks, irq, steal) = cpus_time(&self.relay_cpus);
        let pinned = !self.relay_cpus.is_empty();
        let share = |now: Duration, then: Duration| {
            if pinned {
                now.saturating_sub(then).as_secs_f64() / wall
            } else {
                0.0
            }
        };
        CpuUse {
            relay_cores_busy: relay_on / wall,
            relay_runqueue_wait: r_wait.saturating_sub(self.relay0.1).as_secs_f64() / wall,
            loadgen_cores_busy: g_on.saturating_sub(self.gen0.0).as_secs_f64() / wall,
            others_on_relay_cores: (share(tasks, self.cpus0.0)
                - if pinned { relay_on / wall } else { 0.0 })
            .max(0.0),
            irq_on_relay_cores: share(irq, self.cpus0.1),
            steal_on_relay_cores: share(steal, self.cpus0.2),
            loadgen_runqueue_wait: g_wait.saturating_sub(self.gen0.1).as_secs_f64() / wall,
            others_on_loadgen_cores: if pinned {
                (gen_tasks.saturating_sub(self.gen_cpus0.0).as_secs_f64() - gen_on).max(0.0) / wall
            } else {
                0.0
            },
            disk_write_bytes_per_s: disk_written().saturating_sub(self.disk0) as f64 / wall,
            relay_write_bytes_per_s: proc_written(self.relay_pid).saturating_sub(self.relay_disk0)
                as f64
                / wall,
        }
    }
}

impl CpuUse {
    pub fn to_json(self) -> crate::report::J {
        crate::report::J::obj()
            .with("relay_cores_busy", self.relay_cores_busy)
            .with("relay_runqueue_wait_cores", self.relay_runqueue_wait)
            .with("loadgen_cores_busy", self.loadgen_cores_busy)
            .with("other_tasks_on_relay_cores", self.others_on_relay_cores)
            .with("irq_softirq_on_relay_cores", self.irq_on_relay_cores)
            .with("steal_on_relay_cores", self.steal_on_relay_cores)
            .with("loadgen_runqueue_wait_cores", self.loadgen_runqueue_wait)
            .with("other_tasks_on_loadgen_cores", self.others_on_loadgen_cores)
            .with("disk_write_bytes_per_s_all", self.disk_write_bytes_per_s)
            .with("disk_write_bytes_per_s_relay", self.relay_write_bytes_per_s)
    }
}

/// The CPUs this process may run on (its affinity, from `/proc/self/status`).
pub fn loadgen_cpus() -> Vec<usize> {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Cpus_allowed_list:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|c| cpu_list(c).ok())
        })
        .unwrap_or_default()
}

/// The soft limit on open files of this process (inherited by the relays it starts).
pub fn open_files_limit() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/limits").ok()?;
    let l = s.lines().find(|l| l.starts_with("Max open files"))?;
    l.split_whitespace().nth(3)?.parse().ok()
}

/// fdatasync latency of the scratch disk, in milliseconds (p50, p99), for 4 KiB writes that
/// overwrite allocated blocks and for 4 KiB appends that grow the file (which also commits
/// file-system metadata). Context for item 3: the price of durability is this latency.
pub fn fsync_probe(dir: &std::path::Path, n: usize) -> Result<((f64, f64), (f64, f64))> {
    use std::io::{Seek, SeekFrom, Write};
    let path = dir.join("fsync-probe");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    let block = [0x5au8; 4096];
    for _ in 0..64 {
        f.write_all(&block)?;
    }
    f.sync_all()?;
    let time = |f: &mut std::fs::File, grow: bool, i: usize| -> Result<f64> {
        if grow {
            f.seek(SeekFrom::End(0))?;
        } else {
            f.seek(SeekFrom::Start(((i % 64) * 4096) as u64))?;
        }
        f.write_all(&block)?;
        let t = std::time::Instant::now();
        f.sync_data()?;
        Ok(t.elapsed().as_secs_f64() * 1e3)
    };
    let mut over: Vec<f64> = (0..n)
        .map(|i| time(&mut f, false, i))
        .collect::<Result<_>>()?;
    let mut grow: Vec<f64> = (0..n)
        .map(|i| time(&mut f, true, i))
        .collect::<Result<_>>()?;
    drop(f);
    let _ = std::fs::remove_file(&path);
    over.sort_by(f64::total_cmp);
    grow.sort_by(f64::total_cmp);
    let p = crate::report::percentile;
    Ok((
        (p(&over, 50.0), p(&over, 99.0)),
        (p(&grow, 50.0), p(&grow, 99.0)),
    ))
}

//! RSS and CPU time of the router process(es), read from /proc.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One reading of a set of processes.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When.
    pub at: Instant,
    /// Sum of user+system CPU seconds.
    pub cpu_s: f64,
    /// Sum of resident set sizes, KiB.
    pub rss_kib: u64,
}

/// Clock ticks per second of /proc's CPU times (asked of `getconf` once).
pub fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Reads (cpu seconds, rss KiB) of one pid.
pub fn read(pid: u32, ticks: f64) -> Option<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()?;
    Some(((utime + stime) / ticks, rss))
}

/// Samples a set of pids in the background.
#[derive(Clone)]
pub struct Sampler {
    pids: Arc<Mutex<Vec<u32>>>,
    samples: Arc<Mutex<Vec<Sample>>>,
    ticks: f64,
}

impl Sampler {
    /// Starts sampling every `every`.
    pub fn start(pids: Vec<u32>, every: Duration) -> Sampler {
        let s = Sampler { pids: Arc::new(Mutex::new(pids)), samples: Arc::new(Mutex::new(Vec::new())), ticks: clock_ticks() };
        let bg = s.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if let Some(sample) = bg.now() {
                    bg.samples.lock().expect("samples").push(sample);
                }
            }
        });
        s
    }

    /// A reading now (None when no pid is readable).
    pub fn now(&self) -> Option<Sample> {
        let pids = self.pids.lock().expect("pids").clone();
        if pids.is_empty() {
            return None;
        }
        let mut cpu = 0.0;
        let mut rss = 0;
        let mut any = false;
        for pid in pids {
            if let Some((c, r)) = read(pid, self.ticks) {
                cpu += c;
                rss += r;
                any = true;
            }
        }
        any.then(|| Sample { at: Instant::now(), cpu_s: cpu, rss_kib: rss })
    }

    /// Peak RSS seen between two instants.
    pub fn peak_rss(&self, from: Instant, to: Instant) -> Option<u64> {
        self.samples.lock().expect("samples").iter().filter(|s| s.at >= from && s.at <= to).map(|s| s.rss_kib).max()
    }
}

/// CPU use between two samples, in percent of one core.
pub fn cpu_pct(a: &Sample, b: &Sample) -> f64 {
    let dt = b.at.duration_since(a.at).as_secs_f64();
    if dt <= 0.0 {
        0.0
    } else {
        100.0 * (b.cpu_s - a.cpu_s) / dt
    }
}

/// CPU time of the whole machine and of this process at one instant, to
/// tell how much CPU *other* processes took during a run (a build or a
/// test suite started by someone else disturbs every figure).
#[derive(Debug, Clone, Copy)]
pub struct CpuMark {
    at: Instant,
    /// Busy CPU seconds of the machine (all cores).
    machine_s: f64,
    /// CPU seconds of this load generator.
    bench_s: f64,
}

impl CpuMark {
    /// Reads /proc/stat and /proc/self/stat now.
    pub fn now() -> CpuMark {
        let ticks = clock_ticks();
        let machine_s = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| {
                let first = s.lines().next()?.to_string();
                let f: Vec<f64> = first.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
                // user nice system idle iowait irq softirq steal …
                let total: f64 = f.iter().take(8).sum();
                Some((total - f.get(3)? - f.get(4).unwrap_or(&0.0)) / ticks)
            })
            .unwrap_or(0.0);
        let bench_s = read(std::process::id(), ticks).map(|(c, _)| c).unwrap_or(0.0);
        CpuMark { at: Instant::now(), machine_s, bench_s }
    }
}

/// CPU use between two marks, in percent of one core: (machine, load generator).
pub fn machine_pct(a: &CpuMark, b: &CpuMark) -> (f64, f64) {
    let dt = b.at.duration_since(a.at).as_secs_f64().max(1e-9);
    (100.0 * (b.machine_s - a.machine_s) / dt, 100.0 * (b.bench_s - a.bench_s) / dt)
}

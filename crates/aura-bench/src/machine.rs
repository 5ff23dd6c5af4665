//! The machine: who else is using the CPU (so a noisy run can be told from a slow one),
//! this process's CPU time, and the facts printed with every result.

use std::{process::Command, sync::OnceLock};

/// Clock ticks per second of `/proc` counters.
fn ticks_per_second() -> f64 {
    static TICKS: OnceLock<f64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// CPU seconds (user + system) used so far by this process, all threads.
pub fn own_cpu_s() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return 0.0 };
    // Fields after the command name (which may hold spaces) start at field 3 (state).
    let Some(after) = stat.rsplit_once(") ").map(|(_, a)| a) else { return 0.0 };
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let stime: f64 = fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (utime + stime) / ticks_per_second()
}

/// Machine-wide busy CPU seconds (all cores; everything but idle and iowait) and steal.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostCpu {
    /// Busy seconds summed over cores.
    pub busy_s: f64,
    /// Seconds stolen by the hypervisor.
    pub steal_s: f64,
}

impl HostCpu {
    /// Reads `/proc/stat`'s aggregate line.
    pub fn now() -> Self {
        let Ok(stat) = std::fs::read_to_string("/proc/stat") else { return HostCpu::default() };
        stat.lines().find(|l| l.starts_with("cpu ")).map(Self::parse).unwrap_or_default()
    }

    /// Parses a `/proc/stat` `cpu ` line (also as read by the Node peer).
    pub fn parse(line: &str) -> Self {
        let v: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
        let get = |i: usize| v.get(i).copied().unwrap_or(0.0);
        // user nice system idle iowait irq softirq steal (guest is inside user)
        let busy = get(0) + get(1) + get(2) + get(5) + get(6);
        let t = ticks_per_second();
        HostCpu { busy_s: busy / t, steal_s: get(7) / t }
    }

    /// Difference `self - earlier`.
    pub fn since(&self, earlier: &HostCpu) -> HostCpu {
        HostCpu { busy_s: self.busy_s - earlier.busy_s, steal_s: self.steal_s - earlier.steal_s }
    }
}

/// Number of CPUs this process may use.
pub fn nproc() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// `model name` of the first CPU in `/proc/cpuinfo`.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// `/proc/loadavg`'s first three fields.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Total memory, from `/proc/meminfo`.
pub fn mem_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal"))
                .map(|l| l.trim_start_matches("MemTotal:").trim().to_string())
        })
        .unwrap_or_default()
}

/// First line of `program args…`'s output, or a note that it failed.
pub fn version_of(program: &str, args: &[&str]) -> String {
    match Command::new(program).args(args).output() {
        Ok(out) => {
            let text = if out.stdout.is_empty() { out.stderr } else { out.stdout };
            String::from_utf8_lossy(&text).lines().next().unwrap_or("").trim().to_string()
        }
        Err(err) => format!("unavailable ({err})"),
    }
}

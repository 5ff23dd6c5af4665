//! What Redis tells about a phase: `INFO commandstats` (calls and µs per command, which in
//! Redis 7 include the `redis.call`s made inside Lua scripts), `INFO cpu` (the server's own
//! CPU time), and a MONITOR reader that splits commands sent by clients from commands run
//! inside scripts (MONITOR tags those `[0 lua]`).
//!
//! Both systems use the same protocol around each phase, through an admin connection:
//! `ECHO aura-bench:phase:<name>` (a marker, so a MONITOR stream can be cut into phases),
//! `CONFIG RESETSTAT`, the phase, then `INFO commandstats cpu`. The admin connection's own
//! commands (`echo`, `config`, `info`) are left out of every count.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    sync::{Arc, Mutex},
};

/// Commands the harness itself sends around phases; never counted.
pub const ADMIN_COMMANDS: &[&str] = &["echo", "config", "info"];

/// Prefix of the phase markers sent with ECHO.
pub const PHASE_MARKER: &str = "aura-bench:phase:";

/// Calls and time of one command over a phase.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CommandStat {
    /// Number of calls (top-level and inside scripts).
    pub calls: u64,
    /// Total microseconds spent in the command (a script's includes its nested calls).
    pub usec: u64,
}

/// `INFO commandstats` + `INFO cpu` at one instant.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Per command (lowercase, `|subcommand` kept as Redis prints it).
    pub commands: BTreeMap<String, CommandStat>,
    /// `used_cpu_sys + used_cpu_user`, seconds.
    pub cpu_s: f64,
}

/// Parses the text of `INFO commandstats cpu` (either section may be missing).
pub fn parse_info(text: &str) -> Snapshot {
    let mut snap = Snapshot::default();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("cmdstat_") {
            let Some((name, fields)) = rest.split_once(':') else { continue };
            let mut stat = CommandStat::default();
            for field in fields.split(',') {
                match field.split_once('=') {
                    Some(("calls", v)) => stat.calls = v.parse().unwrap_or(0),
                    Some(("usec", v)) => stat.usec = v.parse().unwrap_or(0),
                    _ => {}
                }
            }
            snap.commands.insert(name.to_ascii_lowercase(), stat);
        } else if let Some(v) = line.strip_prefix("used_cpu_sys:") {
            snap.cpu_s += v.parse::<f64>().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("used_cpu_user:") {
            snap.cpu_s += v.parse::<f64>().unwrap_or(0.0);
        }
    }
    snap
}

/// What Redis did during one phase: commandstats since the RESETSTAT that opened it, and
/// the CPU it used between the two snapshots.
#[derive(Clone, Debug, Default)]
pub struct PhaseStats {
    /// Per command, admin commands removed.
    pub commands: BTreeMap<String, CommandStat>,
    /// Redis CPU seconds over the phase.
    pub redis_cpu_s: f64,
}

impl PhaseStats {
    /// `end` is the snapshot taken at the end of the phase (stats reset at its start);
    /// `cpu_start_s` the server's CPU seconds at its start.
    pub fn new(end: &Snapshot, cpu_start_s: f64) -> Self {
        let commands = end
            .commands
            .iter()
            .filter(|(name, _)| !is_admin(name))
            .map(|(name, stat)| (name.clone(), *stat))
            .collect();
        PhaseStats { commands, redis_cpu_s: (end.cpu_s - cpu_start_s).max(0.0) }
    }

    /// All calls, nested ones included.
    pub fn total_calls(&self) -> u64 {
        self.commands.values().map(|c| c.calls).sum()
    }

    /// Script calls (EVALSHA + EVAL) and their µs (which include the nested calls).
    pub fn script(&self) -> CommandStat {
        let mut out = CommandStat::default();
        for name in ["evalsha", "eval", "evalsha_ro", "eval_ro", "fcall", "fcall_ro"] {
            if let Some(c) = self.commands.get(name) {
                out.calls += c.calls;
                out.usec += c.usec;
            }
        }
        out
    }

    /// Sums two phases.
    pub fn plus(&self, other: &PhaseStats) -> PhaseStats {
        let mut commands = self.commands.clone();
        for (name, stat) in &other.commands {
            let entry = commands.entry(name.clone()).or_default();
            entry.calls += stat.calls;
            entry.usec += stat.usec;
        }
        PhaseStats { commands, redis_cpu_s: self.redis_cpu_s + other.redis_cpu_s }
    }
}

fn is_admin(name: &str) -> bool {
    let base = name.split('|').next().unwrap_or(name);
    ADMIN_COMMANDS.contains(&base)
}

/// Counts of commands seen by MONITOR, per phase, split by origin.
#[derive(Clone, Debug, Default)]
pub struct MonitorCounts {
    /// phase -> command -> (sent by a client, run inside a script).
    pub phases: BTreeMap<String, BTreeMap<String, (u64, u64)>>,
    /// Phase markers seen, in order.
    pub markers: Vec<String>,
}

impl MonitorCounts {
    /// Feeds one MONITOR line (`+1700000000.000000 [0 127.0.0.1:5555] "cmd" "arg"…`, or
    /// `[0 lua]` for a script's call). `phase` is updated when the line is a marker.
    pub fn feed(&mut self, line: &str, phase: &mut String) {
        let Some(open) = line.find('[') else { return };
        let Some(close_rel) = line[open..].find("] ") else { return };
        let origin = &line[open + 1..open + close_rel];
        let from_lua = origin.ends_with(" lua");
        let rest = &line[open + close_rel + 2..];
        let mut args = quoted_args(rest);
        let Some(command) = args.next() else { return };
        let command = command.to_ascii_lowercase();
        if command == "echo" {
            if let Some(marker) = args.next().and_then(|a| a.strip_prefix(PHASE_MARKER).map(str::to_string)) {
                self.markers.push(marker.clone());
                *phase = marker;
            }
            return;
        }
        if is_admin(&command) {
            return;
        }
        let entry = self.phases.entry(phase.clone()).or_default().entry(command).or_default();
        if from_lua {
            entry.1 += 1;
        } else {
            entry.0 += 1;
        }
    }

    /// (client, lua) totals of a phase.
    pub fn totals(&self, phase: &str) -> (u64, u64) {
        self.phases
            .get(phase)
            .map(|m| m.values().fold((0, 0), |acc, (c, l)| (acc.0 + c, acc.1 + l)))
            .unwrap_or((0, 0))
    }
}

/// The first few quoted arguments of a MONITOR line (escapes kept; only names matter).
fn quoted_args(s: &str) -> impl Iterator<Item = &str> {
    let mut rest = s;
    std::iter::from_fn(move || {
        let start = rest.find('"')? + 1;
        let bytes = rest.as_bytes();
        let mut i = start;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => i += 2,
                b'"' => break,
                _ => i += 1,
            }
        }
        let arg = &rest[start..i.min(rest.len())];
        rest = &rest[(i + 1).min(rest.len())..];
        Some(arg)
    })
}

/// A MONITOR connection read on its own thread (a MONITOR client that falls behind makes
/// Redis buffer its output, so it is drained as fast as possible).
pub struct Monitor {
    counts: Arc<Mutex<MonitorCounts>>,
    stream: TcpStream,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Monitor {
    /// Connects to `127.0.0.1:port` and starts MONITOR; lines before the first marker go
    /// to phase `setup`.
    pub fn start(port: u16) -> std::io::Result<Self> {
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_nodelay(true)?;
        stream.write_all(b"MONITOR\r\n")?;
        let counts = Arc::new(Mutex::new(MonitorCounts::default()));
        let read_half = stream.try_clone()?;
        let sink = counts.clone();
        let reader = std::thread::spawn(move || {
            let mut phase = "setup".to_string();
            let mut reader = BufReader::with_capacity(1 << 20, read_half);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf);
                        sink.lock().unwrap_or_else(|p| p.into_inner()).feed(&line, &mut phase);
                    }
                }
            }
        });
        Ok(Monitor { counts, stream, reader: Some(reader) })
    }

    /// Waits until the marker `last_marker` has been seen (so the stream caught up), then
    /// stops and returns the counts.
    pub fn finish(mut self, last_marker: &str) -> MonitorCounts {
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_secs(60) {
            if self.counts.lock().unwrap_or_else(|p| p.into_inner()).markers.iter().any(|m| m == last_marker)
            {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commandstats_and_cpu() {
        let text = "# Commandstats\r\ncmdstat_evalsha:calls=20,usec=400,usec_per_call=20.00,rejected_calls=0,failed_calls=0\r\n\
                    cmdstat_hset:calls=5,usec=10,usec_per_call=2.00\r\ncmdstat_info:calls=3,usec=9,usec_per_call=3\r\n\
                    cmdstat_config|resetstat:calls=1,usec=1,usec_per_call=1\r\n\
                    # CPU\r\nused_cpu_sys:1.500000\r\nused_cpu_user:2.250000\r\nused_cpu_sys_children:9.0\r\n";
        let snap = parse_info(text);
        assert_eq!(snap.commands["evalsha"], CommandStat { calls: 20, usec: 400 });
        assert!((snap.cpu_s - 3.75).abs() < 1e-9);
        let phase = PhaseStats::new(&snap, 1.0);
        assert_eq!(phase.total_calls(), 25, "info and config are the harness's own");
        assert_eq!(phase.script().calls, 20);
        assert!((phase.redis_cpu_s - 2.75).abs() < 1e-9);
    }

    #[test]
    fn monitor_lines_split_by_origin_and_phase() {
        let mut counts = MonitorCounts::default();
        let mut phase = "setup".to_string();
        for line in [
            "+1700000000.000001 [0 127.0.0.1:5000] \"ECHO\" \"aura-bench:phase:enqueue\"",
            "+1700000000.000002 [0 127.0.0.1:5001] \"evalsha\" \"abc\" \"1\" \"a \\\"q\\\" b\"",
            "+1700000000.000003 [0 lua] \"HSET\" \"k\" \"f\" \"v\"",
            "+1700000000.000004 [0 lua] \"zadd\" \"k\" \"1\" \"m\"",
            "+1700000000.000005 [0 127.0.0.1:5000] \"echo\" \"aura-bench:phase:process\"",
            "+1700000000.000006 [0 127.0.0.1:5000] \"config\" \"resetstat\"",
            "+1700000000.000007 [0 127.0.0.1:5001] \"bzpopmin\" \"k\" \"5\"",
        ] {
            counts.feed(line, &mut phase);
        }
        assert_eq!(phase, "process");
        assert_eq!(counts.totals("enqueue"), (1, 2));
        assert_eq!(counts.phases["enqueue"]["hset"], (0, 1));
        assert_eq!(counts.totals("process"), (1, 0));
    }
}

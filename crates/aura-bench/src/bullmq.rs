//! The BullMQ peer: runs `node bench.mjs bulk` (benchmarks/peers/bullmq) against the same
//! redis-server and reads the JSON line it prints into the same [`BulkResult`] shape; and
//! `bench.mjs latency` for the mesh's latency figure.

use std::{path::Path, process::Stdio, time::Duration};

use anyhow::{Context, bail, ensure};
use serde_json::Value;

use crate::{
    bulk::{BulkParams, BulkResult},
    machine::HostCpu,
    redis_stats::{PhaseStats, parse_info},
};

/// Versions the peer reports.
#[derive(Clone, Debug, Default)]
pub struct PeerVersions {
    /// `process.version`.
    pub node: String,
    /// bullmq's package.json version, as installed.
    pub bullmq: String,
    /// ioredis's.
    pub ioredis: String,
}

async fn run_node(dir: &Path, node: &str, mode: &str, env: &[(&str, String)]) -> anyhow::Result<Value> {
    let mut cmd = tokio::process::Command::new(node);
    cmd.arg("bench.mjs")
        .arg(mode)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().with_context(|| format!("starting {node} in {}", dir.display()))?;
    let out = tokio::time::timeout(Duration::from_secs(900), child.wait_with_output())
        .await
        .context("bench.mjs timed out")??;
    if !out.status.success() {
        bail!("bench.mjs {mode} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with('{')).context("bench.mjs printed no JSON")?;
    Ok(serde_json::from_str(line)?)
}

/// Asks the installed peer for its versions (and checks node_modules is there).
pub async fn versions(dir: &Path, node: &str) -> anyhow::Result<PeerVersions> {
    let v = run_node(dir, node, "versions", &[]).await?;
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    Ok(PeerVersions { node: s("node"), bullmq: s("bullmq"), ioredis: s("ioredis") })
}

fn host_cpu(line: &Value) -> HostCpu {
    HostCpu::parse(line.as_str().unwrap_or(""))
}

/// Runs one bulk scenario on BullMQ.
pub async fn run(
    dir: &Path,
    node: &str,
    port: u16,
    p: &BulkParams,
    queue_name: &str,
    warmup_jobs: u64,
) -> anyhow::Result<BulkResult> {
    let env = [
        ("REDIS_HOST", "127.0.0.1".to_string()),
        ("REDIS_PORT", port.to_string()),
        ("N_BULK", p.jobs.to_string()),
        ("BULK_BATCH", p.enqueue_batch.to_string()),
        ("CONCURRENCY", p.concurrency.to_string()),
        ("QUEUE_NAME", queue_name.to_string()),
        ("WARMUP_JOBS", warmup_jobs.to_string()),
    ];
    let v = run_node(dir, node, "bulk", &env).await?;
    let f = |k: &str| v[k].as_f64().with_context(|| format!("bench.mjs: missing {k}"));
    let text = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let start = parse_info(&text("info_start"));
    let after_enqueue = parse_info(&text("info_enqueue"));
    let after_process = parse_info(&text("info_process"));
    let node_cpu: Vec<f64> =
        v["node_cpu_s"].as_array().context("node_cpu_s")?.iter().filter_map(Value::as_f64).collect();
    let hosts: Vec<HostCpu> = v["host_cpu"].as_array().context("host_cpu")?.iter().map(host_cpu).collect();
    ensure!(node_cpu.len() == 3 && hosts.len() == 3, "bench.mjs: cpu samples");
    let completed = v["final_counts"]["completed"].as_u64().unwrap_or(0);
    let failed = v["failed_events"].as_u64().unwrap_or(0);
    ensure!(
        completed == p.jobs && failed == 0 && v["final_counts"]["wait"].as_u64() == Some(0),
        "bullmq after the run: {} (failed events {failed})",
        v["final_counts"]
    );
    Ok(BulkResult {
        enqueue_s: f("enqueue_s")?,
        process_s: f("process_s")?,
        total_s: f("total_s")?,
        enqueue: PhaseStats::new(&after_enqueue, start.cpu_s),
        process: PhaseStats::new(&after_process, after_enqueue.cpu_s),
        client_cpu_enqueue_s: node_cpu[1] - node_cpu[0],
        client_cpu_process_s: node_cpu[2] - node_cpu[1],
        host_enqueue: hosts[1].since(&hosts[0]),
        host_process: hosts[2].since(&hosts[1]),
        completed,
    })
}

/// BullMQ's add → completed latency (`bench.mjs latency`: `waitUntilFinished` on a
/// QueueEvents): `n` sorted samples, ms.
#[allow(dead_code)] // used by aura-bench-mesh, which shares this module
pub async fn latency(
    dir: &Path,
    node: &str,
    port: u16,
    n: usize,
    queue_name: &str,
) -> anyhow::Result<Vec<f64>> {
    let env = [
        ("REDIS_HOST", "127.0.0.1".to_string()),
        ("REDIS_PORT", port.to_string()),
        ("N_LAT", n.to_string()),
        ("QUEUE_NAME", queue_name.to_string()),
    ];
    let v = run_node(dir, node, "latency", &env).await?;
    let mut samples: Vec<f64> =
        v["samples_ms"].as_array().into_iter().flatten().filter_map(Value::as_f64).collect();
    ensure!(samples.len() == n, "bench.mjs latency: {} samples for {n}", samples.len());
    samples.sort_by(f64::total_cmp);
    Ok(samples)
}

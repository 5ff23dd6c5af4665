//! `aura-bench`: AURA's figures next to their peer's, measured on the same Redis in the same
//! run (issue 9). `benchmarks/run.sh` builds it, installs the BullMQ peer and calls it.
//!
//! # Layout
//! - [`bulk`] — scenario 1 on `aura-queue` (and the result shape both systems report).
//! - [`bullmq`] — the BullMQ peer, `benchmarks/peers/bullmq/bench.mjs`, run under Node.
//! - [`redis_stats`] — scenario 4: commandstats, Redis CPU, MONITOR client/script split.
//! - [`pubsub`] — scenario 5: raw Redis pub/sub latency.
//! - [`machine`] — CPU accounting of the host and this process, versions.
//! - [`report`] — aggregation over runs and the markdown written to `benchmarks/RESULTS.md`.
//!
//! One private `redis-server` (loopback, free port, temp dir, no persistence) serves the
//! whole invocation; every scenario starts with FLUSHALL. Each run measures every scenario
//! for AURA and BullMQ back to back; the order alternates between runs so drift on a
//! shared machine does not always favour the same side. Ratios are taken within a run.
#![forbid(unsafe_code)]

mod bulk;
mod bullmq;
mod machine;
mod pubsub;
mod redis_stats;
mod report;

use std::{fmt::Write as _, path::PathBuf};

use anyhow::Context;
use clap::Parser;
use serde_json::{Value, json};

use bulk::{Admin, BulkParams, BulkResult};
use redis_stats::{MonitorCounts, PhaseStats};
use report::{Better, Figure, aggregate, cell, summary, table};

/// Queue core vs BullMQ, Redis commands per job, and raw pub/sub latency.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
struct Args {
    /// Jobs per bulk scenario.
    #[arg(long, env = "BENCH_JOBS", default_value_t = 20_000)]
    jobs: u64,
    /// Runs (medians and min–max are over these).
    #[arg(long, env = "BENCH_RUNS", default_value_t = 3)]
    runs: usize,
    /// Jobs per enqueue call (BullMQ addBulk size).
    #[arg(long, env = "BENCH_ENQUEUE_BATCH", default_value_t = 1000)]
    enqueue_batch: u64,
    /// Consumer concurrencies.
    #[arg(long, env = "BENCH_CONCURRENCIES", value_delimiter = ',', default_value = "1,10,50")]
    concurrencies: Vec<usize>,
    /// AURA claim batch sizes (jobs per claim and per complete call), each run at every
    /// concurrency. 1 is the like-for-like variant of BullMQ's one-job-at-a-time worker.
    #[arg(long, env = "BENCH_CLAIM_BATCHES", value_delimiter = ',', default_value = "1,50")]
    claim_batches: Vec<usize>,
    /// Unmeasured jobs run through the same scenario (on another lane/queue, then flushed)
    /// before each measured one, on both sides: each BullMQ scenario runs in a fresh Node
    /// process whose JIT would otherwise warm up inside the measurement.
    #[arg(long, env = "BENCH_WARMUP_JOBS", default_value_t = 2000)]
    warmup_jobs: u64,
    /// AURA queue partitions.
    #[arg(long, env = "BENCH_PARTITIONS", default_value_t = 1)]
    partitions: usize,
    /// Concurrency whose Redis-work figures go in the main table (and of the MONITOR pass).
    #[arg(long, env = "BENCH_REF_CONCURRENCY", default_value_t = 10)]
    ref_concurrency: usize,
    /// Jobs of the MONITOR counting pass (0 skips it).
    #[arg(long, env = "BENCH_MONITOR_JOBS", default_value_t = 5000)]
    monitor_jobs: u64,
    /// Directory of the BullMQ peer (bench.mjs and node_modules).
    #[arg(long, env = "BENCH_PEER_DIR", default_value = "benchmarks/peers/bullmq")]
    peer_dir: PathBuf,
    /// Node.js executable.
    #[arg(long, env = "BENCH_NODE", default_value = "node")]
    node: String,
    /// Skip BullMQ (AURA figures only).
    #[arg(long, env = "BENCH_NO_PEER", value_parser = clap::builder::BoolishValueParser::new())]
    no_peer: bool,
    /// Pub/sub subscriber counts, comma-separated ("" or "0" skips scenario 5).
    #[arg(long, env = "BENCH_PUBSUB_SUBSCRIBERS", default_value = "1,1000", value_parser = parse_counts)]
    pubsub_subscribers: Counts,
    /// Measured pub/sub messages per setting.
    #[arg(long, env = "BENCH_PUBSUB_MESSAGES", default_value_t = 1000)]
    pubsub_messages: usize,
    /// Warm-up messages (excluded).
    #[arg(long, env = "BENCH_PUBSUB_WARMUP", default_value_t = 100)]
    pubsub_warmup: usize,
    /// Markdown report.
    #[arg(long, env = "BENCH_OUT", default_value = "benchmarks/RESULTS.md")]
    out: PathBuf,
    /// Every measurement, as JSON.
    #[arg(long, env = "BENCH_RAW", default_value = "benchmarks/results-raw.json")]
    raw: PathBuf,
    /// The command line printed as "reproduce with" (run.sh passes its own).
    #[arg(long, env = "BENCH_REPRODUCE", default_value = "bash benchmarks/run.sh")]
    reproduce: String,
}

/// A comma-separated list of counts; empty and zero entries are dropped.
#[derive(Clone, Debug)]
struct Counts(Vec<usize>);

/// One row of the work table: label, how to read the figure, which way is better, decimals.
type WorkRow<'a> = (&'a str, &'a dyn Fn(&BulkResult) -> f64, Better, usize);
fn parse_counts(text: &str) -> Result<Counts, String> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let n: usize = part.parse().map_err(|e| format!("{part:?}: {e}"))?;
        if n > 0 {
            out.push(n);
        }
    }
    Ok(Counts(out))
}

const SECTION_THROUGHPUT: &str = "throughput";
const SECTION_PUBSUB: &str = "pubsub";

fn work_section(c: usize) -> String {
    format!("work C={c}")
}

fn load_section(c: usize) -> String {
    format!("load C={c}")
}

/// The allocator of the `aura` binary, so the services measured in this process run as
/// they do there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let started = machine::version_of("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]);
    let load_start = machine::loadavg();
    eprintln!("aura-bench: {args:?}");

    let peer_versions = if args.no_peer {
        None
    } else {
        Some(bullmq::versions(&args.peer_dir, &args.node).await.with_context(|| {
            format!("the BullMQ peer in {} (run `npm ci` there)", args.peer_dir.display())
        })?)
    };

    let server = aura_testkit::RedisServer::start();
    let url = server.url();
    let mut admin = Admin::connect(&url).await?;
    let settings = redis_settings(&url).await?;
    eprintln!("redis-server on 127.0.0.1:{} ({})", server.port(), server.dir().display());

    let mut runs: Vec<Vec<Figure>> = Vec::new();
    let mut raw_runs = Vec::new();
    let mut last_bulk: Vec<(usize, Option<usize>, BulkResult)> = Vec::new();
    for run in 1..=args.runs {
        let peer_first = run % 2 == 0;
        let mut figures = Vec::new();
        let mut raw = Vec::new();
        last_bulk.clear();
        for &c in &args.concurrencies {
            let mut peer = None;
            if peer_first && !args.no_peer {
                peer = Some(run_peer(&args, &mut admin, server.port(), c, run).await?);
            }
            let mut auras = Vec::new();
            for &b in &args.claim_batches {
                if args.warmup_jobs > 0 {
                    admin.flushall().await?;
                    let warm = params(&args, args.warmup_jobs, c, b);
                    bulk::run_aura(&url, &mut admin, &warm, "warmup").await.context("AURA warm-up")?;
                }
                admin.flushall().await?;
                let p = params(&args, args.jobs, c, b);
                let r = bulk::run_aura(&url, &mut admin, &p, "bench")
                    .await
                    .with_context(|| format!("AURA C={c} batch={b}"))?;
                log_bulk(run, &format!("AURA    C={c:<3} batch={b:<4}"), &r, args.jobs);
                auras.push((b, r));
            }
            if !peer_first && !args.no_peer {
                peer = Some(run_peer(&args, &mut admin, server.port(), c, run).await?);
            }
            for (b, r) in &auras {
                figures.extend(bulk_figures(&args, c, *b, r, peer.as_ref()));
                raw.push(json!({"system": "aura", "concurrency": c, "claim_batch": b, "result": bulk_json(r, args.jobs)}));
                last_bulk.push((c, Some(*b), r.clone()));
            }
            if let Some(r) = &peer {
                raw.push(json!({"system": "bullmq", "concurrency": c, "result": bulk_json(r, args.jobs)}));
                last_bulk.push((c, None, r.clone()));
            }
        }
        for &s in &args.pubsub_subscribers.0 {
            admin.flushall().await?;
            let r = pubsub::run(&url, s, args.pubsub_warmup, args.pubsub_messages).await?;
            let pct = |v: &[f64], p| pubsub::percentile(v, p);
            eprintln!(
                "[run {run}] pub/sub S={s}: delivery p50 {:.3} ms p99 {:.3} ms; all received p50 {:.3} p99 {:.3}",
                pct(&r.delivery_ms, 50.0),
                pct(&r.delivery_ms, 99.0),
                pct(&r.all_received_ms, 50.0),
                pct(&r.all_received_ms, 99.0)
            );
            for (label, values) in [
                ("publish → a subscriber", &r.delivery_ms),
                ("publish → last subscriber", &r.all_received_ms),
            ] {
                for p in [50.0, 99.0] {
                    figures.push(Figure {
                        section: SECTION_PUBSUB.into(),
                        name: format!("{s} subscriber{} · {label} · p{p} ms", if s == 1 { "" } else { "s" }),
                        aura: None,
                        peer: Some(pct(values, p)),
                        better: Better::Lower,
                        decimals: 3,
                    });
                }
            }
            raw.push(json!({"system": "redis-pubsub", "subscribers": s, "messages": r.messages,
                "delivery_ms": {"p50": pct(&r.delivery_ms, 50.0), "p90": pct(&r.delivery_ms, 90.0), "p99": pct(&r.delivery_ms, 99.0), "max": pct(&r.delivery_ms, 100.0)},
                "all_received_ms": {"p50": pct(&r.all_received_ms, 50.0), "p90": pct(&r.all_received_ms, 90.0), "p99": pct(&r.all_received_ms, 99.0), "max": pct(&r.all_received_ms, 100.0)}}));
        }
        runs.push(figures);
        raw_runs.push(json!({"run": run, "order": if peer_first { "bullmq first" } else { "aura first" }, "scenarios": raw}));
    }

    // Scenario 4, second half: which commands clients send and which run inside scripts.
    let mut monitored: Vec<(String, u64, MonitorCounts)> = Vec::new();
    if args.monitor_jobs > 0 {
        let c = args.ref_concurrency;
        for &b in &args.claim_batches {
            if args.warmup_jobs > 0 {
                admin.flushall().await?;
                let warm = params(&args, args.warmup_jobs, c, b);
                bulk::run_aura(&url, &mut admin, &warm, "warmup").await.context("AURA warm-up")?;
            }
            admin.flushall().await?;
            let monitor = redis_stats::Monitor::start(server.port())?;
            let p = params(&args, args.monitor_jobs, c, b);
            bulk::run_aura(&url, &mut admin, &p, "bench").await.context("AURA under MONITOR")?;
            monitored.push((
                format!("AURA (C={c}, claim batch {b})"),
                args.monitor_jobs,
                monitor.finish("end"),
            ));
        }
        if !args.no_peer {
            admin.flushall().await?;
            let monitor = redis_stats::Monitor::start(server.port())?;
            let p = params(&args, args.monitor_jobs, c, 1);
            bullmq::run(&args.peer_dir, &args.node, server.port(), &p, "bench", args.warmup_jobs)
                .await
                .context("BullMQ under MONITOR")?;
            monitored.push((format!("BullMQ (C={c})"), args.monitor_jobs, monitor.finish("end")));
        }
        eprintln!("MONITOR pass done");
    }

    let finished = machine::version_of("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]);
    let load_end = machine::loadavg();
    let facts = Facts {
        started,
        finished,
        load_start,
        load_end,
        redis_version: machine::version_of("redis-server", &["--version"]),
        settings,
        peer: peer_versions,
        commit: machine::version_of("git", &["rev-parse", "--short", "HEAD"]),
        queue_dirty: !machine::version_of(
            "git",
            &["--no-optional-locks", "status", "--porcelain", "--", "crates/aura-queue"],
        )
        .is_empty(),
    };
    let aggs = aggregate(&runs);
    let markdown = render(&args, &facts, &aggs, &monitored, &last_bulk);
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::write(&args.out, &markdown).with_context(|| format!("writing {}", args.out.display()))?;
    let raw = json!({"args": format!("{args:?}"), "started": facts.started, "finished": facts.finished,
        "loadavg": [facts.load_start, facts.load_end], "runs": raw_runs,
        "monitor": monitored.iter().map(|(label, n, m)| json!({"label": label, "jobs": n, "phases": m.phases})).collect::<Vec<_>>()});
    std::fs::write(&args.raw, serde_json::to_string_pretty(&raw)?)
        .with_context(|| format!("writing {}", args.raw.display()))?;
    eprintln!("wrote {} and {}", args.out.display(), args.raw.display());
    println!("{markdown}");
    Ok(())
}

fn params(args: &Args, jobs: u64, concurrency: usize, claim_batch: usize) -> BulkParams {
    BulkParams {
        jobs,
        enqueue_batch: args.enqueue_batch,
        concurrency,
        claim_batch,
        partitions: args.partitions,
    }
}

async fn run_peer(
    args: &Args,
    admin: &mut Admin,
    port: u16,
    c: usize,
    run: usize,
) -> anyhow::Result<BulkResult> {
    admin.flushall().await?;
    let p = params(args, args.jobs, c, 1);
    let r = bullmq::run(&args.peer_dir, &args.node, port, &p, "bench", args.warmup_jobs)
        .await
        .with_context(|| format!("BullMQ C={c}"))?;
    log_bulk(run, &format!("BullMQ  C={c:<3}           "), &r, args.jobs);
    Ok(r)
}

fn log_bulk(run: usize, label: &str, r: &BulkResult, n: u64) {
    let n = n as f64;
    eprintln!(
        "[run {run}] {label} e2e {:>7.0}/s  enqueue {:>7.0}/s  process {:>7.0}/s  cmds/job {:>5.2}  redis µs/job {:>5.1}  other cores {:.2}",
        n / r.total_s,
        n / r.enqueue_s,
        n / r.process_s,
        r.whole().total_calls() as f64 / n,
        r.whole().redis_cpu_s * 1e6 / n,
        other_cores(r),
    );
}

/// Cores used by processes other than Redis and the benchmark client, over the process
/// phase: the noise indicator.
fn other_cores(r: &BulkResult) -> f64 {
    ((r.host_process.busy_s - r.process.redis_cpu_s - r.client_cpu_process_s) / r.process_s).max(0.0)
}

fn bulk_figures(args: &Args, c: usize, b: usize, a: &BulkResult, peer: Option<&BulkResult>) -> Vec<Figure> {
    let n = args.jobs as f64;
    let mut out = Vec::new();
    let mut push =
        |section: String, name: String, f: &dyn Fn(&BulkResult) -> f64, better: Better, decimals: usize| {
            out.push(Figure { section, name, aura: Some(f(a)), peer: peer.map(f), better, decimals });
        };
    let tp = SECTION_THROUGHPUT.to_string();
    push(
        tp.clone(),
        format!("C={c} · claim batch {b} · end-to-end jobs/s"),
        &|r| n / r.total_s,
        Better::Higher,
        0,
    );
    push(
        tp.clone(),
        format!("C={c} · claim batch {b} · enqueue-only jobs/s"),
        &|r| n / r.enqueue_s,
        Better::Higher,
        0,
    );
    push(
        tp,
        format!("C={c} · claim batch {b} · process-only jobs/s"),
        &|r| n / r.process_s,
        Better::Higher,
        0,
    );

    let w = work_section(c);
    let per_job = |v: f64| v / n;
    let rows: [WorkRow; 12] = [
        (
            "commands/job, whole run (incl. inside scripts)",
            &|r| per_job(r.whole().total_calls() as f64),
            Better::Lower,
            2,
        ),
        ("commands/job, enqueue", &|r| per_job(r.enqueue.total_calls() as f64), Better::Lower, 2),
        ("commands/job, process", &|r| per_job(r.process.total_calls() as f64), Better::Lower, 2),
        ("script calls/job (EVALSHA+EVAL)", &|r| per_job(r.whole().script().calls as f64), Better::Lower, 3),
        ("script µs/job, enqueue", &|r| per_job(r.enqueue.script().usec as f64), Better::Lower, 1),
        ("script µs/job, process", &|r| per_job(r.process.script().usec as f64), Better::Lower, 1),
        ("Redis CPU µs/job, enqueue", &|r| per_job(r.enqueue.redis_cpu_s * 1e6), Better::Lower, 1),
        ("Redis CPU µs/job, process", &|r| per_job(r.process.redis_cpu_s * 1e6), Better::Lower, 1),
        ("Redis CPU µs/job, whole run", &|r| per_job(r.whole().redis_cpu_s * 1e6), Better::Lower, 1),
        ("one-Redis-core ceiling, process-only jobs/s", &|r| n / r.process.redis_cpu_s, Better::Higher, 0),
        ("one-Redis-core ceiling, end-to-end jobs/s", &|r| n / r.whole().redis_cpu_s, Better::Higher, 0),
        ("client CPU µs/job, process", &|r| per_job(r.client_cpu_process_s * 1e6), Better::Lower, 1),
    ];
    for (name, f, better, decimals) in rows {
        push(w.clone(), format!("batch {b} · {name}"), f, better, decimals);
    }
    let l = load_section(c);
    push(
        l.clone(),
        format!("batch {b} · Redis cores busy, process"),
        &|r| r.process.redis_cpu_s / r.process_s,
        Better::Info,
        2,
    );
    push(
        l.clone(),
        format!("batch {b} · client cores busy, process"),
        &|r| r.client_cpu_process_s / r.process_s,
        Better::Info,
        2,
    );
    push(l, format!("batch {b} · other processes' cores, process (noise)"), &other_cores, Better::Info, 2);
    out
}

fn phase_json(p: &PhaseStats) -> Value {
    json!({
        "redis_cpu_s": p.redis_cpu_s,
        "total_calls": p.total_calls(),
        "commands": p.commands.iter().map(|(k, v)| (k.clone(), json!({"calls": v.calls, "usec": v.usec}))).collect::<serde_json::Map<_, _>>(),
    })
}

fn bulk_json(r: &BulkResult, n: u64) -> Value {
    let n = n as f64;
    json!({
        "enqueue_s": r.enqueue_s, "process_s": r.process_s, "total_s": r.total_s,
        "end_to_end_jobs_per_s": n / r.total_s, "enqueue_jobs_per_s": n / r.enqueue_s, "process_jobs_per_s": n / r.process_s,
        "client_cpu_enqueue_s": r.client_cpu_enqueue_s, "client_cpu_process_s": r.client_cpu_process_s,
        "host_busy_enqueue_s": r.host_enqueue.busy_s, "host_busy_process_s": r.host_process.busy_s,
        "host_steal_process_s": r.host_process.steal_s, "other_cores_process": other_cores(r),
        "completed": r.completed,
        "enqueue": phase_json(&r.enqueue), "process": phase_json(&r.process),
    })
}

async fn redis_settings(url: &str) -> anyhow::Result<Vec<(String, String)>> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut out = Vec::new();
    for key in [
        "port",
        "bind",
        "save",
        "appendonly",
        "io-threads",
        "maxmemory",
        "maxmemory-policy",
        "hz",
        "lua-time-limit",
    ] {
        let pair: Vec<String> = redis::cmd("CONFIG").arg("GET").arg(key).query_async(&mut conn).await?;
        out.push((key.to_string(), pair.get(1).cloned().unwrap_or_default()));
    }
    Ok(out)
}

struct Facts {
    started: String,
    finished: String,
    load_start: String,
    load_end: String,
    redis_version: String,
    settings: Vec<(String, String)>,
    peer: Option<bullmq::PeerVersions>,
    commit: String,
    /// `crates/aura-queue` had uncommitted changes (the figures are of the working tree).
    queue_dirty: bool,
}

fn render(
    args: &Args,
    facts: &Facts,
    aggs: &[report::Aggregate],
    monitored: &[(String, u64, MonitorCounts)],
    last_bulk: &[(usize, Option<usize>, BulkResult)],
) -> String {
    let mut s = String::new();
    let peer = "BullMQ";
    let others: Vec<f64> = aggs
        .iter()
        .filter(|a| a.section.starts_with("load") && a.name.contains("other processes"))
        .flat_map(|a| a.aura.iter().chain(&a.peer).copied())
        .collect();
    let (other_med, _, other_max) = summary(&others);
    let _ = writeln!(s, "# AURA benchmarks (generated by `aura-bench`; do not edit by hand)\n");
    let _ = writeln!(
        s,
        "Run {} → {} UTC at commit `{}`{}: {} job(s) per bulk scenario, {} run(s); load average {} at start, {} at end. \
         CPU used by processes other than Redis and the benchmark client during processing phases: median {:.2}, max {:.2} cores \
         (of {}). Anything well above 0 means the figures are disturbed: re-run on a quiet machine.\n",
        facts.started,
        facts.finished,
        facts.commit,
        if facts.queue_dirty { " (with uncommitted changes in crates/aura-queue)" } else { "" },
        args.jobs,
        args.runs,
        facts.load_start,
        facts.load_end,
        other_med,
        other_max,
        machine::nproc()
    );
    let _ = writeln!(s, "Reproduce (from the repository root):\n\n```bash\n{}\n```\n", args.reproduce);

    let _ = writeln!(s, "## Machine, versions, Redis\n");
    let _ = writeln!(s, "| item | value |\n|---|---|");
    let _ = writeln!(s, "| CPUs (nproc) | {} |", machine::nproc());
    let _ = writeln!(s, "| CPU model | {} |", machine::cpu_model());
    let _ = writeln!(s, "| memory | {} |", machine::mem_total());
    let _ = writeln!(s, "| redis-server | {} |", facts.redis_version);
    let settings: Vec<String> = facts.settings.iter().map(|(k, v)| format!("`{k}={v}`")).collect();
    let _ = writeln!(
        s,
        "| Redis settings (CONFIG GET) | {} — started by the harness: `--bind 127.0.0.1 --save \"\" --appendonly no`, free port, temp dir |",
        settings.join(" ")
    );
    match &facts.peer {
        Some(p) => {
            let _ = writeln!(s, "| node | {} |", p.node);
            let _ = writeln!(s, "| bullmq / ioredis | {} / {} (package-lock.json) |", p.bullmq, p.ioredis);
        }
        None => {
            let _ = writeln!(s, "| peer | not run (`BENCH_NO_PEER`) |");
        }
    }
    let _ = writeln!(
        s,
        "| AURA | `aura-queue` straight on Redis, release build, {} partition(s), one multiplexed connection + the wake-up subscription |",
        args.partitions
    );
    let _ = writeln!(
        s,
        "| layout | Redis and the client process (Rust or Node, producer and consumers in one process) share the machine's cores; everything over loopback |\n"
    );

    let _ = writeln!(s, "## Method\n");
    let _ = writeln!(
        s,
        "Same method as `peers/bullmq/RESULTS.md` (a), reproduced by our own script `benchmarks/peers/bullmq/bench.mjs`, \
         and the same clock points on AURA's side (`crates/aura-bench/src/bulk.rs`): {n} no-op jobs (payload `{{\"i\":i}}`) are enqueued in batches \
         of {eb}, each awaited (BullMQ `addBulk`, AURA `enqueue_bulk`) → enqueue-only; then the consumers start → process-only; \
         end-to-end = N / (first enqueue → N-th completion); the phases do not overlap. BullMQ: one `Worker` with `concurrency` C, \
         processor `async () => null`, default options (completed jobs kept). AURA: C consumer loops, each `claim_blocking(batch)` → \
         `complete(batch)` on one shared `Queue` (completed jobs kept, as by default). **Claim batch 1** is the like-for-like \
         variant (C jobs in flight, one job per call, like BullMQ's worker; AURA then needs 2 round trips per job where BullMQ's \
         `moveToFinished` also fetches the next job); claim batch {bb} is how AURA is meant to be driven (the worker service claims \
         up to its free slots). Every scenario starts with FLUSHALL and an unmeasured warm-up of {wj} jobs on another lane/queue \
         (each BullMQ scenario runs in a fresh Node process, whose JIT would otherwise warm up inside the measurement); AURA and BullMQ run back to back at each C, in alternating \
         order between runs. Ratios are AURA / BullMQ within one run, then median (min–max) over runs; ↑ higher is better, ↓ lower is better.\n\n\
         Redis work: around each phase the harness sends `CONFIG RESETSTAT` and reads `INFO commandstats cpu` (its own \
         echo/config/info are excluded). In Redis 7, commandstats counts the commands run *inside* Lua scripts as well as the \
         EVALSHA, and an EVALSHA's usec includes its nested calls. Redis CPU = Δ(used_cpu_sys + used_cpu_user); the one-core \
         ceiling is 1e6 / (Redis CPU µs per job): the throughput a single Redis core could sustain if nothing else limited it. \
         The client/script split comes from a separate pass under MONITOR ({mj} jobs, C={rc}; its timings are not used).\n",
        n = args.jobs,
        eb = args.enqueue_batch,
        bb = args
            .claim_batches
            .iter()
            .filter(|b| **b != 1)
            .map(|b| b.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        mj = args.monitor_jobs,
        wj = args.warmup_jobs,
        rc = args.ref_concurrency,
    );

    let _ = writeln!(s, "## 1. Queue core throughput (jobs/s)\n");
    let _ = writeln!(s, "{}", table(aggs, SECTION_THROUGHPUT, peer));
    let _ = writeln!(
        s,
        "BullMQ has no claim batch: its value in the `batch 1` and `batch N` rows of one C is the same BullMQ measurement.\n"
    );

    let _ = writeln!(s, "## 4. Redis work per job (C={})\n", args.ref_concurrency);
    let _ = writeln!(s, "{}", table(aggs, &work_section(args.ref_concurrency), peer));
    let _ = writeln!(
        s,
        "Where the cores went during processing (C={}; cores = CPU-seconds / wall-seconds):\n",
        args.ref_concurrency
    );
    let _ = writeln!(s, "{}", table(aggs, &load_section(args.ref_concurrency), peer));

    if !monitored.is_empty() {
        let _ = writeln!(s, "### Sent by the client vs run inside scripts (MONITOR pass)\n");
        let _ = writeln!(
            s,
            "| system | phase | sent by clients / job | inside scripts / job | total / job |\n|---|---|---:|---:|---:|"
        );
        for (label, n, m) in monitored {
            let n = *n as f64;
            let mut whole = (0, 0);
            for phase in ["enqueue", "process"] {
                let (c, l) = m.totals(phase);
                whole = (whole.0 + c, whole.1 + l);
                let _ = writeln!(
                    s,
                    "| {label} | {phase} | {:.3} | {:.3} | {:.3} |",
                    c as f64 / n,
                    l as f64 / n,
                    (c + l) as f64 / n
                );
            }
            let _ = writeln!(
                s,
                "| {label} | **whole run** | **{:.3}** | **{:.3}** | **{:.3}** |",
                whole.0 as f64 / n,
                whole.1 as f64 / n,
                (whole.0 + whole.1) as f64 / n
            );
        }
        let _ = writeln!(s, "\nPer command, whole run, per job (client-sent + inside scripts):\n");
        let mut names: Vec<String> = monitored
            .iter()
            .flat_map(|(_, _, m)| {
                ["enqueue", "process"]
                    .into_iter()
                    .filter_map(|p| m.phases.get(p))
                    .flat_map(|c| c.keys().cloned())
            })
            .collect();
        names.sort();
        names.dedup();
        let _ = write!(s, "| command |");
        for (label, _, _) in monitored {
            let _ = write!(s, " {label} |");
        }
        let _ = write!(s, "\n|---|");
        for _ in monitored {
            let _ = write!(s, "---:|");
        }
        let _ = writeln!(s);
        for name in names {
            let _ = write!(s, "| {name} |");
            for (_, n, m) in monitored {
                let (c, l) = ["enqueue", "process"]
                    .into_iter()
                    .filter_map(|p| m.phases.get(p).and_then(|x| x.get(&name)))
                    .fold((0, 0), |acc, (c, l)| (acc.0 + c, acc.1 + l));
                let cellv = if c + l == 0 {
                    "".to_string()
                } else {
                    format!(
                        "{} + {}",
                        report::num(c as f64 / *n as f64, 3),
                        report::num(l as f64 / *n as f64, 3)
                    )
                };
                let _ = write!(s, " {cellv} |");
            }
            let _ = writeln!(s);
        }
        let _ = writeln!(s);
    }

    if aggs.iter().any(|a| a.section == SECTION_PUBSUB) {
        let _ = writeln!(s, "## 5. Raw Redis pub/sub latency (the peer of AURA's Events figure)\n");
        let _ = writeln!(
            s,
            "One publisher connection, S subscriber connections (one socket each) on one channel, all in this process. \
             Messages are sent one at a time ({} measured after {} warm-up), each only after every subscriber got the previous \
             one, so this is unloaded latency. AURA's Events figure (gRPC Subscribe through the Events service) is not measured \
             by this harness yet; this is the floor it should be compared with.\n",
            args.pubsub_messages, args.pubsub_warmup
        );
        let _ = writeln!(s, "| figure | raw Redis pub/sub, ms |\n|---|---:|");
        for a in aggs.iter().filter(|a| a.section == SECTION_PUBSUB) {
            let _ = writeln!(s, "| {} | {} |", a.name, cell(&a.peer, a.decimals));
        }
        let _ = writeln!(s);
    }

    let _ = writeln!(s, "## Appendix\n");
    for &c in args.concurrencies.iter().filter(|c| **c != args.ref_concurrency) {
        let _ = writeln!(s, "### Redis work per job, C={c}\n");
        let _ = writeln!(s, "{}", table(aggs, &work_section(c), peer));
        let _ = writeln!(s, "{}", table(aggs, &load_section(c), peer));
    }
    let _ = writeln!(
        s,
        "### Commands by time, last run, C={} (commandstats; script usec include nested calls)\n",
        args.ref_concurrency
    );
    for (c, b, r) in last_bulk.iter().filter(|(c, _, _)| *c == args.ref_concurrency) {
        let label = match b {
            Some(b) => format!("AURA, claim batch {b}"),
            None => "BullMQ".to_string(),
        };
        let n = args.jobs as f64;
        let whole = r.whole();
        let mut cmds: Vec<_> = whole.commands.iter().collect();
        cmds.sort_by_key(|c| std::cmp::Reverse(c.1.usec));
        let list: Vec<String> = cmds
            .iter()
            .take(12)
            .map(|(name, st)| {
                format!("{name} {:.2}/job {:.1} µs/job", st.calls as f64 / n, st.usec as f64 / n)
            })
            .collect();
        let _ = writeln!(s, "- {label} (C={c}): {}", list.join("; "));
    }
    let _ = writeln!(s, "\nEvery measurement (per run, per phase, per command): `{}`.", args.raw.display());
    s
}

//! The whole mesh (client → Gateway → Scheduler → Worker → Events) in one process, on a
//! private redis-server, with a one-step `noop` workflow:
//!
//! 1. bulk: N runs submitted with `StartRuns` (batches of 1,000), until all succeeded;
//! 2. concurrent: N runs, one per `StartRun`, from 64 concurrent clients, until all succeeded;
//! 3. latency: sequential single runs, `StartRun` → the run's `run.succeeded` event, seen on
//!    a `Subscribe(runs.*)` stream open throughout (BullMQ's QueueEvents way) and on a
//!    `WatchRun` opened after the start, p50/p90/p99;
//! 5. event delivery to each of 1 and 1,000 `Events.Subscribe` streams, published in Redis
//!    by the bus script (as every run event is) and by an `Events.Publish` RPC, next to raw
//!    Redis PUBLISH → SUBSCRIBE on the same redis-server, one message at a time (the next is
//!    published once every subscriber has the previous: unloaded latency).
//!
//! 1–3 run against BullMQ on the same redis-server (`benchmarks/peers/bullmq/bench.mjs`
//! `bulk` at C=50 and `latency`), in alternating pairs; `BENCH_NO_PEER=1` skips it.
//! Prints a markdown section; `benchmarks/run.sh` appends it to RESULTS.md.

use std::time::{Duration, Instant};

// Shared with `aura-bench` (the same INFO parsing for both tables); this binary uses part.
#[allow(dead_code)]
#[path = "../machine.rs"]
mod machine;
#[allow(dead_code)]
#[path = "../redis_stats.rs"]
mod redis_stats;
// The BullMQ peer, run on the mesh's redis-server between AURA's passes.
#[allow(dead_code)]
#[path = "../bulk.rs"]
mod bulk;
#[allow(dead_code)]
#[path = "../bullmq.rs"]
mod bullmq;
#[allow(dead_code)]
#[path = "../report.rs"]
mod report;

use aura_proto::{json, v1 as pb};
use aura_testkit::{
    RedisServer,
    mesh::{Mesh, MeshOptions},
};
use pb::gateway_client::GatewayClient;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn wait_completed(gw: &mut GatewayClient<Channel>, target: u64) {
    loop {
        let stats = gw.get_queue_stats(pb::GetQueueStatsRequest { queue: "builtin".into() }).await.unwrap();
        if stats.into_inner().stats.unwrap().completed >= target {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

/// The allocator of the `aura` binary, so the services measured in this process run as
/// they do there.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // `benchmarks/callgrind.sh` runs only the transitions, against a redis-server it runs
    // under callgrind (instruction counts: repeatable on a noisy machine).
    if let Ok(url) = std::env::var("BENCH_TRANSITIONS_ONLY") {
        let n = env_usize("BENCH_TRANSITION_RUNS", 2_000);
        for (name, (us, calls)) in PHASES.iter().zip(transitions(&url, n).await?) {
            println!("{name}\t{us:.1}\t{calls:.1}");
        }
        return Ok(());
    }
    let n = env_usize("BENCH_MESH_RUNS", 20_000);
    let latency_n = env_usize("BENCH_MESH_LATENCY_RUNS", 1_000);
    let redis = RedisServer::start();
    // The limiter stays in the stack, sized far above the load: this measures the mesh.
    let limit = aura_ratelimit::Limit { rps: 10_000_000, burst: 10_000_000 };
    let options = MeshOptions { worker_concurrency: 256, rate_limit: Some(limit), ..Default::default() };
    let mesh = Mesh::start(&redis.url(), options).await;
    let mut gw = mesh.gateway().await;
    register_bench(&mut gw).await?;

    // 1. bulk, with Redis's own account of the work (commandstats and CPU) around it.
    let mut admin = admin_conn(&redis.url()).await?;
    let info = |mut conn: redis::aio::MultiplexedConnection| async move {
        let text: String = redis::cmd("INFO").arg("commandstats").arg("cpu").query_async(&mut conn).await?;
        Ok::<_, redis::RedisError>(redis_stats::parse_info(&text))
    };
    let () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut admin).await?;
    let cpu_start = info(admin.clone()).await?.cpu_s;
    let own_cpu_start = machine::own_cpu_s();
    let mut completed = 0u64;
    let (submitted, after_submit, bulk) = bulk_runs(&mut gw, n, completed, Some(admin.clone())).await?;
    completed += n as u64;
    let submit_work = redis_stats::PhaseStats::new(&after_submit.expect("stats were asked for"), cpu_start);
    let own_cpu = machine::own_cpu_s() - own_cpu_start;
    let redis_work = redis_stats::PhaseStats::new(&info(admin.clone()).await?, cpu_start);

    eprintln!("aura-bench-mesh: bulk pass 1 done");
    // 2. 64 concurrent clients, one run per call.
    let per_client = n / 64;
    let () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut admin).await?;
    let conc_cpu_start = info(admin.clone()).await?.cpu_s;
    let conc_own_start = machine::own_cpu_s();
    let concurrent = concurrent_runs(&mesh, per_client, completed).await?;
    let conc_own = machine::own_cpu_s() - conc_own_start;
    let conc_work = redis_stats::PhaseStats::new(&info(admin.clone()).await?, conc_cpu_start);
    completed += (per_client * 64) as u64;

    eprintln!("aura-bench-mesh: 64-client pass 1 done");
    // 1–2 against BullMQ: pairs of (AURA bulk + 64 clients, BullMQ bulk at C=50) on this
    // redis-server, alternating which goes first; the first AURA pass is the one above.
    let peer = peer_from_env().await;
    let pairs = env_usize("BENCH_MESH_PAIRS", 3).max(1);
    let mut aura_bulk = vec![n as f64 / bulk.as_secs_f64()];
    let mut aura_conc = vec![(per_client * 64) as f64 / concurrent.as_secs_f64()];
    let mut bull_bulk = Vec::new();
    for pair in 0..pairs {
        let aura_first = pair % 2 == 1;
        if pair > 0 && aura_first {
            let (b, c) = aura_passes(&mesh, &mut gw, n, per_client, &mut completed).await?;
            aura_bulk.push(b);
            aura_conc.push(c);
        }
        if let Some((dir, node)) = &peer {
            let params = bulk::BulkParams {
                jobs: n as u64,
                enqueue_batch: 1000,
                concurrency: 50,
                claim_batch: 1,
                partitions: 1,
            };
            let r = bullmq::run(dir, node, redis.port(), &params, &format!("mesh-peer-{pair}"), 2000).await?;
            bull_bulk.push(n as f64 / r.total_s);
            eprintln!("aura-bench-mesh: BullMQ pass {} done", pair + 1);
        }
        if pair > 0 && !aura_first {
            let (b, c) = aura_passes(&mesh, &mut gw, n, per_client, &mut completed).await?;
            aura_bulk.push(b);
            aura_conc.push(c);
        }
    }

    eprintln!("aura-bench-mesh: throughput pairs done");
    // 3. latency, two ways, in `pairs` passes alternating with BullMQ's (one pass of
    // 1,000 sequential runs swings by 2× at p99 on a shared machine: several passes and
    // their median, with ratios within each pair). Like BullMQ's `waitUntilFinished` on a
    // QueueEvents (a listener open the whole time): one `Subscribe(runs.*)` stream,
    // StartRun, wait for that run's run.succeeded. And as a client that watches only its
    // own run: StartRun, then WatchRun (which looks the run up and replays its history).
    let mut listened = Vec::new();
    let mut watched = Vec::new();
    let mut bull_latency = Vec::new();
    for pair in 0..pairs {
        let aura_first = pair % 2 == 0;
        if aura_first {
            listened.push(listened_latency(&mut gw, latency_n).await?);
            watched.push(watched_latency(&mut gw, latency_n).await?);
        }
        if let Some((dir, node)) = &peer {
            let name = format!("mesh-peer-latency-{pair}");
            bull_latency.push(bullmq::latency(dir, node, redis.port(), latency_n, &name).await?);
        }
        if !aura_first {
            listened.push(listened_latency(&mut gw, latency_n).await?);
            watched.push(watched_latency(&mut gw, latency_n).await?);
        }
    }
    eprintln!("aura-bench-mesh: latency pairs done");

    // The comparison table: medians (min–max) over the pairs, ratios within each pair.
    println!("| figure | AURA mesh | BullMQ (same redis-server) | AURA / BullMQ |");
    println!("|---|---:|---:|---:|");
    let ratios = |ours: &[f64]| -> Vec<f64> { ours.iter().zip(&bull_bulk).map(|(a, b)| a / b).collect() };
    let peer_cells = |ours: &[f64]| -> (String, String) {
        if bull_bulk.is_empty() {
            ("not run".into(), "".into())
        } else {
            (report::cell(&bull_bulk, 0), report::ratio_cell(&ratios(ours)))
        }
    };
    let (b, r) = peer_cells(&aura_bulk);
    println!(
        "| throughput ↑: {n} one-step runs via StartRuns (1,000 per call), submit → all succeeded, runs/s; BullMQ: {n} jobs addBulk → completed, C=50 | {} | {b} | {r} |",
        report::cell(&aura_bulk, 0)
    );
    let (b, r) = peer_cells(&aura_conc);
    println!(
        "| throughput ↑: {} runs, one StartRun per call from 64 clients → all succeeded, runs/s; BullMQ: as above | {} | {b} | {r} |",
        per_client * 64,
        report::cell(&aura_conc, 0)
    );
    // Each percentile: its median (min–max) over the passes; ratios within each pair.
    let pcts =
        |passes: &[Vec<f64>], p: f64| -> Vec<f64> { passes.iter().map(|v| percentile(v, p)).collect() };
    let lat = |passes: &[Vec<f64>]| {
        [50.0, 90.0, 99.0].map(|p| report::cell(&pcts(passes, p), 2).replace("**", "")).join(" / ")
    };
    let lat_ratio = |passes: &[Vec<f64>]| {
        if bull_latency.is_empty() {
            return String::new();
        }
        let ratio = |p: f64| -> Vec<f64> {
            pcts(passes, p).iter().zip(pcts(&bull_latency, p)).map(|(a, b)| a / b).collect()
        };
        format!("{} / {} (p50 / p99)", report::ratio_cell(&ratio(50.0)), report::ratio_cell(&ratio(99.0)))
    };
    let b = if bull_latency.is_empty() { "not run".to_string() } else { lat(&bull_latency) };
    println!(
        "| latency ↓, p50 / p90 / p99 ms, {latency_n} sequential runs: StartRun → run.succeeded on a `runs.*` subscription open throughout; BullMQ: add → waitUntilFinished on a QueueEvents (worker C=10) | **{}** | {b} | {} |",
        lat(&listened),
        lat_ratio(&listened)
    );
    println!(
        "| latency ↓, p50 / p90 / p99 ms: StartRun, then WatchRun (run looked up, history replayed) → run.succeeded | **{}** | | {} |",
        lat(&watched),
        lat_ratio(&watched)
    );
    println!();
    println!(
        "Throughput: {pairs} pair(s) of passes (AURA's bulk and 64-client passes, BullMQ's bulk), alternating which goes first; median (min–max) over the pairs, ratios within each pair. Latency: {pairs} pass(es) each, alternating which goes first; per percentile the median (min–max) over the passes, ratios within each pair."
    );
    println!();

    let rate = |count: usize, d: Duration| count as f64 / d.as_secs_f64();
    println!("| figure | AURA mesh |");
    println!("|---|---:|");
    println!("| bulk: submit only (StartRuns), runs/s (first pass) | {:.0} |", rate(n, submitted));
    let per_run = |x: f64| x / n as f64;
    let script = redis_work.script();
    println!(
        "| bulk: Redis commands per run (incl. inside scripts; the polling of this harness included) | {:.1} |",
        per_run(redis_work.total_calls() as f64)
    );
    println!("| bulk: script calls per run | {:.2} |", per_run(script.calls as f64));
    println!(
        "| bulk: Redis CPU µs per run → one-Redis-core ceiling, runs/s | {:.1} → {:.0} |",
        per_run(redis_work.redis_cpu_s * 1e6),
        n as f64 / redis_work.redis_cpu_s.max(1e-9)
    );
    println!(
        "| bulk: Redis cores busy (CPU-seconds / wall-seconds) | {:.2} |",
        redis_work.redis_cpu_s / bulk.as_secs_f64()
    );
    println!(
        "| bulk: CPU µs per run of the AURA process (Gateway, Scheduler, Worker, Events and this client) | {:.1} ({:.2} cores busy) |",
        per_run(own_cpu * 1e6),
        own_cpu / bulk.as_secs_f64()
    );
    {
        let runs = (per_client * 64) as f64;
        let secs = concurrent.as_secs_f64();
        println!(
            "| 64 clients: Redis CPU µs per run (cores busy), script calls per run; AURA process CPU µs per run (cores busy) | {:.1} ({:.2}), {:.2}; {:.1} ({:.2}) |",
            conc_work.redis_cpu_s * 1e6 / runs,
            conc_work.redis_cpu_s / secs,
            conc_work.script().calls as f64 / runs,
            conc_own * 1e6 / runs,
            conc_own / secs
        );
    }
    println!(
        "| bulk: of which submitting (StartRuns): commands, script µs, Redis CPU µs per run | {:.1}, {:.1}, {:.1} |",
        per_run(submit_work.total_calls() as f64),
        per_run(submit_work.script().usec as f64),
        per_run(submit_work.redis_cpu_s * 1e6)
    );
    let mut top: Vec<_> = redis_work.commands.iter().collect();
    top.sort_by_key(|(_, c)| std::cmp::Reverse(c.calls));
    let top: Vec<String> =
        top.iter().take(10).map(|(name, c)| format!("{name} {:.2}", per_run(c.calls as f64))).collect();
    println!("| bulk: most frequent commands per run | {} |", top.join(", "));
    let mut by_time: Vec<_> = redis_work.commands.iter().collect();
    by_time.sort_by_key(|(_, c)| std::cmp::Reverse(c.usec));
    let by_time: Vec<String> =
        by_time.iter().take(8).map(|(name, c)| format!("{name} {:.1}", per_run(c.usec as f64))).collect();
    println!(
        "| bulk: Redis µs per run by command (commandstats; a script's time includes its nested calls) | {} |",
        by_time.join(", ")
    );

    // Two publishers: the bus script in Redis (the path of every run event, which the
    // transition scripts publish), and the Events.Publish RPC (an event from a client).
    let bus = aura_bus::Bus::new(
        aura_common::redis::connect(&redis.url()).await?,
        "aura",
        aura_bus::Retention::default(),
    );
    // `pairs` passes per subscriber count, rotating which of the three goes first; per
    // percentile the median (min–max) over the passes, p99 ratios within each pass.
    for subscribers in [1, 1000] {
        let (mut raw, mut in_redis, mut rpc) = (Vec::new(), Vec::new(), Vec::new());
        for pass in 0..pairs {
            for kind in (0..3).map(|k| (k + pass) % 3) {
                match kind {
                    0 => raw.push(raw_latency(&redis.url(), subscribers, 50, 500).await?),
                    1 => in_redis
                        .push(aura_event_latency(&mesh, Publisher::Bus(&bus), subscribers, 50, 500).await?),
                    _ => rpc.push(aura_event_latency(&mesh, Publisher::Rpc, subscribers, 50, 500).await?),
                }
            }
        }
        let pcts =
            |passes: &[Vec<f64>], p: f64| -> Vec<f64> { passes.iter().map(|v| percentile(v, p)).collect() };
        let cell = |passes: &[Vec<f64>]| {
            format!(
                "{} / {}",
                report::cell(&pcts(passes, 50.0), 2).replace("**", ""),
                report::cell(&pcts(passes, 99.0), 2).replace("**", "")
            )
        };
        let ratio = |passes: &[Vec<f64>]| {
            let r: Vec<f64> = pcts(passes, 99.0).iter().zip(pcts(&raw, 99.0)).map(|(a, b)| a / b).collect();
            report::ratio_cell(&r)
        };
        println!(
            "| events, {subscribers} subscriber(s): publish → delivery p50 / p99 ms on Events.Subscribe streams (gRPC), published in Redis as run events are vs raw Redis PUBLISH → SUBSCRIBE ({pairs} passes) | {} vs {} (p99 ratio {}) |",
            cell(&in_redis),
            cell(&raw),
            ratio(&in_redis)
        );
        println!(
            "| events, {subscribers} subscriber(s): the same, published by an Events.Publish RPC (one more gRPC round trip) | {} (p99 ratio {}) |",
            cell(&rpc),
            ratio(&rpc)
        );
    }
    mesh.stop().await;

    // Where a run's Redis time goes: each transition script on its own.
    let per_transition = transitions(&redis.url(), env_usize("BENCH_TRANSITION_RUNS", 10_000)).await?;
    println!(
        "| run transitions, queue crate straight on Redis ({} one-step runs, 100 per call; then their 5 lifecycle events each copied to `workflows.<name>` in calls of 500, as the Scheduler's emitter does under load): script µs per run, start / claim / complete / copy | {} |",
        env_usize("BENCH_TRANSITION_RUNS", 10_000),
        per_transition.iter().map(|(us, _)| format!("{us:.1}")).collect::<Vec<_>>().join(" / ")
    );
    println!(
        "| run transitions: Redis commands per run (incl. inside scripts), start / claim / complete / copy | {} |",
        per_transition.iter().map(|(_, calls)| format!("{calls:.1}")).collect::<Vec<_>>().join(" / ")
    );

    // 6. the rate limiter: the concurrent scenario with and without it (alternating, fresh
    // Redis state each time), and raw decisions/s next to redis-benchmark's EVALSHA.
    let pairs = env_usize("BENCH_LIMITER_PAIRS", 3);
    let lim_runs = env_usize("BENCH_LIMITER_RUNS", 6_400) / 64;
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for pair in 0..pairs {
        // Alternating which goes first, so a drift of the machine's speed during the pairs
        // does not count against one of them.
        let order = if pair % 2 == 0 { [true, false] } else { [false, true] };
        for limited in order {
            let rate = fresh_mesh_concurrent(&redis.url(), limited, lim_runs).await?;
            if limited { on.push(rate) } else { off.push(rate) }
        }
    }
    let costs: Vec<f64> = on.iter().zip(&off).map(|(a, b)| (1.0 - a / b) * 100.0).collect();
    let (cost, cost_min, cost_max) = report::summary(&costs);
    println!(
        "| limiter: concurrent StartRun → succeeded, runs/s with / without the limiter ({} runs, {pairs} pairs alternating which goes first, median; cost within each pair) | {:.0} / {:.0} (cost {cost:.1}%, {cost_min:.1}–{cost_max:.1}%) |",
        lim_runs * 64,
        report::summary(&on).0,
        report::summary(&off).0,
    );
    let (ours, peer, on_redis) = limiter_decisions(&redis).await?;
    println!(
        "| limiter: decisions/s, RateLimiter::check from 50 tasks vs redis-benchmark -c 50 EVALSHA of the same script (share of ours decided by the script on Redis; the rest spent leased tokens) | {ours:.0} vs {peer:.0} ({:.2}×; {:.1}% on Redis) |",
        ours / peer,
        on_redis * 100.0
    );

    // 7. memory, with each role in its own process.
    match memory(n).await {
        Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
        Err(err) => println!("| memory | not measured: {err} |"),
    }
    Ok(())
}

/// The phases of [`transitions`].
const PHASES: [&str; 4] = ["start", "claim", "complete", "copy"];

/// The Redis cost of each transition of a one-step run, without the services around it:
/// `n` runs created with `start_flows`, claimed and completed 100 at a time through the
/// queue crate, on a key prefix of their own; then the copy of their lifecycle events on
/// `workflows.<name>` (the Scheduler's emitter: five events per run, payloads as it builds
/// them, 500 per publish call as under load). Per phase: (script µs, commands) per run,
/// from commandstats (a script's µs include its nested commands).
async fn transitions(url: &str, n: usize) -> anyhow::Result<Vec<(f64, f64)>> {
    use aura_queue::{Completion, FlowJob, Keyspace, NewFlow, Queue, RetryPolicy};
    let conn = aura_common::redis::connect(url).await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let q = Queue::new(conn, url, Keyspace::new("bench-transitions", 1), shutdown.clone())?;
    let mut admin = admin_conn(url).await?;
    let lanes = vec!["noop".to_string()];
    let flows: Vec<NewFlow> = (0..n)
        .map(|i| NewFlow {
            id: format!("t{i:08}"),
            idempotency_key: String::new(),
            idempotency_ttl: Duration::from_secs(3600),
            meta: r#"{"w":"bench","v":1}"#.into(),
            input: r#"{"i":1}"#.into(),
            delay: Duration::ZERO,
            priority: 0,
            index: "bench".into(),
            timeout: Duration::ZERO,
            concurrency_key: String::new(),
            concurrency_limit: 0,
            jobs: vec![FlowJob {
                id: format!("t{i:08}.a"),
                queue: lanes[0].clone(),
                payload: "a".into(),
                parents: vec![],
                dependents: vec![],
                retry: RetryPolicy::default(),
                lease: Duration::from_secs(60),
                continue_on_failure: false,
                release_delay: Duration::ZERO,
            }],
        })
        .collect();
    let mut out = Vec::new();
    let measure = async |admin: &mut redis::aio::MultiplexedConnection| -> anyhow::Result<(f64, f64)> {
        let text: String = redis::cmd("INFO").arg("commandstats").query_async(admin).await?;
        let stats = redis_stats::PhaseStats::new(&redis_stats::parse_info(&text), 0.0);
        let () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(admin).await?;
        Ok((stats.script().usec as f64 / n as f64, stats.total_calls() as f64 / n as f64))
    };
    let () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut admin).await?;
    callgrind_dump("setup");
    for chunk in flows.chunks(1000) {
        q.start_flows(0, chunk.to_vec()).await?;
    }
    callgrind_dump("start");
    out.push(measure(&mut admin).await?);
    let mut claimed = Vec::with_capacity(n);
    while claimed.len() < n {
        claimed.extend(q.claim(&lanes, 100).await?.jobs);
    }
    callgrind_dump("claim");
    out.push(measure(&mut admin).await?);
    for chunk in claimed.chunks(100) {
        let items =
            chunk.iter().map(|j| Completion { lease: j.lease.clone(), result: "{}".into() }).collect();
        q.complete(items).await?;
    }
    callgrind_dump("complete");
    out.push(measure(&mut admin).await?);
    let bus = aura_bus::Bus::new(q.conn(), "bench-transitions", aura_bus::Retention::default());
    let copies: Vec<(String, String, serde_json::Value)> = claimed
        .iter()
        .flat_map(|job| {
            let (run, step) = (job.flow.as_str(), "a");
            let base = serde_json::json!({"run_id": run, "workflow": "bench"});
            let with = |extra: serde_json::Value| {
                let mut p = base.clone();
                p.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
                p
            };
            [
                ("run.queued", with(serde_json::json!({"workflow_version": 1}))),
                ("run.started", base.clone()),
                (
                    "step.started",
                    with(serde_json::json!({"step_id": step, "attempt": 1, "worker_id": "builtin-1", "kind": "noop", "queue_wait_ms": 3})),
                ),
                ("step.succeeded", with(serde_json::json!({"step_id": step}))),
                ("run.succeeded", base.clone()),
            ]
            .map(|(t, p)| ("workflows.bench".to_string(), t.to_string(), p))
        })
        .collect();
    let () = redis::cmd("CONFIG").arg("RESETSTAT").query_async(&mut admin).await?;
    callgrind_dump("copy-setup");
    for chunk in copies.chunks(500) {
        bus.publish_batch(chunk).await?;
    }
    callgrind_dump("copy");
    out.push(measure(&mut admin).await?);
    shutdown.cancel();
    Ok(out)
}

/// Under `benchmarks/callgrind.sh`: ends a phase of the redis-server's instruction counts
/// (a dump named `label`; the counters restart at zero).
fn callgrind_dump(label: &str) {
    if let Ok(pid) = std::env::var("BENCH_CALLGRIND_PID") {
        let _ = std::process::Command::new("callgrind_control").args(["-d", label, &pid]).output();
    }
}

/// The harness's own connection: no response timeout, since a FLUSHALL of a large data set
/// on a slow machine takes longer than redis-rs's default.
async fn admin_conn(url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    redis::Client::open(url)?.get_multiplexed_async_connection_with_config(&config).await
}

/// `n` runs via StartRuns (1,000 per call), until the queue has `already + n` completed.
/// Returns the submit time, Redis's counters right after submitting (when `admin` is
/// given), and the time until all succeeded.
async fn bulk_runs(
    gw: &mut GatewayClient<Channel>,
    n: usize,
    already: u64,
    admin: Option<redis::aio::MultiplexedConnection>,
) -> anyhow::Result<(Duration, Option<redis_stats::Snapshot>, Duration)> {
    let start = Instant::now();
    // Calls of 1,000 runs, the last one with the rest.
    for first in (0..n).step_by(1000) {
        let runs = (first..n.min(first + 1000))
            .map(|_| pb::StartRunRequest {
                workflow_name: "bench".into(),
                input: json::json_to_struct(&serde_json::json!({"i": 1})),
                ..Default::default()
            })
            .collect();
        let resp = gw.start_runs(pb::StartRunsRequest { runs }).await?.into_inner();
        anyhow::ensure!(resp.results.iter().all(|r| r.code == 0), "a StartRuns item failed");
    }
    let submitted = start.elapsed();
    let after_submit = match admin {
        Some(mut conn) => {
            let text: String =
                redis::cmd("INFO").arg("commandstats").arg("cpu").query_async(&mut conn).await?;
            Some(redis_stats::parse_info(&text))
        }
        None => None,
    };
    wait_completed(gw, already + n as u64).await;
    Ok((submitted, after_submit, start.elapsed()))
}

/// One AURA bulk pass and one 64-client pass; their runs/s. `completed` counts the
/// queue's completions so far (both passes wait for theirs).
async fn aura_passes(
    mesh: &Mesh,
    gw: &mut GatewayClient<Channel>,
    n: usize,
    per_client: usize,
    completed: &mut u64,
) -> anyhow::Result<(f64, f64)> {
    let (_, _, bulk) = bulk_runs(gw, n, *completed, None).await?;
    *completed += n as u64;
    let concurrent = concurrent_runs(mesh, per_client, *completed).await?;
    *completed += (per_client * 64) as u64;
    Ok((n as f64 / bulk.as_secs_f64(), (per_client * 64) as f64 / concurrent.as_secs_f64()))
}

/// The BullMQ peer's directory and Node, unless `BENCH_NO_PEER` is set (the same knobs
/// as `aura-bench`; `benchmarks/run.sh` installs the peer).
async fn peer_from_env() -> Option<(std::path::PathBuf, String)> {
    if matches!(std::env::var("BENCH_NO_PEER").as_deref(), Ok("1" | "true")) {
        return None;
    }
    let dir = std::path::PathBuf::from(
        std::env::var("BENCH_PEER_DIR").unwrap_or_else(|_| "benchmarks/peers/bullmq".into()),
    );
    let node = std::env::var("BENCH_NODE").unwrap_or_else(|_| "node".into());
    match bullmq::versions(&dir, &node).await {
        Ok(_) => Some((dir, node)),
        Err(err) => {
            eprintln!("aura-bench-mesh: BullMQ peer not available ({err:#}); its columns stay empty");
            None
        }
    }
}

/// StartRun → run.succeeded seen on a `Subscribe(runs.*)` stream open throughout, per run
/// (ms, sorted), after 50 unmeasured runs.
async fn listened_latency(gw: &mut GatewayClient<Channel>, n: usize) -> anyhow::Result<Vec<f64>> {
    let mut listener = gw
        .subscribe(pb::SubscribeRequest { patterns: vec!["runs.*".into()], ..Default::default() })
        .await?
        .into_inner();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + 50 {
        let t0 = Instant::now();
        let run_id = gw.start_run(bench_run()).await?.into_inner().run.unwrap().run_id;
        let topic = format!("runs.{run_id}");
        while let Some(event) = listener.next().await {
            let event = event?;
            if event.topic == topic && event.r#type == "run.succeeded" {
                break;
            }
        }
        if i >= 50 {
            samples.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples)
}

/// StartRun, then WatchRun → run.succeeded, per run (ms, sorted), after 50 unmeasured runs.
async fn watched_latency(gw: &mut GatewayClient<Channel>, n: usize) -> anyhow::Result<Vec<f64>> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n + 50 {
        let t0 = Instant::now();
        let run_id = gw.start_run(bench_run()).await?.into_inner().run.unwrap().run_id;
        let mut stream = gw.watch_run(pb::WatchRunRequest { run_id }).await?.into_inner();
        while let Some(event) = stream.next().await {
            if event?.r#type == "run.succeeded" {
                break;
            }
        }
        if i >= 50 {
            samples.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples)
}

/// One run of the one-step `bench` workflow.
fn bench_run() -> pb::StartRunRequest {
    pb::StartRunRequest {
        workflow_name: "bench".into(),
        input: json::json_to_struct(&serde_json::json!({"i": 1})),
        ..Default::default()
    }
}

async fn register_bench(gw: &mut GatewayClient<Channel>) -> anyhow::Result<()> {
    let wf = pb::WorkflowSpec {
        name: "bench".into(),
        steps: vec![pb::StepSpec { id: "s".into(), kind: "noop".into(), ..Default::default() }],
        ..Default::default()
    };
    gw.register_workflow(pb::RegisterWorkflowRequest { spec: Some(wf) }).await?;
    Ok(())
}

/// 64 clients, `per_client` StartRun calls each; runs/s until the queue's completed count
/// reaches `already + 64 * per_client`.
async fn concurrent_runs(mesh: &Mesh, per_client: usize, already: u64) -> anyhow::Result<Duration> {
    let mut gw = mesh.gateway().await;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let mut client = mesh.gateway().await;
        tasks.push(tokio::spawn(async move {
            for _ in 0..per_client {
                let req = pb::StartRunRequest {
                    workflow_name: "bench".into(),
                    input: json::json_to_struct(&serde_json::json!({"i": 1})),
                    ..Default::default()
                };
                client.start_run(req).await.expect("StartRun");
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    wait_completed(&mut gw, already + (per_client * 64) as u64).await;
    Ok(start.elapsed())
}

/// The concurrent scenario on a new mesh over a flushed Redis, limiter on or off.
async fn fresh_mesh_concurrent(redis_url: &str, limited: bool, per_client: usize) -> anyhow::Result<f64> {
    let mut admin = admin_conn(redis_url).await?;
    let () = redis::cmd("FLUSHALL").query_async(&mut admin).await?;
    let limit = aura_ratelimit::Limit { rps: 10_000_000, burst: 10_000_000 };
    let options =
        MeshOptions { worker_concurrency: 256, rate_limit: limited.then_some(limit), ..Default::default() };
    let mesh = Mesh::start(redis_url, options).await;
    register_bench(&mut mesh.gateway().await).await?;
    let took = concurrent_runs(&mesh, per_client, 0).await?;
    mesh.stop().await;
    Ok((per_client * 64) as f64 / took.as_secs_f64())
}

/// Decisions/s of `RateLimiter::check` (50 tasks, one bucket, always allowed) and of
/// redis-benchmark sending EVALSHA of the same script with 50 connections.
/// Also returns the share of the decisions made by the script on Redis (the rest spent
/// tokens the limiter had leased ahead).
async fn limiter_decisions(redis: &RedisServer) -> anyhow::Result<(f64, f64, f64)> {
    let conn = aura_common::redis::connect(&redis.url()).await?;
    let limit = aura_ratelimit::Limit { rps: 1_000_000_000, burst: 1_000_000_000 };
    let limiter = std::sync::Arc::new(aura_ratelimit::RateLimiter::new(
        conn,
        "bench",
        limit,
        aura_ratelimit::FailMode::Closed,
    ));
    let seconds = 3.0;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let limiter = limiter.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let d = limiter.check("bench", "default", 1).await;
                    assert!(matches!(d, aura_ratelimit::Decision::Allow { .. }), "{d:?}");
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await?;
    }
    let ours = total as f64 / seconds;
    let (on_redis, leased) = limiter.decision_counts();
    let on_redis = on_redis as f64 / (on_redis + leased).max(1) as f64;

    let mut admin = admin_conn(&redis.url()).await?;
    let sha: String =
        redis::cmd("SCRIPT").arg("LOAD").arg(aura_ratelimit::GCRA_SOURCE).query_async(&mut admin).await?;
    let out = std::process::Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &redis.port().to_string(), "-c", "50", "-n", "300000", "-q"])
        .args(["EVALSHA", &sha, "1", "bench:{rl}:b:peer:default", "0.001", "1000000000", "0", "1"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let peer = text
        .rsplit("requests per second")
        .nth(1)
        .and_then(|before| before.rsplit([' ', ':']).find(|w| !w.is_empty()))
        .and_then(|w| w.parse::<f64>().ok())
        .ok_or_else(|| anyhow::anyhow!("cannot read redis-benchmark's output: {text}"))?;
    Ok((ours, peer, on_redis))
}

/// The `aura` release binary next to this one (benchmarks/run.sh builds both), or $AURA_BIN.
fn aura_bin() -> anyhow::Result<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("AURA_BIN") {
        return Ok(p.into());
    }
    let bin = std::env::current_exe()?.with_file_name("aura");
    anyhow::ensure!(bin.exists(), "{} is missing (cargo build --release -p aura-cli)", bin.display());
    Ok(bin)
}

/// `VmRSS` and `VmHWM` (peak) of a process, MiB.
fn rss_mib(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Idle and peak RSS of each role as its own `aura serve` process (release build) on a
/// fresh redis-server, the peak over `n` bulk runs through them; plus that run's runs/s.
async fn memory(n: usize) -> anyhow::Result<Vec<String>> {
    let bin = aura_bin()?;
    let redis = RedisServer::start();
    let port = |_| aura_testkit::free_port();
    let addrs: Vec<std::net::SocketAddr> =
        (0..4).map(port).map(|p| format!("127.0.0.1:{p}").parse().unwrap()).collect();
    let (gw_addr, sched_addr, worker_addr, events_addr) = (addrs[0], addrs[1], addrs[2], addrs[3]);
    let spawn = |role: &str, addr: std::net::SocketAddr, extra: &[String]| {
        std::process::Command::new(&bin)
            .args(["serve", role, "--redis-url", &redis.url(), "--listen", &addr.to_string()])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(extra)
            .env("AURA_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map(Killed)
    };
    let scheduler = spawn("scheduler", sched_addr, &[])?;
    let events = spawn("events", events_addr, &[])?;
    let worker = spawn(
        "worker",
        worker_addr,
        &["--scheduler-url".into(), format!("http://{sched_addr}"), "--concurrency".into(), "256".into()],
    )?;
    let gateway = spawn(
        "gateway",
        gw_addr,
        &[
            "--scheduler-url".into(),
            format!("http://{sched_addr}"),
            "--events-url".into(),
            format!("http://{events_addr}"),
            "--insecure-no-auth".into(),
            "--rate-limit-rps".into(),
            "10000000".into(),
            "--rate-limit-burst".into(),
            "10000000".into(),
        ],
    )?;
    for addr in addrs.iter().copied() {
        aura_testkit::wait_until("every role serves", Duration::from_secs(30), || async move {
            Mesh::health(addr, "").await == Some(1)
        })
        .await;
    }
    let procs = [("gateway", &gateway), ("scheduler", &scheduler), ("worker", &worker), ("events", &events)];
    // Idle: serving and connected, after 2 s with nothing to do (the figure's definition,
    // not a wait for something to happen).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle: Vec<f64> = procs.iter().map(|(_, p)| rss_mib(p.0.id()).0).collect();

    let mut gw = GatewayClient::new(Mesh::channel(gw_addr).await);
    register_bench(&mut gw).await?;
    let start = Instant::now();
    for _ in 0..n / 1000 {
        let runs = (0..1000)
            .map(|i| pb::StartRunRequest {
                workflow_name: "bench".into(),
                input: json::json_to_struct(&serde_json::json!({"i": i})),
                ..Default::default()
            })
            .collect();
        gw.start_runs(pb::StartRunsRequest { runs }).await?;
    }
    wait_completed(&mut gw, (n / 1000 * 1000) as u64).await;
    let took = start.elapsed();
    let peak: Vec<f64> = procs.iter().map(|(_, p)| rss_mib(p.0.id()).1).collect();
    let names: Vec<&str> = procs.iter().map(|(name, _)| *name).collect();
    let fmt = |v: &[f64]| v.iter().map(|x| format!("{x:.1}")).collect::<Vec<_>>().join(" / ");
    Ok(vec![
        format!(
            "| memory: idle RSS MiB, {} (release, one process each) | {} |",
            names.join(" / "),
            fmt(&idle)
        ),
        format!("| memory: peak RSS MiB over {n} bulk runs, same order | {} |", fmt(&peak)),
        format!(
            "| bulk with each role in its own process: {n} runs via StartRuns → all succeeded, runs/s | {:.0} |",
            n as f64 / took.as_secs_f64()
        ),
    ])
}

/// Who publishes in [`aura_event_latency`].
#[derive(Clone, Copy)]
enum Publisher<'a> {
    /// The bus's publish script, straight on Redis: how run events are published.
    Bus(&'a aura_bus::Bus),
    /// `Events.Publish`.
    Rpc,
}

/// Publish → delivery latencies (ms) to subscribers of AURA's Events service.
async fn aura_event_latency(
    mesh: &Mesh,
    publisher: Publisher<'_>,
    subscribers: usize,
    warmup: usize,
    messages: usize,
) -> anyhow::Result<Vec<f64>> {
    let topic = format!("bench.lat{subscribers}.{}", matches!(publisher, Publisher::Rpc) as u8);
    let base = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<f64>();
    let mut streams = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let mut events = mesh.events().await;
        let req = pb::SubscribeRequest { patterns: vec![topic.clone()], ..Default::default() };
        streams.push(events.subscribe(req).await?.into_inner());
    }
    for mut stream in streams {
        let tx = tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(event)) = stream.next().await {
                let sent =
                    event.payload.as_ref().and_then(|p| p.fields.get("t")).and_then(|v| match v.kind {
                        Some(prost_types::value::Kind::NumberValue(n)) => Some(n),
                        _ => None,
                    });
                let now = base.elapsed().as_nanos() as f64;
                if tx.send((now - sent.unwrap_or(now)) / 1e6).is_err() {
                    return;
                }
            }
        });
    }
    let mut rpc = mesh.events().await;
    let mut publish = async |payload: serde_json::Value, event_type: &str| -> anyhow::Result<()> {
        match publisher {
            Publisher::Bus(bus) => {
                bus.publish(&topic, event_type, &payload).await?;
            }
            Publisher::Rpc => {
                let payload = json::json_to_struct(&payload);
                rpc.publish(pb::PublishRequest { topic: topic.clone(), r#type: event_type.into(), payload })
                    .await?;
            }
        }
        Ok(())
    };
    // Subscribe answers once Redis confirmed the pattern; a probe checks that every
    // subscriber's stream is through to this process before anything is timed.
    loop {
        publish(serde_json::json!({"t": base.elapsed().as_nanos() as f64}), "probe").await?;
        let mut got = 0;
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await {
            got += 1;
            if got == subscribers {
                break;
            }
        }
        if got == subscribers {
            break;
        }
    }
    let mut samples = Vec::with_capacity(messages * subscribers);
    for i in 0..warmup + messages {
        publish(serde_json::json!({"t": base.elapsed().as_nanos() as f64}), "m").await?;
        for _ in 0..subscribers {
            let ms = rx.recv().await.ok_or_else(|| anyhow::anyhow!("subscriber ended"))?;
            if i >= warmup {
                samples.push(ms);
            }
        }
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples)
}

/// Publish → delivery latencies (ms) of raw Redis pub/sub, one connection per subscriber.
async fn raw_latency(
    url: &str,
    subscribers: usize,
    warmup: usize,
    messages: usize,
) -> anyhow::Result<Vec<f64>> {
    let client = redis::Client::open(url)?;
    let channel = format!("bench:raw:{subscribers}");
    let base = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<f64>();
    for _ in 0..subscribers {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(&channel).await?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut stream = pubsub.into_on_message();
            while let Some(msg) = stream.next().await {
                let sent: f64 = msg.get_payload::<String>().ok().and_then(|p| p.parse().ok()).unwrap_or(0.0);
                let now = base.elapsed().as_nanos() as f64;
                if tx.send((now - sent) / 1e6).is_err() {
                    return;
                }
            }
        });
    }
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut samples = Vec::with_capacity(messages * subscribers);
    for i in 0..warmup + messages {
        let sent = base.elapsed().as_nanos() as f64;
        let _: i64 = redis::cmd("PUBLISH").arg(&channel).arg(sent.to_string()).query_async(&mut conn).await?;
        for _ in 0..subscribers {
            let ms = rx.recv().await.ok_or_else(|| anyhow::anyhow!("subscriber ended"))?;
            if i >= warmup {
                samples.push(ms);
            }
        }
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples)
}

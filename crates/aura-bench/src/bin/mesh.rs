//! The whole mesh (client → Gateway → Scheduler → Worker → Events) in one process, on a
//! private redis-server, with a one-step `noop` workflow:
//!
//! 1. bulk: N runs submitted with `StartRuns` (batches of 1,000), until all succeeded;
//! 2. concurrent: N runs, one per `StartRun`, from 64 concurrent clients, until all succeeded;
//! 3. latency: sequential single runs, `StartRun` → the run's `run.succeeded` event on a
//!    `WatchRun` stream, p50/p90/p99;
//! 5. event delivery: `Events.Publish` → each of 1 and 1,000 `Events.Subscribe` streams,
//!    next to raw Redis PUBLISH → SUBSCRIBE on the same redis-server, one message at a time
//!    (the next is published once every subscriber has the previous: unloaded latency).
//!
//! Prints a markdown section; `benchmarks/run.sh` appends it to RESULTS.md with ratios
//! against the BullMQ figures of the same invocation.

use std::time::{Duration, Instant};

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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = env_usize("BENCH_MESH_RUNS", 20_000);
    let latency_n = env_usize("BENCH_MESH_LATENCY_RUNS", 1_000);
    let redis = RedisServer::start();
    // The limiter stays in the stack, sized far above the load: this measures the mesh.
    let limit = aura_ratelimit::Limit { rps: 10_000_000, burst: 10_000_000 };
    let options = MeshOptions { worker_concurrency: 256, rate_limit: Some(limit), ..Default::default() };
    let mesh = Mesh::start(&redis.url(), options).await;
    let mut gw = mesh.gateway().await;
    let wf = pb::WorkflowSpec {
        name: "bench".into(),
        steps: vec![pb::StepSpec { id: "s".into(), kind: "noop".into(), ..Default::default() }],
        ..Default::default()
    };
    gw.register_workflow(pb::RegisterWorkflowRequest { spec: Some(wf) }).await?;
    let input = || json::json_to_struct(&serde_json::json!({"i": 1}));

    // 1. bulk.
    let start = Instant::now();
    for _ in 0..n / 1000 {
        let runs = (0..1000)
            .map(|_| pb::StartRunRequest {
                workflow_name: "bench".into(),
                input: input(),
                ..Default::default()
            })
            .collect();
        let resp = gw.start_runs(pb::StartRunsRequest { runs }).await?.into_inner();
        anyhow::ensure!(resp.results.iter().all(|r| r.code == 0), "a StartRuns item failed");
    }
    let submitted = start.elapsed();
    wait_completed(&mut gw, n as u64).await;
    let bulk = start.elapsed();

    // 2. 64 concurrent clients, one run per call.
    let start = Instant::now();
    let per_client = n / 64;
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
    wait_completed(&mut gw, (n + per_client * 64) as u64).await;
    let concurrent = start.elapsed();

    // 3. latency.
    let mut samples = Vec::with_capacity(latency_n);
    for i in 0..latency_n + 50 {
        let t0 = Instant::now();
        let req = pb::StartRunRequest { workflow_name: "bench".into(), input: input(), ..Default::default() };
        let run_id = gw.start_run(req).await?.into_inner().run.unwrap().run_id;
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

    let rate = |count: usize, d: Duration| count as f64 / d.as_secs_f64();
    println!("| figure | AURA mesh |");
    println!("|---|---:|");
    println!(
        "| bulk: {n} runs via StartRuns (1,000 per call), submit → all succeeded, runs/s | {:.0} |",
        rate(n, bulk)
    );
    println!("| bulk: submit only (StartRuns), runs/s | {:.0} |", rate(n, submitted));
    println!(
        "| concurrent: {} runs, one StartRun per call from 64 clients, → all succeeded, runs/s | {:.0} |",
        per_client * 64,
        rate(per_client * 64, concurrent)
    );
    println!(
        "| latency: StartRun → run.succeeded on WatchRun, p50 / p90 / p99 ms ({latency_n} sequential runs) | {:.2} / {:.2} / {:.2} |",
        percentile(&samples, 50.0),
        percentile(&samples, 90.0),
        percentile(&samples, 99.0)
    );

    for subscribers in [1, 1000] {
        let aura = aura_event_latency(&mesh, subscribers, 50, 500).await?;
        let raw = raw_latency(&redis.url(), subscribers, 50, 500).await?;
        println!(
            "| events, {subscribers} subscriber(s): publish → delivery p50 / p99 ms, AURA Events (gRPC) vs raw Redis pub/sub | {:.2} / {:.2} vs {:.2} / {:.2} (p99 ratio {:.1}×) |",
            percentile(&aura, 50.0),
            percentile(&aura, 99.0),
            percentile(&raw, 50.0),
            percentile(&raw, 99.0),
            percentile(&aura, 99.0) / percentile(&raw, 99.0)
        );
    }
    mesh.stop().await;
    Ok(())
}

/// Publish → delivery latencies (ms) through AURA's Events service.
async fn aura_event_latency(
    mesh: &Mesh,
    subscribers: usize,
    warmup: usize,
    messages: usize,
) -> anyhow::Result<Vec<f64>> {
    let topic = format!("bench.lat{subscribers}");
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
    let mut publisher = mesh.events().await;
    // Subscriptions are established asynchronously: probe until one arrives everywhere.
    loop {
        let payload = json::json_to_struct(&serde_json::json!({"t": base.elapsed().as_nanos() as f64}));
        publisher
            .publish(pb::PublishRequest { topic: topic.clone(), r#type: "probe".into(), payload })
            .await?;
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
        let payload = json::json_to_struct(&serde_json::json!({"t": base.elapsed().as_nanos() as f64}));
        publisher.publish(pb::PublishRequest { topic: topic.clone(), r#type: "m".into(), payload }).await?;
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

//! Real `aura serve worker` processes against an in-process scheduler, gateway and events:
//! a worker killed with SIGKILL mid-step (its lease expires, another worker finishes the
//! step), SIGTERM with steps in flight (they finish, or are handed back past the drain
//! timeout, and none is lost), and the memory of an idle worker and of one with 1,000
//! `http` steps in flight.
//!
//! The binary is `target/debug/aura` (or `$AURA_BIN`); `scripts/test.sh` builds it before
//! `cargo test`.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use aura_e2e::{aura_bin, input, spec, wait_for_run};
use aura_proto::v1 as pb;
use aura_testkit::{
    RedisServer,
    mesh::{Mesh, MeshOptions},
    wait_until,
};
use pb::gateway_client::GatewayClient;
use serde_json::{Value as Json, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tonic::transport::Channel;

// ---------------------------------------------------------------------------------------
// The `aura` binary as a worker process.

struct WorkerProcess {
    child: Child,
    addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl WorkerProcess {
    /// Starts `aura serve worker` polling `scheduler`, and waits until it listens.
    fn spawn(scheduler: SocketAddr, redis_url: &str, extra: &[&str]) -> WorkerProcess {
        let mut child = Command::new(aura_bin())
            .args(["serve", "worker", "--scheduler-url", &format!("http://{scheduler}")])
            .args(["--redis-url", redis_url, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(extra)
            .env("AURA_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the aura binary");
        // Logs are JSON lines on stderr (not a terminal); the first one we need gives the
        // bound address. The reader keeps draining so the pipe never fills up.
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr_tx, addr_rx) = mpsc::channel();
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(entry) = serde_json::from_str::<Json>(&line)
                    && entry["fields"]["message"] == "worker listening"
                    && let Some(addr) = entry["fields"]["addr"].as_str().and_then(|a| a.parse().ok())
                {
                    let _: Result<(), _> = addr_tx.send(addr);
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr: SocketAddr = match addr_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("the worker did not start; its log:\n{}", logs.lock().unwrap().join("\n"));
            }
        };
        WorkerProcess { child, addr, logs }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([format!("-{signal}"), self.pid().to_string()]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -{signal} {}", self.pid());
    }

    async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait for the worker") {
                return status;
            }
            assert!(start.elapsed() < timeout, "worker {} still running after {timeout:?}", self.pid());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn status(&self) -> pb::GetStatusResponse {
        let mut client = pb::worker_client::WorkerClient::new(Mesh::channel(self.addr).await);
        client.get_status(pb::GetStatusRequest {}).await.expect("worker GetStatus").into_inner()
    }

    /// Resident set size now (`VmRSS`) and at its peak (`VmHWM`), in KiB.
    fn memory_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("/proc status");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc/<pid>/status"))
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    fn log(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------
// A loopback HTTP server whose answers can be held back.

#[derive(Clone)]
enum Hold {
    /// Answer at once.
    No,
    /// Answer after a pause.
    For(Duration),
    /// Answer once the gate is open.
    Gate(watch::Receiver<bool>),
    /// Never answer; wait for the client to hang up.
    Forever,
}

#[derive(Default)]
struct Counters {
    requests: AtomicUsize,
    active: AtomicUsize,
    hung_up: AtomicUsize,
}

struct Loopback {
    addr: SocketAddr,
    counters: Arc<Counters>,
}

impl Loopback {
    /// Answers request `n` (from 1) with 200 `{"n": n}` after `hold(n)`.
    async fn start(hold: impl Fn(usize) -> Hold + Send + Sync + 'static) -> Loopback {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback server");
        let addr = listener.local_addr().expect("loopback address");
        let counters = Arc::new(Counters::default());
        let hold = Arc::new(hold);
        let shared = counters.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (hold, counters) = (hold.clone(), shared.clone());
                tokio::spawn(async move { serve(stream, hold.as_ref(), &counters).await });
            }
        });
        Loopback { addr, counters }
    }

    fn url(&self) -> String {
        format!("http://{}/work", self.addr)
    }

    fn requests(&self) -> usize {
        self.counters.requests.load(Ordering::SeqCst)
    }

    fn active(&self) -> usize {
        self.counters.active.load(Ordering::SeqCst)
    }

    fn hung_up(&self) -> usize {
        self.counters.hung_up.load(Ordering::SeqCst)
    }
}

async fn serve(mut stream: TcpStream, hold: &(dyn Fn(usize) -> Hold + Send + Sync), counters: &Counters) {
    // Read the request head (the steps here send no body).
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let n = counters.requests.fetch_add(1, Ordering::SeqCst) + 1;
    counters.active.fetch_add(1, Ordering::SeqCst);
    let answered = match hold(n) {
        Hold::No => true,
        Hold::For(pause) => tokio::select! {
            _ = tokio::time::sleep(pause) => true,
            _ = hang_up(&mut stream) => false,
        },
        Hold::Gate(mut gate) => tokio::select! {
            r = gate.wait_for(|open| *open) => r.is_ok(),
            _ = hang_up(&mut stream) => false,
        },
        Hold::Forever => {
            hang_up(&mut stream).await;
            false
        }
    };
    if answered {
        let body = json!({"n": n}).to_string();
        let response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    } else {
        counters.hung_up.fetch_add(1, Ordering::SeqCst);
    }
    counters.active.fetch_sub(1, Ordering::SeqCst);
}

async fn hang_up(stream: &mut TcpStream) {
    let mut buf = [0u8; 256];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Helpers.

fn ms(n: u64) -> prost_types::Duration {
    prost_types::Duration { seconds: (n / 1000) as i64, nanos: ((n % 1000) * 1_000_000) as i32 }
}

/// A workflow with one `http` step `call` to `url`: attempts of at most `timeout`, up to
/// three attempts 50 ms apart.
fn http_workflow(name: &str, url: &str, timeout: Duration) -> pb::WorkflowSpec {
    let mut wf = spec(json!({"name": name, "steps": [
        {"id": "call", "kind": "http", "config": {"url": url, "timeout_ms": timeout.as_millis() as u64}}
    ]}));
    wf.steps[0].timeout = Some(ms(timeout.as_millis() as u64));
    wf.steps[0].retry = Some(pb::RetryPolicy {
        max_attempts: 3,
        initial_backoff: Some(ms(50)),
        max_backoff: Some(ms(200)),
        multiplier: 2.0,
        jitter: 0.0,
    });
    wf
}

async fn register(gw: &mut GatewayClient<Channel>, wf: pb::WorkflowSpec) {
    gw.register_workflow(pb::RegisterWorkflowRequest { spec: Some(wf) }).await.expect("register workflow");
}

async fn start_runs(gw: &mut GatewayClient<Channel>, workflow: &str, count: usize) -> Vec<String> {
    let runs = (0..count)
        .map(|i| pb::StartRunRequest {
            workflow_name: workflow.into(),
            input: input(json!({"i": i})),
            ..Default::default()
        })
        .collect();
    let results =
        gw.start_runs(pb::StartRunsRequest { runs }).await.expect("start runs").into_inner().results;
    results
        .into_iter()
        .map(|r| {
            assert_eq!(r.code, 0, "{}", r.message);
            r.run_id
        })
        .collect()
}

/// Waits for every run; asserts each succeeded with its step attempted `attempts` times.
async fn assert_all_succeeded(gw: &mut GatewayClient<Channel>, run_ids: &[String], attempts: u32) {
    for run_id in run_ids {
        let run = wait_for_run(gw, run_id, Duration::from_secs(120)).await;
        assert_eq!(run.state, pb::RunState::Succeeded as i32, "{run:#?}");
        assert_eq!(run.steps[0].attempts, attempts, "{run:#?}");
    }
}

struct Env {
    redis: RedisServer,
    mesh: Mesh,
    gw: GatewayClient<Channel>,
}

/// Scheduler, events and gateway in-process; no worker.
async fn start_env() -> Env {
    let redis = RedisServer::start();
    let mesh = Mesh::start(&redis.url(), MeshOptions { worker_concurrency: 0, ..Default::default() }).await;
    let gw = mesh.gateway().await;
    Env { redis, mesh, gw }
}

// ---------------------------------------------------------------------------------------
// Tests.

#[tokio::test]
async fn sigkill_mid_step_the_lease_expires_and_another_worker_finishes_the_step() {
    let mut env = start_env().await;
    let server = Loopback::start(|n| if n == 1 { Hold::Forever } else { Hold::No }).await;
    register(&mut env.gw, http_workflow("killed", &server.url(), Duration::from_secs(5))).await;
    let workers = [
        WorkerProcess::spawn(env.mesh.scheduler, &env.redis.url(), &["--concurrency", "4"]),
        WorkerProcess::spawn(env.mesh.scheduler, &env.redis.url(), &["--concurrency", "4"]),
    ];
    let run_id = start_runs(&mut env.gw, "killed", 1).await.remove(0);

    // Find the worker running the step, and kill it.
    let start = Instant::now();
    let victim = loop {
        let mut busy = None;
        for (i, w) in workers.iter().enumerate() {
            if w.status().await.in_flight == 1 {
                busy = Some(i);
            }
        }
        if let Some(i) = busy
            && server.active() == 1
        {
            break i;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no worker picked the step up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let [mut a, mut b] = workers;
    let (killed, survivor) = if victim == 0 { (&mut a, &mut b) } else { (&mut b, &mut a) };
    killed.signal("KILL");
    let status = killed.wait_exit(Duration::from_secs(10)).await;
    assert!(!status.success(), "SIGKILL ends the process: {status:?}");

    let run = wait_for_run(&mut env.gw, &run_id, Duration::from_secs(60)).await;
    assert_eq!(run.state, pb::RunState::Succeeded as i32, "{run:#?}\nsurvivor log:\n{}", survivor.log());
    assert_eq!(run.steps[0].attempts, 2, "the killed attempt counts: {run:#?}");
    assert_eq!(server.requests(), 2);
    assert_eq!(survivor.status().await.succeeded, 1, "the other worker finished it");

    // The first attempt ended because its lease expired, not because of a step timeout.
    let mut events = env
        .gw
        .watch_run(pb::WatchRunRequest { run_id: run_id.clone() })
        .await
        .expect("watch run")
        .into_inner();
    let mut retry_errors = Vec::new();
    while let Some(event) = tokio_stream::StreamExt::next(&mut events).await {
        let event = event.expect("event");
        if event.r#type == "step.retrying" {
            let payload = event.payload.as_ref().map(aura_proto::json::struct_to_map).unwrap_or_default();
            retry_errors.push(payload.get("error").cloned().unwrap_or(Json::Null));
        }
    }
    assert_eq!(retry_errors.len(), 1, "{retry_errors:?}");
    assert!(retry_errors[0].as_str().is_some_and(|e| e.contains("lease expired")), "{retry_errors:?}");
    env.mesh.stop().await;
}

#[tokio::test]
async fn sigterm_lets_in_flight_steps_finish_and_hands_back_what_a_late_poll_brings() {
    let mut env = start_env().await;
    let server = Loopback::start(|_| Hold::For(Duration::from_millis(1500))).await;
    register(&mut env.gw, http_workflow("drained", &server.url(), Duration::from_secs(60))).await;
    let mut a = WorkerProcess::spawn(env.mesh.scheduler, &env.redis.url(), &["--concurrency", "8"]);
    let mut run_ids = start_runs(&mut env.gw, "drained", 4).await;
    wait_until("four steps running on the first worker", Duration::from_secs(30), || async {
        a.status().await.in_flight == 4 && server.active() == 4
    })
    .await;

    // The first worker still has free slots, so a poll is waiting at the scheduler: what it
    // brings after SIGTERM must be handed back, not lost until its lease expires.
    a.signal("TERM");
    run_ids.extend(start_runs(&mut env.gw, "drained", 8).await);
    let b = WorkerProcess::spawn(env.mesh.scheduler, &env.redis.url(), &["--concurrency", "8"]);
    let status = a.wait_exit(Duration::from_secs(60)).await;
    assert!(status.success(), "a drained worker exits cleanly: {status:?}\n{}", a.log());
    assert!(a.log().contains("worker stopped"), "{}", a.log());

    // Every step ran exactly once: none lost, none run twice, no attempt wasted.
    assert_all_succeeded(&mut env.gw, &run_ids, 1).await;
    assert_eq!(server.requests(), 12);
    assert_eq!(server.hung_up(), 0, "no step was cut short");
    assert!(b.status().await.succeeded >= 4, "the first worker had room for 8: the second ran the rest");
    env.mesh.stop().await;
}

#[tokio::test]
async fn sigterm_past_the_drain_timeout_hands_steps_back_and_they_retry_at_once_elsewhere() {
    let mut env = start_env().await;
    let server = Loopback::start(|n| if n <= 3 { Hold::Forever } else { Hold::No }).await;
    register(&mut env.gw, http_workflow("handed-back", &server.url(), Duration::from_secs(60))).await;
    let mut a = WorkerProcess::spawn(
        env.mesh.scheduler,
        &env.redis.url(),
        &["--concurrency", "3", "--drain-timeout-secs", "1"],
    );
    let run_ids = start_runs(&mut env.gw, "handed-back", 3).await;
    wait_until("three steps running on the first worker", Duration::from_secs(30), || async {
        a.status().await.in_flight == 3 && server.active() == 3
    })
    .await;

    a.signal("TERM");
    let status = a.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "{status:?}\n{}", a.log());
    assert!(a.log().contains("handing unfinished tasks back"), "{}", a.log());
    wait_until("the unfinished requests were dropped", Duration::from_secs(10), || async {
        server.hung_up() == 3
    })
    .await;

    // Handed back (not expired): ready at once, and the attempt does not count.
    let _b = WorkerProcess::spawn(env.mesh.scheduler, &env.redis.url(), &["--concurrency", "3"]);
    assert_all_succeeded(&mut env.gw, &run_ids, 1).await;
    assert_eq!(server.requests(), 6);
    env.mesh.stop().await;
}

#[tokio::test]
async fn worker_memory_idle_and_with_1000_http_steps_in_flight() {
    const KIB_PER_MIB: u64 = 1024;
    let mut env = start_env().await;
    let (open, gate) = watch::channel(false);
    let server = Loopback::start(move |_| Hold::Gate(gate.clone())).await;
    register(&mut env.gw, http_workflow("memory", &server.url(), Duration::from_secs(600))).await;
    let mut worker = WorkerProcess::spawn(env.mesh.scheduler, &env.redis.url(), &["--concurrency", "1000"]);
    assert_eq!(worker.status().await.capacity, 1000);
    let (idle_rss, _) = worker.memory_kib();

    let run_ids = start_runs(&mut env.gw, "memory", 1000).await;
    wait_until("1,000 http steps in flight", Duration::from_secs(180), || async {
        server.active() == 1000 && worker.status().await.in_flight == 1000
    })
    .await;
    let (busy_rss, busy_peak) = worker.memory_kib();
    println!(
        "worker RSS: idle {:.1} MiB; 1,000 http steps in flight {:.1} MiB (peak {:.1} MiB)",
        idle_rss as f64 / 1024.0,
        busy_rss as f64 / 1024.0,
        busy_peak as f64 / 1024.0
    );

    open.send(true).expect("open the gate");
    assert_all_succeeded(&mut env.gw, &run_ids, 1).await;
    assert_eq!(server.requests(), 1000);
    worker.signal("TERM");
    assert!(worker.wait_exit(Duration::from_secs(30)).await.success());

    assert!(idle_rss < 64 * KIB_PER_MIB, "an idle worker uses {idle_rss} KiB (limit 64 MiB)");
    assert!(busy_peak < 256 * KIB_PER_MIB, "1,000 in-flight steps peaked at {busy_peak} KiB (limit 256 MiB)");
    env.mesh.stop().await;
}

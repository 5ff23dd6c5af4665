//! The built-in step kinds end to end, through the Gateway, on the in-process mesh:
//! `http` against a loopback server (200; 500 then 200; 429 with Retry-After; 404; timeout;
//! oversized body), `llm` against a fake OpenAI-compatible server (the cache), `transform`
//! errors, templates, config rejected at `RegisterWorkflow`, a cancellation reaching a
//! running step, and a per-kind concurrency limit.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use aura_e2e::{input, spec, wait_for_run};
use aura_proto::{json, v1 as pb};
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
    task::JoinHandle,
};
use tonic::{Code, transport::Channel};
use tonic_types::StatusExt;

// ---------------------------------------------------------------------------------------
// A loopback HTTP/1.1 server. Hand-written on tokio rather than hyper because the tests need
// to see exactly when a client hangs up in the middle of a request (cancellation, timeouts).
// Every response closes its connection.

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: String,
    at: Instant,
}

/// What the server answers.
enum Reply {
    /// Status, extra headers, body.
    Send(u16, Vec<(&'static str, String)>, Vec<u8>),
    /// Waits until the gate is open, then answers.
    AfterGate(watch::Receiver<bool>, Box<Reply>),
    /// Never answers: waits for the client to hang up.
    Hang,
}

fn json_reply(status: u16, body: Json) -> Reply {
    Reply::Send(status, vec![("content-type", "application/json".into())], body.to_string().into_bytes())
}

type Handler = Arc<dyn Fn(&Seen, usize) -> Reply + Send + Sync>;

#[derive(Default)]
struct Counters {
    requests: Mutex<Vec<Seen>>,
    /// Requests whose client hung up before an answer.
    hung_up: AtomicUsize,
    /// Requests being handled now, and the most at once.
    active: AtomicUsize,
    max_active: AtomicUsize,
}

struct Loopback {
    addr: SocketAddr,
    counters: Arc<Counters>,
    acceptor: JoinHandle<()>,
}

impl Loopback {
    /// Serves `handler(request, n)` where `n` counts requests from 1.
    async fn start(handler: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) -> Loopback {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback server");
        let addr = listener.local_addr().expect("loopback address");
        let counters = Arc::new(Counters::default());
        let handler: Handler = Arc::new(handler);
        let shared = counters.clone();
        let acceptor = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_connection(stream, handler.clone(), shared.clone()));
            }
        });
        Loopback { addr, counters, acceptor }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> Vec<Seen> {
        self.counters.requests.lock().unwrap().clone()
    }

    fn hung_up(&self) -> usize {
        self.counters.hung_up.load(Ordering::SeqCst)
    }

    fn active(&self) -> usize {
        self.counters.active.load(Ordering::SeqCst)
    }

    fn max_active(&self) -> usize {
        self.counters.max_active.load(Ordering::SeqCst)
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

async fn serve_connection(mut stream: TcpStream, handler: Handler, counters: Arc<Counters>) {
    let Some(seen) = read_request(&mut stream).await else { return };
    let n = {
        let mut requests = counters.requests.lock().unwrap();
        requests.push(seen.clone());
        requests.len()
    };
    let active = counters.active.fetch_add(1, Ordering::SeqCst) + 1;
    counters.max_active.fetch_max(active, Ordering::SeqCst);
    let mut reply = handler(&seen, n);
    loop {
        match reply {
            Reply::Send(status, headers, body) => {
                let mut head = format!(
                    "HTTP/1.1 {status} Test\r\ncontent-length: {}\r\nconnection: close\r\n",
                    body.len()
                );
                for (name, value) in headers {
                    head.push_str(&format!("{name}: {value}\r\n"));
                }
                head.push_str("\r\n");
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body).await;
                let _ = stream.shutdown().await;
                break;
            }
            Reply::AfterGate(mut gate, next) => {
                let opened = tokio::select! {
                    r = gate.wait_for(|open| *open) => r.is_ok(),
                    _ = hang_up(&mut stream) => false,
                };
                if !opened {
                    counters.hung_up.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                reply = *next;
            }
            Reply::Hang => {
                hang_up(&mut stream).await;
                counters.hung_up.fetch_add(1, Ordering::SeqCst);
                break;
            }
        }
    }
    counters.active.fetch_sub(1, Ordering::SeqCst);
}

/// Returns once the client closed its side (or the connection broke).
async fn hang_up(stream: &mut TcpStream) {
    let mut buf = [0u8; 256];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

async fn read_request(stream: &mut TcpStream) -> Option<Seen> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_string();
    let path = request_line.next()?.to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < len {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some(Seen {
        method,
        path,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        at: Instant::now(),
    })
}

// ---------------------------------------------------------------------------------------
// Workflow helpers.

fn ms(n: u64) -> prost_types::Duration {
    prost_types::Duration { seconds: (n / 1000) as i64, nanos: ((n % 1000) * 1_000_000) as i32 }
}

/// `max_attempts` attempts, 50 ms apart (no jitter): retries that keep tests fast.
fn quick_retry(max_attempts: u32) -> Option<pb::RetryPolicy> {
    Some(pb::RetryPolicy {
        max_attempts,
        initial_backoff: Some(ms(50)),
        max_backoff: Some(ms(200)),
        multiplier: 2.0,
        jitter: 0.0,
    })
}

/// A workflow `name` with one step `s` of `kind`, retried quickly.
fn one_step(name: &str, kind: &str, config: Json, max_attempts: u32) -> pb::WorkflowSpec {
    let mut wf = spec(json!({"name": name, "steps": [{"id": "s", "kind": kind, "config": config}]}));
    wf.steps[0].retry = quick_retry(max_attempts);
    wf
}

struct Env {
    _redis: RedisServer,
    mesh: Mesh,
    gw: GatewayClient<Channel>,
}

async fn start_env(options: MeshOptions) -> Env {
    let redis = RedisServer::start();
    let mesh = Mesh::start(&redis.url(), options).await;
    let gw = mesh.gateway().await;
    Env { _redis: redis, mesh, gw }
}

async fn register(gw: &mut GatewayClient<Channel>, wf: pb::WorkflowSpec) {
    gw.register_workflow(pb::RegisterWorkflowRequest { spec: Some(wf) }).await.expect("register workflow");
}

async fn start_run(gw: &mut GatewayClient<Channel>, workflow: &str, run_input: Json) -> String {
    let req =
        pb::StartRunRequest { workflow_name: workflow.into(), input: input(run_input), ..Default::default() };
    gw.start_run(req).await.expect("start run").into_inner().run.expect("run").run_id
}

/// Registers `wf`, runs it once with `run_input` and returns the finished run.
async fn run_once(gw: &mut GatewayClient<Channel>, wf: pb::WorkflowSpec, run_input: Json) -> pb::Run {
    let name = wf.name.clone();
    register(gw, wf).await;
    let run_id = start_run(gw, &name, run_input).await;
    wait_for_run(gw, &run_id, Duration::from_secs(60)).await
}

fn step<'a>(run: &'a pb::Run, id: &str) -> &'a pb::StepRun {
    run.steps.iter().find(|s| s.step_id == id).unwrap_or_else(|| panic!("no step {id} in {run:?}"))
}

fn output(step: &pb::StepRun) -> Json {
    step.output.as_ref().map(json::value_to_json).unwrap_or(Json::Null)
}

fn assert_state(run: &pb::Run, state: pb::RunState) {
    assert_eq!(run.state, state as i32, "expected {state:?}: {run:#?}");
}

// ---------------------------------------------------------------------------------------
// http

#[tokio::test]
async fn http_200_renders_templates_and_returns_status_headers_and_parsed_body() {
    let mut env = start_env(MeshOptions::default()).await;
    let server = Loopback::start(|seen, _| json_reply(200, json!({"id": 42, "path": seen.path}))).await;
    let wf = one_step(
        "http-ok",
        "http",
        json!({
            "method": "post",
            "url": server.url("/users/{{ input.user_id }}"),
            "headers": {"x-trace": "t-{{ input.user_id }}"},
            "body": {"name": "{{ input.name }}", "n": 1},
        }),
        3,
    );
    let run = run_once(&mut env.gw, wf, json!({"user_id": 42, "name": "ada"})).await;
    assert_state(&run, pb::RunState::Succeeded);
    let s = step(&run, "s");
    assert_eq!(s.attempts, 1);
    let out = output(s);
    assert_eq!(out["status"], json!(200));
    assert_eq!(out["body"], json!({"id": 42, "path": "/users/42"}), "JSON bodies are parsed");
    assert_eq!(out["headers"]["content-type"], json!("application/json"));
    let requests = server.requests();
    assert_eq!(requests.len(), 1);
    assert_eq!((requests[0].method.as_str(), requests[0].path.as_str()), ("POST", "/users/42"));
    assert_eq!(requests[0].headers.get("x-trace").map(String::as_str), Some("t-42"));
    let body: Json = serde_json::from_str(&requests[0].body).unwrap();
    assert_eq!(body, json!({"name": "ada", "n": 1}));
    env.mesh.stop().await;
}

#[tokio::test]
async fn http_500_then_200_is_retried_and_records_two_attempts() {
    let mut env = start_env(MeshOptions::default()).await;
    let server = Loopback::start(|_, n| {
        if n == 1 { json_reply(500, json!({"error": "flaky"})) } else { json_reply(200, json!({"ok": true})) }
    })
    .await;
    let wf = one_step("http-flaky", "http", json!({"url": server.url("/flaky")}), 3);
    let run = run_once(&mut env.gw, wf, json!({})).await;
    assert_state(&run, pb::RunState::Succeeded);
    let s = step(&run, "s");
    assert_eq!(s.attempts, 2, "{s:?}");
    assert_eq!(output(s)["body"], json!({"ok": true}));
    assert_eq!(server.requests().len(), 2);
    env.mesh.stop().await;
}

#[tokio::test]
async fn http_429_waits_for_retry_after_before_the_next_attempt() {
    let mut env = start_env(MeshOptions::default()).await;
    let server = Loopback::start(|_, n| {
        if n == 1 {
            Reply::Send(429, vec![("retry-after", "2".into())], b"slow down".to_vec())
        } else {
            json_reply(200, json!({"ok": true}))
        }
    })
    .await;
    // The step's own backoff is 50 ms: only Retry-After can make the second attempt wait.
    let wf = one_step("http-429", "http", json!({"url": server.url("/limited")}), 3);
    let run = run_once(&mut env.gw, wf, json!({})).await;
    assert_state(&run, pb::RunState::Succeeded);
    assert_eq!(step(&run, "s").attempts, 2);
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    let gap = requests[1].at - requests[0].at;
    // A lower bound only: a loaded machine can make the gap longer, never shorter.
    assert!(gap >= Duration::from_millis(1900), "second attempt came {gap:?} after the 429");
    env.mesh.stop().await;
}

#[tokio::test]
async fn http_404_fails_at_once_with_one_attempt() {
    let mut env = start_env(MeshOptions::default()).await;
    let server = Loopback::start(|_, _| json_reply(404, json!({"error": "no such user"}))).await;
    let wf = one_step("http-404", "http", json!({"url": server.url("/users/7")}), 3);
    let run = run_once(&mut env.gw, wf, json!({})).await;
    assert_state(&run, pb::RunState::Failed);
    let s = step(&run, "s");
    assert_eq!(s.attempts, 1, "a 404 is not retried: {s:?}");
    assert!(s.error.contains("HTTP 404"), "{}", s.error);
    assert!(run.error.contains("HTTP 404"), "{}", run.error);
    assert_eq!(server.requests().len(), 1);
    env.mesh.stop().await;
}

#[tokio::test]
async fn http_timeout_is_retried_then_fails_and_the_connection_is_dropped() {
    let mut env = start_env(MeshOptions::default()).await;
    let server = Loopback::start(|_, _| Reply::Hang).await;
    let wf = one_step("http-timeout", "http", json!({"url": server.url("/slow"), "timeout_ms": 300}), 2);
    let run = run_once(&mut env.gw, wf, json!({})).await;
    assert_state(&run, pb::RunState::Failed);
    let s = step(&run, "s");
    assert_eq!(s.attempts, 2, "timeouts are retried: {s:?}");
    assert!(s.error.contains("timed out"), "{}", s.error);
    wait_until("both timed-out connections closed", Duration::from_secs(10), || async {
        server.hung_up() == 2
    })
    .await;
    env.mesh.stop().await;
}

#[tokio::test]
async fn http_body_over_max_response_bytes_fails_the_step() {
    let mut env = start_env(MeshOptions::default()).await;
    let server = Loopback::start(|_, _| Reply::Send(200, vec![], vec![b'x'; 64 * 1024])).await;
    let wf = one_step("http-big", "http", json!({"url": server.url("/big"), "max_response_bytes": 1024}), 3);
    let run = run_once(&mut env.gw, wf, json!({})).await;
    assert_state(&run, pb::RunState::Failed);
    let s = step(&run, "s");
    assert_eq!(s.attempts, 1, "a too large answer is not retried: {s:?}");
    assert!(s.error.contains("max_response_bytes (1024)"), "{}", s.error);
    env.mesh.stop().await;
}

// ---------------------------------------------------------------------------------------
// llm

fn fake_completion(seen: &Seen) -> Reply {
    let request: Json = serde_json::from_str(&seen.body).unwrap_or(Json::Null);
    let last = request["messages"].as_array().and_then(|m| m.last()).cloned().unwrap_or(Json::Null);
    json_reply(
        200,
        json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": request["model"],
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": format!("echo: {}", last["content"].as_str().unwrap_or(""))}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        }),
    )
}

#[tokio::test]
async fn llm_identical_runs_call_the_model_once_and_ttl_zero_calls_every_time() {
    let mut env = start_env(MeshOptions::default()).await;
    let server = Loopback::start(|seen, _| {
        if seen.method == "POST" && seen.path == "/v1/chat/completions" {
            if seen.body.contains("\"locked-model\"") {
                Reply::Send(401, vec![("content-type", "text/html".into())], b"<html>no key</html>".to_vec())
            } else {
                fake_completion(seen)
            }
        } else {
            json_reply(404, json!({"error": "not found"}))
        }
    })
    .await;
    let config = |ttl: Option<u64>| {
        let mut c = json!({
            "base_url": server.url("/v1"),
            "model": "fake-1",
            "messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "Say hi to {{ input.name }}"}],
            "temperature": 0,
            "max_tokens": 16,
        });
        if let Some(ttl) = ttl {
            c["cache_ttl_seconds"] = json!(ttl);
        }
        c
    };
    register(&mut env.gw, one_step("llm-cached", "llm", config(None), 1)).await;
    register(&mut env.gw, one_step("llm-uncached", "llm", config(Some(0)), 1)).await;

    let mut outputs = Vec::new();
    for _ in 0..2 {
        let run_id = start_run(&mut env.gw, "llm-cached", json!({"name": "ada"})).await;
        let run = wait_for_run(&mut env.gw, &run_id, Duration::from_secs(60)).await;
        assert_state(&run, pb::RunState::Succeeded);
        outputs.push(output(step(&run, "s")));
    }
    assert_eq!(server.requests().len(), 1, "the second identical run is served from the cache");
    assert_eq!(outputs[0]["content"], json!("echo: Say hi to ada"));
    assert_eq!(outputs[0]["usage"]["total_tokens"], json!(8));
    assert_eq!((&outputs[0]["cached"], &outputs[1]["cached"]), (&json!(false), &json!(true)));
    assert_eq!(outputs[0]["content"], outputs[1]["content"]);
    let request: Json = serde_json::from_str(&server.requests()[0].body).unwrap();
    assert_eq!(request["messages"][1]["content"], json!("Say hi to ada"), "messages are templated");
    assert_eq!(request["max_tokens"], json!(16));

    // A different input is a different request.
    let run_id = start_run(&mut env.gw, "llm-cached", json!({"name": "grace"})).await;
    assert_state(&wait_for_run(&mut env.gw, &run_id, Duration::from_secs(60)).await, pb::RunState::Succeeded);
    assert_eq!(server.requests().len(), 2);

    // cache_ttl_seconds: 0 disables the cache: each run calls the model.
    for expected in [3, 4] {
        let run_id = start_run(&mut env.gw, "llm-uncached", json!({"name": "ada"})).await;
        let run = wait_for_run(&mut env.gw, &run_id, Duration::from_secs(60)).await;
        assert_state(&run, pb::RunState::Succeeded);
        assert_eq!(output(step(&run, "s"))["cached"], json!(false));
        assert_eq!(server.requests().len(), expected);
    }

    // A 401 fails at once (whatever its body), with the provider's answer in the error.
    let mut locked = config(Some(0));
    locked["model"] = json!("locked-model");
    let run = run_once(&mut env.gw, one_step("llm-locked", "llm", locked, 3), json!({"name": "ada"})).await;
    assert_state(&run, pb::RunState::Failed);
    let s = step(&run, "s");
    assert_eq!(s.attempts, 1, "{s:?}");
    assert!(s.error.contains("401") && s.error.contains("no key"), "{}", s.error);
    env.mesh.stop().await;
}

// ---------------------------------------------------------------------------------------
// transform and templates

#[tokio::test]
async fn transform_errors_surface_jqs_message_without_retrying() {
    let mut env = start_env(MeshOptions::default()).await;
    for (name, program, expected) in [
        ("jq-type-error", ".steps.a.output.name + 1", r#"cannot calculate "ada" + 1"#),
        ("jq-user-error", r#"error("quota of \(.input.name) exceeded")"#, "quota of ada exceeded"),
    ] {
        let mut wf = spec(json!({"name": name, "steps": [
            {"id": "a", "kind": "noop"},
            {"id": "t", "kind": "transform", "depends_on": ["a"], "config": {"jq": program}},
        ]}));
        wf.steps[1].retry = quick_retry(3);
        let run = run_once(&mut env.gw, wf, json!({"name": "ada"})).await;
        assert_state(&run, pb::RunState::Failed);
        let t = step(&run, "t");
        assert_eq!(t.attempts, 1, "jq errors are not retried: {t:?}");
        assert!(t.error.contains(expected), "step error {:?} lacks jq's message {expected:?}", t.error);
        assert!(run.error.contains(expected), "run error {:?}", run.error);
    }
    env.mesh.stop().await;
}

#[tokio::test]
async fn unknown_template_variable_or_bad_rendered_url_fails_the_run_with_a_clear_error() {
    let mut env = start_env(MeshOptions::default()).await;
    let server = Loopback::start(|_, _| json_reply(200, json!({}))).await;

    let wf = one_step("tpl-unknown", "http", json!({"url": server.url("/u/{{ input.user_idd }}")}), 3);
    let run = run_once(&mut env.gw, wf, json!({"user_id": 1})).await;
    assert_state(&run, pb::RunState::Failed);
    let s = step(&run, "s");
    assert_eq!(s.attempts, 1, "{s:?}");
    assert!(s.error.contains("input.user_idd") && s.error.contains("undefined"), "{}", s.error);

    let mut wf = spec(json!({"name": "tpl-step", "steps": [
        {"id": "a", "kind": "noop"},
        {"id": "b", "kind": "http", "depends_on": ["a"],
         "config": {"url": server.url("/{{ steps.a.output.user.id }}")}},
    ]}));
    wf.steps[1].retry = quick_retry(3);
    let run = run_once(&mut env.gw, wf, json!({"user": {"name": "ada"}})).await;
    assert_state(&run, pb::RunState::Failed);
    let b = step(&run, "b");
    assert!(b.error.contains("steps.a.output.user.id") && b.error.contains("undefined"), "{}", b.error);

    let wf = one_step("tpl-url", "http", json!({"url": "{{ input.url }}"}), 3);
    let run = run_once(&mut env.gw, wf, json!({"url": "not a url"})).await;
    assert_state(&run, pb::RunState::Failed);
    let s = step(&run, "s");
    assert_eq!(s.attempts, 1);
    assert!(s.error.contains("config.url") && s.error.contains("not a valid URL"), "{}", s.error);

    assert!(server.requests().is_empty(), "no request left with a broken config");
    env.mesh.stop().await;
}

#[tokio::test]
async fn bad_step_config_is_rejected_at_register_workflow_naming_the_key() {
    let mut env = start_env(MeshOptions { worker_concurrency: 0, ..Default::default() }).await;
    let cases = [
        ("http", json!({"url": "ftp://example.com/file"}), "spec.steps[1].config.url"),
        ("http", json!({"url": "http://exa mple.com/"}), "spec.steps[1].config.url"),
        ("http", json!({"url": "http://example.com/{{ input.id"}), "spec.steps[1].config.url"),
        ("http", json!({"url": "http://example.com/{{ inputs.id }}"}), "spec.steps[1].config.url"),
        ("http", json!({"url": "http://x/{{ steps.nope.output.id }}"}), "spec.steps[1].config.url"),
        ("transform", json!({"jq": ".[ | oops"}), "spec.steps[1].config.jq"),
        ("transform", json!({"jq": ".input | no_such_function"}), "spec.steps[1].config.jq"),
        (
            "llm",
            json!({"base_url": "localhost:8080", "model": "m", "messages": []}),
            "spec.steps[1].config.base_url",
        ),
    ];
    for (kind, config, field) in cases {
        let wf = spec(json!({"name": "bad", "steps": [
            {"id": "a", "kind": "noop"},
            {"id": "b", "kind": kind, "depends_on": ["a"], "config": config},
        ]}));
        let err = env.gw.register_workflow(pb::RegisterWorkflowRequest { spec: Some(wf) }).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{kind} {config}: {err:?}");
        let details = err.get_error_details();
        let violation = details.bad_request().and_then(|b| b.field_violations.first()).cloned();
        let violation = violation.unwrap_or_else(|| panic!("no field violation in {err:?}"));
        assert_eq!(violation.field, field, "{config}");
        assert!(!violation.description.is_empty());
    }
    env.mesh.stop().await;
}

// ---------------------------------------------------------------------------------------
// The worker: cancellation and per-kind limits.

async fn worker_status(mesh: &Mesh) -> pb::GetStatusResponse {
    mesh.worker().await.get_status(pb::GetStatusRequest {}).await.expect("GetStatus").into_inner()
}

#[tokio::test]
async fn cancel_run_stops_a_running_http_step_and_closes_its_connection() {
    let mut env = start_env(MeshOptions::default()).await;
    let server = Loopback::start(|_, _| Reply::Hang).await;
    let wf = one_step("slow-http", "http", json!({"url": server.url("/slow"), "timeout_ms": 600_000}), 1);
    register(&mut env.gw, wf).await;
    let run_id = start_run(&mut env.gw, "slow-http", json!({})).await;
    let mesh = &env.mesh;
    wait_until("the step is running", Duration::from_secs(20), || async {
        let status = worker_status(mesh).await;
        server.active() == 1 && status.in_flight == 1 && status.in_flight_by_kind.get("http") == Some(&1)
    })
    .await;

    env.gw
        .cancel_run(pb::CancelRunRequest { run_id: run_id.clone(), reason: "test".into() })
        .await
        .expect("cancel run");
    // Within about a heartbeat period; the generous timeout only guards against a hang.
    wait_until("the worker stops the cancelled step", Duration::from_secs(10), || async {
        let status = worker_status(mesh).await;
        status.in_flight == 0 && status.in_flight_by_kind.is_empty() && server.hung_up() == 1
    })
    .await;
    let run = wait_for_run(&mut env.gw, &run_id, Duration::from_secs(10)).await;
    assert_state(&run, pb::RunState::Cancelled);
    assert_eq!(server.requests().len(), 1, "the cancelled step is not retried");
    env.mesh.stop().await;
}

#[tokio::test]
async fn per_kind_limit_bounds_what_the_worker_claims_and_runs() {
    let mut env = start_env(MeshOptions { worker_concurrency: 0, ..Default::default() }).await;
    let redis_url = env._redis.url();
    let (open_gate, gate) = watch::channel(false);
    let server = Loopback::start(move |_, _| {
        Reply::AfterGate(gate.clone(), Box::new(json_reply(200, json!({"ok": true}))))
    })
    .await;

    // A worker with room for 16 tasks, at most 2 of them `http`.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let worker_addr = listener.local_addr().unwrap();
    let config = aura_worker::Config {
        scheduler_urls: vec![format!("http://{}", env.mesh.scheduler)],
        redis_url,
        concurrency: 16,
        kind_concurrency: BTreeMap::from([("http".to_string(), 2)]),
        drain_timeout: Duration::from_secs(5),
        worker_id: "limited-worker".into(),
        ..Default::default()
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = tokio::spawn(aura_worker::serve(config, listener, stop.clone()));

    let wf = one_step("limited", "http", json!({"url": server.url("/held")}), 1);
    register(&mut env.gw, wf).await;
    let starts = (0..6)
        .map(|i| pb::StartRunRequest {
            workflow_name: "limited".into(),
            input: input(json!({"i": i})),
            ..Default::default()
        })
        .collect();
    let started = env.gw.start_runs(pb::StartRunsRequest { runs: starts }).await.unwrap().into_inner();
    let run_ids: Vec<String> = started.results.into_iter().map(|r| r.run_id).collect();
    assert_eq!(run_ids.len(), 6);

    let mut worker_client = pb::worker_client::WorkerClient::new(Mesh::channel(worker_addr).await);
    wait_until("two http steps running", Duration::from_secs(20), || async { server.active() == 2 }).await;
    // The two running steps hold the worker's http slots, so it claims nothing more: the
    // other four wait in the queue (where another worker could take them).
    let status = worker_client.get_status(pb::GetStatusRequest {}).await.unwrap().into_inner();
    assert_eq!((status.in_flight, status.in_flight_by_kind.get("http").copied()), (2, Some(2)));
    let stats = env
        .gw
        .get_queue_stats(pb::GetQueueStatsRequest { queue: "builtin".into() })
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap();
    assert_eq!((stats.active, stats.waiting), (2, 4), "{stats:?}");

    open_gate.send(true).unwrap();
    for run_id in &run_ids {
        let run = wait_for_run(&mut env.gw, run_id, Duration::from_secs(60)).await;
        assert_state(&run, pb::RunState::Succeeded);
        assert_eq!(step(&run, "s").attempts, 1);
    }
    assert_eq!(server.max_active(), 2, "never more than the limit at once");
    assert_eq!(server.requests().len(), 6);
    stop.cancel();
    worker.await.unwrap().unwrap();
    env.mesh.stop().await;
}

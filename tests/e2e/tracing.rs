//! Traces across every hop: four real `aura serve` processes (gateway, scheduler, worker,
//! events) export OTLP to a collector this test serves (the OTLP trace service from the
//! opentelemetry-proto crate, over a real socket). A client starts a run with its own
//! `traceparent`; every span of that run — the Gateway's StartRun, the Scheduler's StartRun
//! behind it, and each step on the worker — must arrive under the client's trace id, with
//! the steps descendants of the StartRun span. The worker's log line about the failed step
//! carries the same trace id.
//!
//! The binary is `target/debug/aura` (or `$AURA_BIN`); `scripts/test.sh` builds it first.

use std::{
    collections::HashMap,
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use aura_e2e::{aura_bin, input, spec, wait_for_run};
use aura_proto::v1 as pb;
use aura_testkit::{RedisServer, free_port, mesh::Mesh, wait_until};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::any_value::Value as AnyValue,
};
use pb::gateway_client::GatewayClient;
use serde_json::{Value as Json, json};

/// The trace and parent span the "client" claims to be in.
const CLIENT_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN_ID: &str = "00f067aa0ba902b7";

/// One span as received, flattened.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_id: String,
}

/// An OTLP trace collector keeping everything it receives.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut out = self.spans.lock().unwrap();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    AnyValue::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                out.push(Received {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_id: hex(&span.parent_span_id),
                });
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One `aura serve <role>` process exporting traces to `otlp`, its stderr kept.
struct Role {
    child: Child,
    addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Role {
    fn spawn(role: &str, redis_url: &str, otlp: SocketAddr, extra: &[String]) -> Role {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut child = Command::new(aura_bin())
            .args(["serve", role, "--redis-url", redis_url, "--listen", &addr.to_string()])
            .args(["--metrics-listen", "127.0.0.1:0"])
            .args(extra)
            .env("AURA_LOG", "info")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}"))
            // Export within 100 ms instead of 5 s, so the test waits less.
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .env_remove("OTEL_SERVICE_NAME")
            .env_remove("OTEL_TRACES_SAMPLER")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the aura binary");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("piped stderr");
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Role { child, addr, logs }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_trace_from_the_client_through_gateway_scheduler_and_worker() {
    let redis = RedisServer::start();
    let collector = Collector::default();
    let otlp_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let otlp = otlp_listener.local_addr().unwrap();
    let serving = collector.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(serving))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(otlp_listener))
            .await
    });

    let url = redis.url();
    let scheduler = Role::spawn("scheduler", &url, otlp, &[]);
    let events = Role::spawn("events", &url, otlp, &[]);
    let worker = Role::spawn("worker", &url, otlp, &["--scheduler-url".into(), scheduler.url()]);
    let gateway = Role::spawn(
        "gateway",
        &url,
        otlp,
        &[
            "--scheduler-url".into(),
            scheduler.url(),
            "--events-url".into(),
            events.url(),
            "--insecure-no-auth".into(),
        ],
    );
    for role in [&scheduler, &events, &worker, &gateway] {
        let addr = role.addr;
        wait_until("every role serves", Duration::from_secs(30), || async move {
            Mesh::health(addr, "").await == Some(1)
        })
        .await;
    }

    let mut client = GatewayClient::new(Mesh::channel(gateway.addr).await);
    // `fetch` then `shape`, which fails on purpose so the worker logs about the run.
    client
        .register_workflow(pb::RegisterWorkflowRequest {
            spec: Some(spec(json!({
                "name": "traced",
                "steps": [
                    {"id": "fetch", "kind": "noop"},
                    {"id": "shape", "kind": "transform", "config": {"jq": "error(\"no shape\")"},
                     "depends_on": ["fetch"]},
                ],
            }))),
        })
        .await
        .expect("register");
    let mut start = tonic::Request::new(pb::StartRunRequest {
        workflow_name: "traced".into(),
        input: input(json!({})),
        ..Default::default()
    });
    start
        .metadata_mut()
        .insert("traceparent", format!("00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01").parse().unwrap());
    let run = client.start_run(start).await.expect("start").into_inner().run.expect("run");
    let done = wait_for_run(&mut client, &run.run_id, Duration::from_secs(30)).await;
    assert_eq!(done.state, pb::RunState::Failed as i32, "the shape step fails on purpose");

    // Spans arrive in batches: wait for the four we need.
    let find = |spans: &[Received], service: &str, name: &str| {
        spans
            .iter()
            .find(|s| s.service == service && s.name == name && s.trace_id == CLIENT_TRACE_ID)
            .cloned()
    };
    let spans = collector.spans.clone();
    wait_until("the run's spans reach the collector", Duration::from_secs(30), || {
        let spans = spans.clone();
        async move {
            let spans = spans.lock().unwrap();
            find(&spans, "aura-gateway", "aura.v1.Gateway/StartRun").is_some()
                && find(&spans, "aura-scheduler", "aura.v1.Scheduler/StartRun").is_some()
                && find(&spans, "aura-worker", "step fetch").is_some()
                && find(&spans, "aura-worker", "step shape").is_some()
        }
    })
    .await;
    let spans = collector.spans.lock().unwrap().clone();
    let gateway_span = find(&spans, "aura-gateway", "aura.v1.Gateway/StartRun").unwrap();
    let scheduler_span = find(&spans, "aura-scheduler", "aura.v1.Scheduler/StartRun").unwrap();
    assert_eq!(gateway_span.parent_id, CLIENT_SPAN_ID, "the client's traceparent is honoured");
    assert_eq!(scheduler_span.parent_id, gateway_span.span_id, "Gateway → Scheduler in gRPC metadata");

    // Each step span descends from the Scheduler's StartRun (carried inside the job).
    let by_id: HashMap<&str, &Received> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let descends_from = |span: &Received, ancestor: &str| {
        let mut at = span;
        for _ in 0..16 {
            if at.parent_id == ancestor {
                return true;
            }
            match by_id.get(at.parent_id.as_str()) {
                Some(parent) => at = parent,
                None => return false,
            }
        }
        false
    };
    for step in ["step fetch", "step shape"] {
        let span = find(&spans, "aura-worker", step).unwrap();
        assert!(
            descends_from(&span, &scheduler_span.span_id),
            "{step} ({span:?}) should descend from the Scheduler's StartRun ({scheduler_span:?})"
        );
        assert!(descends_from(&span, &gateway_span.span_id));
    }
    // Nothing of this run went to another trace.
    let gateway_calls_elsewhere = spans
        .iter()
        .filter(|s| s.name.starts_with("step ") && s.trace_id != CLIENT_TRACE_ID)
        .map(|s| s.name.clone())
        .collect::<Vec<_>>();
    assert!(gateway_calls_elsewhere.is_empty(), "steps outside the run's trace: {gateway_calls_elsewhere:?}");

    // The worker's log line about the failed step names run, step, attempt and trace.
    let logs = worker.logs.lock().unwrap().clone();
    let line = logs
        .iter()
        .filter_map(|l| serde_json::from_str::<Json>(l).ok())
        .find(|l| l["fields"]["message"] == "step attempt failed")
        .unwrap_or_else(|| panic!("no 'step attempt failed' line in the worker's log:\n{}", logs.join("\n")));
    let span = &line["span"];
    assert_eq!(span["run_id"], run.run_id.as_str(), "{line}");
    assert_eq!(span["step_id"], "shape", "{line}");
    assert_eq!(span["attempt"], 1, "{line}");
    assert_eq!(span["trace_id"], CLIENT_TRACE_ID, "{line}");
}

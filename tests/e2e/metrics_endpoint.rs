//! A real `aura up` process: every role's /metrics endpoint parses as Prometheus text and
//! carries the series operators alert on.

use std::{
    io::{Read, Write},
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::Duration,
};

use aura_e2e::{aura_bin, spec};
use aura_proto::v1 as pb;
use aura_testkit::{RedisServer, free_port, wait_until};
use serde_json::json;

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    let (head, body) = body.split_once("\r\n\r\n")?;
    // hyper answers an HTTP/1.0 request in kind: check the status code only.
    (head.split_whitespace().nth(1) == Some("200")).then(|| body.to_string())
}

/// Checks every sample line is `name{labels} value` with a numeric value, and returns the
/// metric names.
fn parse_prometheus(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line:?}"));
        assert!(value.parse::<f64>().is_ok() || value == "+Inf", "bad value in {line:?}");
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name in {line:?}"
        );
        names.push(name.to_string());
    }
    assert!(text.trim_end().ends_with("# EOF"), "OpenMetrics text ends with # EOF");
    names
}

#[tokio::test]
async fn every_role_serves_prometheus_metrics() {
    let redis = RedisServer::start();
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let metrics_base = loop {
        let p = free_port();
        if p < 65000 && (1..4).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok()) {
            break p;
        }
    };
    let child = Command::new(aura_bin())
        .args(["up", "--redis-url", &redis.url(), "--bind", "127.0.0.1", "--insecure-no-auth"])
        .args(["--gateway-port", &ports[0].to_string(), "--scheduler-port", &ports[1].to_string()])
        .args(["--worker-port", &ports[2].to_string(), "--events-port", &ports[3].to_string()])
        .args(["--metrics-port", &metrics_base.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start aura up");
    let _guard = Killed(child);
    let gateway = format!("http://127.0.0.1:{}", ports[0]);
    wait_until("gateway up", Duration::from_secs(30), || {
        let gateway = gateway.clone();
        async move { pb::gateway_client::GatewayClient::connect(gateway).await.is_ok() }
    })
    .await;
    let mut gw = pb::gateway_client::GatewayClient::connect(gateway).await.unwrap();
    let wf = spec(json!({"name": "m", "steps": [{"id": "s", "kind": "noop"}]}));
    gw.register_workflow(pb::RegisterWorkflowRequest { spec: Some(wf) }).await.unwrap();
    let _ = gw.get_run(pb::GetRunRequest { run_id: "bad".into() }).await;

    let expected: [(&str, &[&str]); 4] = [
        (
            "gateway",
            &[
                "aura_build_info",
                "aura_grpc_server_calls_total",
                "aura_grpc_server_call_duration_seconds_bucket",
                "aura_ratelimit_decisions_total",
            ],
        ),
        (
            "scheduler",
            &[
                "aura_build_info",
                "aura_grpc_server_calls_total",
                "aura_queue_jobs",
                "aura_redis_up",
                "aura_definition_cache_hits_total",
                "aura_definition_cache_misses_total",
            ],
        ),
        (
            "worker",
            &[
                "aura_build_info",
                "aura_worker_capacity",
                "aura_llm_cache_hits_total",
                "aura_llm_cache_misses_total",
            ],
        ),
        (
            "events",
            &[
                "aura_build_info",
                "aura_events_subscribers",
                "aura_events_redis_patterns",
                "aura_events_delivered_total",
                "aura_events_subscribers_cut_off_total",
                "aura_events_redis_reconnects_total",
                "aura_events_delivery_lag_seconds_bucket",
            ],
        ),
    ];
    for (i, (role, series)) in expected.iter().enumerate() {
        let port = metrics_base + i as u16;
        let mut text = String::new();
        wait_until(&format!("{role} /metrics with its series"), Duration::from_secs(20), || {
            let text = &mut text;
            let found = http_get(port, "/metrics");
            let ok = found.as_deref().is_some_and(|t| series.iter().all(|s| t.contains(s)));
            if let Some(t) = found {
                *text = t;
            }
            async move { ok }
        })
        .await;
        let names = parse_prometheus(&text);
        for s in *series {
            assert!(names.iter().any(|n| n == s), "{role}: {s} missing in\n{text}");
        }
    }
    let gateway_text = http_get(metrics_base, "/metrics").unwrap();
    assert!(
        gateway_text.contains(r#"aura_grpc_server_calls_total{service="aura.v1.Gateway",method="GetRun",code="InvalidArgument"} 1"#),
        "{gateway_text}"
    );
}

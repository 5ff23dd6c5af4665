//! Global rate limits: replicas share one bucket per tenant in Redis; denials say when to
//! retry; allowed calls carry the remaining budget.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use aura_proto::v1 as pb;
use aura_testkit::{
    RedisServer,
    mesh::{Mesh, MeshOptions},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::Code;
use tonic_types::StatusExt;

async fn gateway(
    mesh: &Mesh,
    redis: &RedisServer,
    limit: aura_ratelimit::Limit,
    stop: &CancellationToken,
) -> SocketAddr {
    gateway_with(mesh, redis, stop, |c| c.rate_limit = Some(limit)).await
}

/// A gateway in front of `mesh` without auth, adjusted by `tweak`, until `stop`.
async fn gateway_with(
    mesh: &Mesh,
    redis: &RedisServer,
    stop: &CancellationToken,
    tweak: impl FnOnce(&mut aura_gateway::Config),
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = aura_gateway::Config {
        scheduler_urls: vec![format!("http://{}", mesh.scheduler)],
        events_urls: vec![format!("http://{}", mesh.events)],
        redis_url: redis.url(),
        insecure_no_auth: true,
        ..Default::default()
    };
    tweak(&mut config);
    let stop = stop.clone();
    tokio::spawn(async move { aura_gateway::serve(config, listener, stop).await.unwrap() });
    addr
}

async fn client(addr: SocketAddr) -> pb::gateway_client::GatewayClient<tonic::transport::Channel> {
    pb::gateway_client::GatewayClient::new(Mesh::channel(addr).await)
}

#[tokio::test]
async fn a_burst_passes_then_calls_are_refused_with_retry_information() {
    let redis = RedisServer::start();
    let mesh = Mesh::start(&redis.url(), MeshOptions { worker_concurrency: 0, ..Default::default() }).await;
    let stop = CancellationToken::new();
    let addr = gateway(&mesh, &redis, aura_ratelimit::Limit { rps: 2, burst: 5 }, &stop).await;
    let mut gw = client(addr).await;
    for i in 0..5 {
        let resp = gw
            .list_workflows(pb::ListWorkflowsRequest::default())
            .await
            .unwrap_or_else(|e| panic!("call {i}: {e:?}"));
        assert_eq!(resp.metadata().get("x-ratelimit-limit").unwrap(), "5");
        assert_eq!(
            resp.metadata().get("x-ratelimit-remaining").unwrap().to_str().unwrap(),
            (4 - i).to_string()
        );
    }
    let err = gw.list_workflows(pb::ListWorkflowsRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert_eq!(err.metadata().get("retry-after").unwrap(), "1", "1/R = 0.5 s, rounded up");
    let retry = err.get_details_retry_info().expect("google.rpc.RetryInfo");
    let delay = retry.retry_delay.expect("a retry delay");
    assert!(delay > Duration::ZERO && delay <= Duration::from_millis(500), "{delay:?}");
    // Health stays reachable whatever the limit.
    assert_eq!(Mesh::health(addr, "").await, Some(1));
    stop.cancel();
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_on_one_redis_admit_the_limit_once_not_twice() {
    const RPS: u32 = 100;
    const BURST: u32 = 20;
    let redis = RedisServer::start();
    let mesh = Mesh::start(&redis.url(), MeshOptions { worker_concurrency: 0, ..Default::default() }).await;
    let stop = CancellationToken::new();
    let limit = aura_ratelimit::Limit { rps: RPS, burst: BURST };
    let a = gateway(&mesh, &redis, limit, &stop).await;
    let b = gateway(&mesh, &redis, limit, &stop).await;
    // Warm the connections so the window measures only calls.
    for addr in [a, b] {
        client(addr).await;
    }
    let start = Instant::now();
    let window = Duration::from_secs(5);
    let mut tasks = Vec::new();
    for i in 0..6 {
        let addr = if i % 2 == 0 { a } else { b };
        tasks.push(tokio::spawn(async move {
            let mut gw = client(addr).await;
            let (mut ok, mut denied) = (0u64, 0u64);
            while start.elapsed() < window {
                match gw.list_workflows(pb::ListWorkflowsRequest::default()).await {
                    Ok(_) => ok += 1,
                    Err(e) if e.code() == Code::ResourceExhausted => denied += 1,
                    Err(e) => panic!("{e:?}"),
                }
            }
            (ok, denied)
        }));
    }
    let (mut ok, mut denied) = (0, 0);
    for t in tasks {
        let (o, d) = t.await.unwrap();
        ok += o;
        denied += d;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let expected = f64::from(BURST) + f64::from(RPS) * elapsed;
    assert!(denied > ok, "the load exceeded the limit (admitted {ok}, denied {denied})");
    let error = (ok as f64 - expected).abs() / expected;
    assert!(
        error <= 0.05,
        "admitted {ok} in {elapsed:.2} s; one shared limit allows {expected:.0} (off by {:.1}%)",
        error * 100.0
    );
    stop.cancel();
    mesh.stop().await;
}

#[tokio::test]
async fn a_method_group_with_its_own_limit_is_refused_while_the_default_group_passes() {
    let redis = RedisServer::start();
    let mut mesh =
        Mesh::start(&redis.url(), MeshOptions { worker_concurrency: 0, ..Default::default() }).await;
    let addr = mesh
        .add_gateway(|c| {
            c.rate_limit = Some(aura_ratelimit::Limit { rps: 1000, burst: 2000 });
            c.rate_limit_groups = [("tasks".to_string(), aura_ratelimit::Limit { rps: 1, burst: 1 })].into();
        })
        .await;
    let mut gw = client(addr).await;
    // A poll that answers at once: an empty queue, a wait of 1 ms.
    let poll = || pb::PollTasksRequest {
        worker_id: "w".into(),
        queues: vec!["ext".into()],
        max_tasks: 1,
        wait: Some(prost_types::Duration { seconds: 0, nanos: 1_000_000 }),
    };
    let first = gw.poll_tasks(poll()).await.expect("the task group's one token");
    assert_eq!(first.metadata().get("x-ratelimit-limit").unwrap(), "1");
    let err = gw.poll_tasks(poll()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("(tasks)"), "{}", err.message());
    for _ in 0..3 {
        let resp = gw.list_workflows(pb::ListWorkflowsRequest::default()).await.expect("the default group");
        assert_eq!(resp.metadata().get("x-ratelimit-limit").unwrap(), "2000");
    }
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_in_flight_calls_are_shed_with_unavailable_and_health_still_answers() {
    let redis = RedisServer::start();
    let mesh = Mesh::start(&redis.url(), MeshOptions { worker_concurrency: 0, ..Default::default() }).await;
    let stop = CancellationToken::new();
    let addr = gateway_with(&mesh, &redis, &stop, |c| c.max_in_flight = 1).await;
    let mut gw = client(addr).await;
    gw.get_queue_stats(pb::GetQueueStatsRequest { queue: "builtin".into() }).await.expect("one call passes");

    // A long poll on an empty queue holds the only slot. It races the calls below for it:
    // when it loses (it is shed itself and ends at once), it is started again.
    let poll = || {
        tokio::spawn(async move {
            client(addr)
                .await
                .poll_tasks(pb::PollTasksRequest {
                    worker_id: "w".into(),
                    queues: vec!["empty".into()],
                    max_tasks: 1,
                    wait: Some(prost_types::Duration { seconds: 5, nanos: 0 }),
                })
                .await
        })
    };
    let mut long_poll = poll();
    let deadline = Instant::now() + Duration::from_secs(20);
    let shed = loop {
        assert!(Instant::now() < deadline, "never shed while a long poll held the only slot");
        if long_poll.is_finished() {
            long_poll = poll();
        }
        match gw.get_queue_stats(pb::GetQueueStatsRequest { queue: "builtin".into() }).await {
            Err(status) if status.code() == Code::Unavailable => break status,
            Err(status) => panic!("unexpected {status:?}"),
            Ok(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    assert!(shed.message().contains("--max-in-flight"), "{}", shed.message());
    assert_eq!(Mesh::health(addr, "").await, Some(1), "health is never shed");
    let polled = long_poll.await.unwrap().expect("the long poll itself completes");
    assert!(polled.into_inner().tasks.is_empty());
    gw.get_queue_stats(pb::GetQueueStatsRequest { queue: "builtin".into() })
        .await
        .expect("the slot is free again");
    stop.cancel();
}

#[tokio::test]
async fn a_method_can_cost_more_than_one_token() {
    let redis = RedisServer::start();
    let mesh = Mesh::start(&redis.url(), MeshOptions { worker_concurrency: 0, ..Default::default() }).await;
    let stop = CancellationToken::new();
    let addr = gateway_with(&mesh, &redis, &stop, |c| {
        c.rate_limit = Some(aura_ratelimit::Limit { rps: 1, burst: 5 });
        c.method_costs = [("GetQueueStats".to_string(), 3)].into();
    })
    .await;
    let mut gw = client(addr).await;
    let stats = || pb::GetQueueStatsRequest { queue: "builtin".into() };
    let first = gw.get_queue_stats(stats()).await.expect("3 of 5 tokens");
    assert_eq!(first.metadata().get("x-ratelimit-remaining").unwrap(), "2");
    let refused = gw.get_queue_stats(stats()).await.expect_err("3 more than the 2 left");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    // A call of cost 1 still fits in what is left.
    let cheap = gw.get_workflow(pb::GetWorkflowRequest { name: "none".into(), ..Default::default() }).await;
    assert_eq!(cheap.expect_err("no such workflow").code(), Code::NotFound, "limited only by its own cost");
    // Unknown methods are refused when configured.
    let err = aura_ratelimit::parse_method_costs(&["Nope=3"], &["GetRun"]).unwrap_err();
    assert!(err.to_string().contains("unknown method \"Nope\""), "{err}");
    assert!(aura_ratelimit::parse_method_costs(&["GetRun=0"], &["GetRun"]).is_err());
    assert!(aura_gateway::gateway_methods().iter().any(|m| m == "StartRuns"));
    stop.cancel();
}

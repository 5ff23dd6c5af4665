//! Envoy's rate limit service on the Gateway (`--envoy-rls`): real tonic clients over real
//! sockets, the real Redis limiter. A descriptor is a bucket; domain `aura` names the
//! Gateway's own tenant buckets; bad input is INVALID_ARGUMENT; no API key is needed.

use std::net::SocketAddr;

use aura_proto::{
    envoy::{
        extensions::common::ratelimit::v3::{
            RateLimitDescriptor,
            rate_limit_descriptor::{Entry, RateLimitOverride},
        },
        service::ratelimit::v3::{
            RateLimitRequest, RateLimitResponse, rate_limit_response::Code as RlsCode,
            rate_limit_service_client::RateLimitServiceClient,
        },
        r#type::v3::RateLimitUnit,
    },
    v1 as pb,
};
use aura_testkit::{
    RedisServer,
    mesh::{Mesh, MeshOptions},
};
use tonic::{Code, Request, transport::Channel};
use tonic_types::StatusExt;

async fn rls(addr: SocketAddr) -> RateLimitServiceClient<Channel> {
    RateLimitServiceClient::new(Mesh::channel(addr).await)
}

fn descriptor(entries: &[(&str, &str)], per_minute: Option<u32>) -> RateLimitDescriptor {
    RateLimitDescriptor {
        entries: entries.iter().map(|(k, v)| Entry { key: k.to_string(), value: v.to_string() }).collect(),
        limit: per_minute
            .map(|n| RateLimitOverride { requests_per_unit: n, unit: RateLimitUnit::Minute.into() }),
    }
}

fn request(domain: &str, descriptors: Vec<RateLimitDescriptor>, hits: u32) -> RateLimitRequest {
    RateLimitRequest { domain: domain.to_string(), descriptors, hits_addend: hits }
}

fn codes(resp: &RateLimitResponse) -> Vec<RlsCode> {
    resp.statuses.iter().map(|s| s.code()).collect()
}

async fn mesh(redis: &RedisServer) -> Mesh {
    Mesh::start(&redis.url(), MeshOptions { worker_concurrency: 0, rate_limit: None, ..Default::default() })
        .await
}

#[tokio::test]
async fn a_descriptor_is_a_bucket_of_its_own_limit_and_needs_no_api_key() {
    let redis = RedisServer::start();
    let mut mesh = mesh(&redis).await;
    // Authentication on: Envoy calls without an AURA key.
    let addr = mesh
        .add_gateway(|c| {
            c.envoy_rls = true;
            c.insecure_no_auth = false;
        })
        .await;
    let mut client = rls(addr).await;
    let ten_a_minute = |ip| descriptor(&[("remote_address", ip)], Some(3));

    for left in [2, 1, 0] {
        let resp =
            client.should_rate_limit(request("edge", vec![ten_a_minute("10.0.0.1")], 0)).await.unwrap();
        let resp = resp.into_inner();
        assert_eq!(resp.overall_code(), RlsCode::Ok);
        let status = &resp.statuses[0];
        assert_eq!(status.limit_remaining, left);
        let limit = status.current_limit.as_ref().expect("current limit");
        assert_eq!((limit.requests_per_unit, limit.unit), (3, 2), "3 per MINUTE");
        assert!(status.duration_until_reset.is_some());
    }
    let resp = client.should_rate_limit(request("edge", vec![ten_a_minute("10.0.0.1")], 0)).await.unwrap();
    let resp = resp.into_inner();
    assert_eq!(resp.overall_code(), RlsCode::OverLimit);
    let until = resp.statuses[0].duration_until_reset.expect("when to retry");
    assert!(until.seconds > 0 || until.nanos > 0, "{until:?}");

    // Another value, another domain: other buckets. With one over, the whole request is.
    let both = vec![ten_a_minute("10.0.0.1"), ten_a_minute("10.0.0.2")];
    let resp = client.should_rate_limit(request("edge", both, 0)).await.unwrap().into_inner();
    assert_eq!(codes(&resp), [RlsCode::OverLimit, RlsCode::Ok]);
    assert_eq!(resp.overall_code(), RlsCode::OverLimit);
    let resp = client.should_rate_limit(request("other", vec![ten_a_minute("10.0.0.1")], 0)).await.unwrap();
    assert_eq!(resp.into_inner().overall_code(), RlsCode::Ok);

    // hits_addend is the cost: 3 at once empty a fresh bucket of 3.
    let resp = client.should_rate_limit(request("edge", vec![ten_a_minute("10.0.0.3")], 3)).await.unwrap();
    let resp = resp.into_inner();
    assert_eq!((resp.overall_code(), resp.statuses[0].limit_remaining), (RlsCode::Ok, 0));
    mesh.stop().await;
}

#[tokio::test]
async fn domain_aura_spends_from_the_gateway_layers_tenant_bucket() {
    const BURST: u32 = 50;
    let redis = RedisServer::start();
    let mut mesh = mesh(&redis).await;
    let addr = mesh
        .add_gateway(|c| {
            c.envoy_rls = true;
            c.insecure_no_auth = false;
            // One token a second: the bucket does not refill noticeably during the test.
            c.rate_limit = Some(aura_ratelimit::Limit { rps: 1, burst: BURST });
        })
        .await;
    let store = aura_auth::KeyStore::new(aura_common::redis::connect(&redis.url()).await.unwrap(), "aura");
    let (key, _) = store.create("acme", "test").await.unwrap();
    let list = || {
        let mut req = Request::new(pb::ListWorkflowsRequest::default());
        req.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
        req
    };
    let mut gw = pb::gateway_client::GatewayClient::new(Mesh::channel(addr).await);
    let resp = gw.list_workflows(list()).await.unwrap();
    assert_eq!(resp.metadata().get("x-ratelimit-remaining").unwrap(), &(BURST - 1).to_string());

    // Envoy spends the rest of acme's default-group bucket...
    let mut client = rls(addr).await;
    let acme = descriptor(&[("tenant", "acme")], None);
    let resp = client.should_rate_limit(request("aura", vec![acme], BURST - 1)).await.unwrap().into_inner();
    assert_eq!(resp.overall_code(), RlsCode::Ok);
    assert_eq!(resp.statuses[0].limit_remaining, 0);
    let limit = resp.statuses[0].current_limit.as_ref().unwrap();
    assert_eq!((limit.requests_per_unit, limit.unit), (1, 1), "the tenant's limit, 1 per SECOND");
    // ...so the gateway's own layer refuses acme's next call,
    let err = gw.list_workflows(list()).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    // while acme's task group is another bucket.
    let tasks = descriptor(&[("tenant", "acme"), ("method_group", "tasks")], None);
    let resp = client.should_rate_limit(request("aura", vec![tasks], 0)).await.unwrap().into_inner();
    assert_eq!((resp.overall_code(), resp.statuses[0].limit_remaining), (RlsCode::Ok, BURST - 1));
    mesh.stop().await;
}

#[tokio::test]
async fn bad_requests_are_invalid_argument_naming_the_field() {
    let redis = RedisServer::start();
    let mut mesh = mesh(&redis).await;
    let addr = mesh.add_gateway(|c| c.envoy_rls = true).await;
    let mut client = rls(addr).await;
    let ok = || vec![descriptor(&[("k", "v")], None)];
    let cases = [
        (request("", ok(), 0), "domain"),
        (request("edge", vec![], 0), "descriptors"),
        (request("edge", vec![descriptor(&[], None)], 0), "descriptors[0].entries"),
        (
            request("edge", vec![descriptor(&[("k", "v")], None), descriptor(&[("k", "")], None)], 0),
            "descriptors[1].entries[0]",
        ),
        (
            request("edge", vec![descriptor(&[("k", "v")], Some(0))], 0),
            "descriptors[0].limit.requests_per_unit",
        ),
        (request("aura", vec![descriptor(&[("user", "x")], None)], 0), "descriptors[0].entries"),
    ];
    for (req, field) in cases {
        let err = client.should_rate_limit(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        let bad = err.get_details_bad_request().expect("google.rpc.BadRequest");
        assert_eq!(bad.field_violations[0].field, field, "{err:?}");
    }
    mesh.stop().await;
}

#[tokio::test]
async fn it_is_served_only_when_turned_on() {
    let redis = RedisServer::start();
    let mut mesh = mesh(&redis).await;
    let addr = mesh.add_gateway(|_| {}).await;
    let err =
        rls(addr).await.should_rate_limit(request("edge", vec![descriptor(&[("k", "v")], None)], 0)).await;
    assert_eq!(err.unwrap_err().code(), Code::Unimplemented);
    mesh.stop().await;
}

#[tokio::test]
async fn with_redis_down_a_fail_closed_gateway_says_over_limit() {
    let mut redis = RedisServer::start();
    let mut mesh = mesh(&redis).await;
    let addr = mesh
        .add_gateway(|c| {
            c.envoy_rls = true;
            c.rate_limit_fail = aura_ratelimit::FailMode::Closed;
        })
        .await;
    let mut client = rls(addr).await;
    let req = || request("edge", vec![descriptor(&[("k", "v")], Some(100))], 0);
    assert_eq!(client.should_rate_limit(req()).await.unwrap().into_inner().overall_code(), RlsCode::Ok);
    redis.kill();
    let resp = client.should_rate_limit(req()).await.unwrap().into_inner();
    assert_eq!(resp.overall_code(), RlsCode::OverLimit, "{resp:?}");
    mesh.stop().await;
}

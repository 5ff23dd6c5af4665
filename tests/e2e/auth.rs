//! The Gateway's authentication: every aura.v1.Gateway call needs a valid API key; health
//! and reflection stay open.

use std::time::Duration;

use aura_proto::v1 as pb;
use aura_testkit::{
    RedisServer,
    mesh::{Mesh, MeshOptions},
    wait_until,
};
use tonic::{Code, Request};

fn with_auth<T>(msg: T, header: Option<&str>) -> Request<T> {
    let mut req = Request::new(msg);
    if let Some(h) = header {
        req.metadata_mut().insert("authorization", h.parse().unwrap());
    }
    req
}

#[tokio::test]
async fn api_keys_are_required_checked_and_revocable() {
    let redis = RedisServer::start();
    let mesh =
        Mesh::start(&redis.url(), MeshOptions { auth: true, worker_concurrency: 0, ..Default::default() })
            .await;
    let store = aura_auth::KeyStore::new(aura_common::redis::connect(&redis.url()).await.unwrap(), "aura");
    let (key, record) = store.create("acme", "test").await.unwrap();
    let mut gw = mesh.gateway().await;
    let list = || pb::ListWorkflowsRequest::default();

    for (header, why) in [
        (None, "missing API key"),
        (Some("Basic abc"), "malformed authorization header"),
        (Some("Bearer "), "malformed authorization header"),
        (Some("Bearer aura_not_a_real_key_at_all_000000000"), "unknown or revoked API key"),
    ] {
        let err = gw.list_workflows(with_auth(list(), header)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{header:?}");
        assert!(err.message().contains(why), "{header:?}: {}", err.message());
    }
    let bearer = format!("Bearer {key}");
    gw.list_workflows(with_auth(list(), Some(&bearer))).await.expect("a valid key is accepted");

    // Health and reflection need no key (probes, grpcurl list).
    assert_eq!(Mesh::health(mesh.gateway, "").await, Some(1));

    store.revoke(&record.id).await.unwrap();
    wait_until("revocation to reach the gateway", Duration::from_secs(5), || {
        let mut gw = gw.clone();
        let bearer = bearer.clone();
        async move {
            matches!(gw.list_workflows(with_auth(list(), Some(&bearer))).await, Err(e) if e.code() == Code::Unauthenticated)
        }
    })
    .await;
    mesh.stop().await;
}

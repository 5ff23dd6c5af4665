//! Faults: Redis goes away and comes back; AURA follows without a restart.

use std::time::Duration;

use aura_e2e::{input, spec, wait_for_run};
use aura_proto::v1 as pb;
use aura_testkit::{
    Persistence, RedisServer,
    mesh::{Mesh, MeshOptions},
    wait_until,
};
use serde_json::json;
use tonic::Code;

#[tokio::test]
async fn redis_outage_turns_health_not_serving_and_calls_unavailable_then_recovers() {
    let mut redis = RedisServer::start_with(Persistence::AofAlways, &[]);
    let mesh = Mesh::start(&redis.url(), MeshOptions::default()).await;
    let mut gw = mesh.gateway().await;
    let wf = spec(json!({"name": "r", "steps": [{"id": "s", "kind": "noop"}]}));
    gw.register_workflow(pb::RegisterWorkflowRequest { spec: Some(wf) }).await.unwrap();
    let addrs = [mesh.gateway, mesh.scheduler, mesh.worker.unwrap(), mesh.events];
    for addr in addrs {
        wait_until(
            "SERVING",
            Duration::from_secs(10),
            || async move { Mesh::health(addr, "").await == Some(1) },
        )
        .await;
    }

    redis.kill();
    for addr in addrs {
        wait_until("NOT_SERVING while redis is down", Duration::from_secs(10), || async move {
            Mesh::health(addr, "").await == Some(2)
        })
        .await;
    }
    for addr in addrs {
        assert_eq!(Mesh::health(addr, "liveness").await, Some(1), "liveness does not follow Redis");
    }
    let err = gw
        .start_run(pb::StartRunRequest { workflow_name: "r".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");

    redis.restart();
    for addr in addrs {
        wait_until("SERVING again", Duration::from_secs(20), || async move {
            Mesh::health(addr, "").await == Some(1)
        })
        .await;
    }
    // The same gateway connection works again, and the worker picks up new work.
    let start = std::time::Instant::now();
    let run_id = loop {
        let req =
            pb::StartRunRequest { workflow_name: "r".into(), input: input(json!({})), ..Default::default() };
        match gw.start_run(req).await {
            Ok(resp) => break resp.into_inner().run.unwrap().run_id,
            Err(err) => assert!(start.elapsed() < Duration::from_secs(20), "StartRun still failing: {err:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let run = wait_for_run(&mut gw, &run_id, Duration::from_secs(30)).await;
    assert_eq!(run.state, pb::RunState::Succeeded as i32);
    mesh.stop().await;
}

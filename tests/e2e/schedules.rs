//! Cron schedules fire once per tick, whatever the number of scheduler replicas.

use std::{collections::HashSet, time::Duration};

use aura_e2e::{input, spec};
use aura_proto::v1 as pb;
use aura_testkit::{
    RedisServer,
    mesh::{Mesh, MeshOptions},
    wait_until,
};
use serde_json::json;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_schedule_fires_once_per_tick_with_three_replicas() {
    let redis = RedisServer::start();
    let mesh = Mesh::start(&redis.url(), MeshOptions { schedulers: 3, ..Default::default() }).await;
    let mut gw = mesh.gateway().await;
    let wf = spec(json!({"name": "tick", "steps": [{"id": "s", "kind": "noop"}]}));
    gw.register_workflow(pb::RegisterWorkflowRequest { spec: Some(wf) }).await.unwrap();
    let schedule = gw
        .create_schedule(pb::CreateScheduleRequest {
            workflow_name: "tick".into(),
            cron: "* * * * * *".into(),
            input: input(json!({"from": "cron"})),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .schedule
        .unwrap();
    assert!(schedule.next_fire_time.is_some());
    let list_runs = |gw: pb::gateway_client::GatewayClient<tonic::transport::Channel>| async move {
        let mut gw = gw;
        let req = pb::ListRunsRequest { workflow_name: "tick".into(), page_size: 1000, ..Default::default() };
        gw.list_runs(req).await.unwrap().into_inner().runs
    };
    wait_until("four scheduled runs", Duration::from_secs(30), || {
        let gw = gw.clone();
        async move { list_runs(gw).await.len() >= 4 }
    })
    .await;
    gw.delete_schedule(pb::DeleteScheduleRequest { schedule_id: schedule.schedule_id.clone() })
        .await
        .unwrap();
    let runs = list_runs(gw.clone()).await;
    let ticks: HashSet<String> = runs.iter().map(|r| r.idempotency_key.clone()).collect();
    assert_eq!(ticks.len(), runs.len(), "two runs for one tick: {ticks:?}");
    assert!(ticks.iter().all(|k| k.starts_with(&format!("schedule:{}:", schedule.schedule_id))));
    for run in &runs {
        assert_eq!(aura_proto::json::struct_to_json(run.input.as_ref().unwrap()), json!({"from": "cron"}));
    }
    let listed = gw.list_schedules(pb::ListSchedulesRequest {}).await.unwrap().into_inner().schedules;
    assert!(listed.is_empty());
    let err = gw
        .delete_schedule(pb::DeleteScheduleRequest { schedule_id: schedule.schedule_id })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    mesh.stop().await;
}

#[tokio::test]
async fn invalid_cron_and_unknown_workflow_are_rejected() {
    let redis = RedisServer::start();
    let mesh = Mesh::start(&redis.url(), MeshOptions { worker_concurrency: 0, ..Default::default() }).await;
    let mut gw = mesh.gateway().await;
    let wf = spec(json!({"name": "c", "steps": [{"id": "s", "kind": "noop"}]}));
    gw.register_workflow(pb::RegisterWorkflowRequest { spec: Some(wf) }).await.unwrap();
    for cron in ["", "61 * * * *", "* * *", "not cron at all"] {
        let req =
            pb::CreateScheduleRequest { workflow_name: "c".into(), cron: cron.into(), ..Default::default() };
        let err = gw.create_schedule(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{cron:?}: {err:?}");
        assert!(err.message().starts_with("cron:"), "{}", err.message());
    }
    let req = pb::CreateScheduleRequest {
        workflow_name: "ghost".into(),
        cron: "* * * * *".into(),
        ..Default::default()
    };
    assert_eq!(gw.create_schedule(req).await.unwrap_err().code(), Code::NotFound);
    mesh.stop().await;
}

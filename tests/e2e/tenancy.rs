//! Tenant isolation at the Gateway: a tenant sees and touches only its own workflows, runs,
//! queues, topics and schedules; another tenant's are NOT_FOUND, as if they did not exist.

use std::time::Duration;

use aura_e2e::spec;
use aura_proto::{json, v1 as pb};
use aura_testkit::{
    RedisServer,
    mesh::{Mesh, MeshOptions},
};
use serde_json::json;
use tonic::{Code, Request, transport::Channel};

struct Tenant {
    gw: pb::gateway_client::GatewayClient<Channel>,
    bearer: String,
}

impl Tenant {
    fn req<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        req.metadata_mut().insert("authorization", self.bearer.parse().unwrap());
        req
    }
}

async fn tenant(mesh: &Mesh, store: &aura_auth::KeyStore, name: &str) -> Tenant {
    let (key, _) = store.create(name, "test").await.unwrap();
    Tenant { gw: mesh.gateway().await, bearer: format!("Bearer {key}") }
}

fn poll(queue: &str) -> pb::PollTasksRequest {
    pb::PollTasksRequest {
        worker_id: "w".into(),
        queues: vec![queue.into()],
        max_tasks: 10,
        wait: Some(prost_types::Duration { seconds: 0, nanos: 200_000_000 }),
    }
}

#[tokio::test]
async fn tenants_see_only_their_own_objects() {
    let redis = RedisServer::start();
    let mesh =
        Mesh::start(&redis.url(), MeshOptions { auth: true, worker_concurrency: 0, ..Default::default() })
            .await;
    let store = aura_auth::KeyStore::new(aura_common::redis::connect(&redis.url()).await.unwrap(), "aura");
    let mut acme = tenant(&mesh, &store, "acme").await;
    let mut globex = tenant(&mesh, &store, "globex").await;
    let wf =
        spec(json!({"name": "wf", "steps": [{"id": "x", "kind": "external", "config": {"queue": "q"}}]}));

    // The same name in two tenants is two workflows, both version 1.
    for t in [&mut acme, &mut globex] {
        let req = t.req(pb::RegisterWorkflowRequest { spec: Some(wf.clone()) });
        let resp = t.gw.register_workflow(req).await.unwrap().into_inner();
        assert!(resp.created);
        let registered = resp.workflow.unwrap();
        assert_eq!((registered.version, registered.spec.unwrap().name), (1, "wf".to_string()));
    }
    let listed =
        acme.gw.list_workflows(acme.req(pb::ListWorkflowsRequest::default())).await.unwrap().into_inner();
    assert_eq!(
        listed.workflows.iter().map(|w| w.spec.as_ref().unwrap().name.clone()).collect::<Vec<_>>(),
        vec!["wf"]
    );
    let got = acme
        .gw
        .get_workflow(acme.req(pb::GetWorkflowRequest { name: "wf".into(), version: 0 }))
        .await
        .unwrap();
    let step = &got.into_inner().workflow.unwrap().spec.unwrap().steps[0];
    assert_eq!(
        json::struct_to_json(step.config.as_ref().unwrap()),
        json!({"queue": "q"}),
        "names come back as given"
    );

    let start = pb::StartRunRequest { workflow_name: "wf".into(), ..Default::default() };
    let run = acme.gw.start_run(acme.req(start)).await.unwrap().into_inner().run.unwrap();
    assert_eq!(run.workflow_name, "wf");

    // Another tenant cannot see or touch the run.
    let err =
        globex.gw.get_run(globex.req(pb::GetRunRequest { run_id: run.run_id.clone() })).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let cancel = pb::CancelRunRequest { run_id: run.run_id.clone(), reason: String::new() };
    assert_eq!(globex.gw.cancel_run(globex.req(cancel)).await.unwrap_err().code(), Code::NotFound);
    let watch = pb::WatchRunRequest { run_id: run.run_id.clone() };
    assert_eq!(globex.gw.watch_run(globex.req(watch)).await.err().unwrap().code(), Code::NotFound);
    let sub = pb::SubscribeRequest { patterns: vec![format!("runs.{}", run.run_id)], ..Default::default() };
    assert_eq!(globex.gw.subscribe(globex.req(sub)).await.err().unwrap().code(), Code::NotFound);
    let sub = pb::SubscribeRequest { patterns: vec!["runs.*".into()], ..Default::default() };
    assert_eq!(globex.gw.subscribe(globex.req(sub)).await.err().unwrap().code(), Code::InvalidArgument);
    let runs = globex
        .gw
        .list_runs(globex.req(pb::ListRunsRequest { workflow_name: "wf".into(), ..Default::default() }));
    assert!(runs.await.unwrap().into_inner().runs.is_empty());

    // Queues are per tenant too: only acme's worker gets acme's task, under acme's names.
    assert!(globex.gw.poll_tasks(globex.req(poll("q"))).await.unwrap().into_inner().tasks.is_empty());
    let tasks = acme.gw.poll_tasks(acme.req(poll("q"))).await.unwrap().into_inner().tasks;
    assert_eq!(tasks.len(), 1);
    assert_eq!((tasks[0].queue.as_str(), tasks[0].workflow_name.as_str()), ("q", "wf"));
    let err = acme.gw.poll_tasks(acme.req(poll("builtin"))).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let stats = globex.gw.get_queue_stats(globex.req(pb::GetQueueStatsRequest { queue: "q".into() }));
    let stats = stats.await.unwrap().into_inner().stats.unwrap();
    assert_eq!((stats.queue.as_str(), stats.active, stats.waiting), ("q", 0, 0));

    // A watch by the owner sees its events under its own names.
    let mut events = acme
        .gw
        .subscribe(
            acme.req(pb::SubscribeRequest { patterns: vec!["workflows.wf".into()], ..Default::default() }),
        )
        .await
        .unwrap()
        .into_inner();
    let report = pb::ReportTaskResultsRequest {
        worker_id: "w".into(),
        results: vec![pb::TaskResult {
            task_id: tasks[0].task_id.clone(),
            lease_token: tasks[0].lease_token.clone(),
            outcome: Some(pb::task_result::Outcome::Output(json::json_to_value(&json!("ok")))),
        }],
    };
    acme.gw.report_task_results(acme.req(report)).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(10), tokio_stream::StreamExt::next(&mut events))
        .await
        .expect("an event")
        .unwrap()
        .unwrap();
    assert_eq!(event.topic, "workflows.wf");
    assert_eq!(json::struct_to_json(event.payload.as_ref().unwrap())["workflow"], json!("wf"));

    // Schedules.
    let create = pb::CreateScheduleRequest {
        workflow_name: "wf".into(),
        cron: "0 0 1 1 *".into(),
        ..Default::default()
    };
    let schedule = acme.gw.create_schedule(acme.req(create)).await.unwrap().into_inner().schedule.unwrap();
    assert_eq!(schedule.workflow_name, "wf");
    let theirs =
        globex.gw.list_schedules(globex.req(pb::ListSchedulesRequest {})).await.unwrap().into_inner();
    assert!(theirs.schedules.is_empty());
    let delete = pb::DeleteScheduleRequest { schedule_id: schedule.schedule_id.clone() };
    assert_eq!(
        globex.gw.delete_schedule(globex.req(delete.clone())).await.unwrap_err().code(),
        Code::NotFound
    );
    acme.gw.delete_schedule(acme.req(delete)).await.unwrap();
    mesh.stop().await;
}

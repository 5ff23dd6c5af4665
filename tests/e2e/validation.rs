//! The Gateway refuses what can never succeed before it costs the Scheduler a call: bad
//! fields are INVALID_ARGUMENT naming the field (the Scheduler's gRPC counters prove it never
//! saw them), and an over-size message is RESOURCE_EXHAUSTED naming the limit and the flag,
//! after which the gateway keeps serving.

use aura_e2e::{input, spec};
use aura_proto::v1 as pb;
use aura_testkit::{
    RedisServer,
    mesh::{Mesh, MeshOptions},
};
use tonic::Code;
use tonic_types::StatusExt;

fn field_of(err: &tonic::Status) -> String {
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let bad = err.get_details_bad_request().expect("google.rpc.BadRequest");
    bad.field_violations[0].field.clone()
}

#[tokio::test]
async fn bad_requests_are_refused_at_the_gateway_naming_the_field() {
    let redis = RedisServer::start();
    let mesh = Mesh::start(&redis.url(), MeshOptions { worker_concurrency: 0, ..Default::default() }).await;
    let mut gw = mesh.gateway().await;

    let err = gw.get_run(pb::GetRunRequest { run_id: "not-a-run".into() }).await.unwrap_err();
    assert_eq!(field_of(&err), "run_id");
    let err = gw.start_run(pb::StartRunRequest { priority: 5, ..Default::default() }).await.unwrap_err();
    assert_eq!(field_of(&err), "workflow_name");
    let err = gw
        .start_run(pb::StartRunRequest {
            workflow_name: "hello".into(),
            priority: 5000,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(field_of(&err), "priority");
    let err = gw
        .list_workflows(pb::ListWorkflowsRequest { page_size: 5000, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(field_of(&err), "page_size");
    let err = gw
        .poll_tasks(pb::PollTasksRequest {
            queues: vec!["ok".into(), "has space".into()],
            max_tasks: 1,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(field_of(&err), "queues[1]");
    let bad_spec = spec(serde_json::json!({"name": "-bad", "steps": [{"id": "a", "kind": "noop"}]}));
    let err = gw.register_workflow(pb::RegisterWorkflowRequest { spec: Some(bad_spec) }).await.unwrap_err();
    assert_eq!(field_of(&err), "spec.name");
    let err = gw
        .create_schedule(pb::CreateScheduleRequest {
            workflow_name: "hello".into(),
            cron: "every minute".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(field_of(&err), "cron");

    for method in ["GetRun", "StartRun", "ListWorkflows", "PollTasks", "RegisterWorkflow", "CreateSchedule"] {
        assert_eq!(mesh.scheduler_calls(method), 0, "the scheduler saw a {method}");
    }
    // The counter does count what is forwarded: a well-formed id of no run reaches it.
    let err =
        gw.get_run(pb::GetRunRequest { run_id: "01ARZ3NDEKTSV4RRFFQ69G5FAV-0".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert_eq!(mesh.scheduler_calls("GetRun"), 1);
    mesh.stop().await;
}

#[tokio::test]
async fn an_over_size_message_is_resource_exhausted_and_the_gateway_serves_on() {
    const LIMIT: usize = 64 * 1024;
    let redis = RedisServer::start();
    let mut mesh =
        Mesh::start(&redis.url(), MeshOptions { worker_concurrency: 0, ..Default::default() }).await;
    let addr = mesh.add_gateway(|c| c.max_message_bytes = LIMIT).await;
    let mut gw = pb::gateway_client::GatewayClient::new(Mesh::channel(addr).await);
    let hello = spec(serde_json::json!({"name": "hello", "steps": [{"id": "a", "kind": "noop"}]}));
    gw.register_workflow(pb::RegisterWorkflowRequest { spec: Some(hello) }).await.unwrap();
    let start = |text: String| pb::StartRunRequest {
        workflow_name: "hello".into(),
        input: input(serde_json::json!({ "text": text })),
        ..Default::default()
    };

    let err = gw.start_run(start("x".repeat(2 * LIMIT))).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains(&LIMIT.to_string()), "names the limit: {}", err.message());
    assert!(err.message().contains("--max-message-bytes"), "names the flag: {}", err.message());
    assert_eq!(mesh.scheduler_calls("StartRun"), 0);

    // Same connection, next call: served.
    let resp = gw.start_run(start("small".into())).await.expect("the gateway serves on");
    assert!(resp.into_inner().run.is_some());
    mesh.stop().await;
}

//! The vertical slice through the Gateway, and bad input answered precisely.

use std::time::Duration;

use aura_e2e::{input, run_to_end, spec, wait_for_run};
use aura_proto::v1 as pb;
use aura_testkit::{
    RedisServer,
    mesh::{Mesh, MeshOptions},
};
use serde_json::json;
use tonic::Code;
use tonic_types::StatusExt;

#[tokio::test]
async fn noop_run_succeeds_end_to_end_through_the_gateway() {
    let redis = RedisServer::start();
    let mesh = Mesh::start(&redis.url(), MeshOptions::default()).await;
    let mut gw = mesh.gateway().await;
    let wf = spec(json!({"name": "one", "steps": [{"id": "only", "kind": "noop"}]}));
    let registered = gw
        .register_workflow(pb::RegisterWorkflowRequest { spec: Some(wf.clone()) })
        .await
        .unwrap()
        .into_inner();
    assert!(registered.created);
    assert_eq!(registered.workflow.unwrap().version, 1);
    // The same spec again is the same version; a changed one is the next.
    let again = gw
        .register_workflow(pb::RegisterWorkflowRequest { spec: Some(wf.clone()) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((again.created, again.workflow.unwrap().version), (false, 1));

    let run = run_to_end(&mut gw, "one", json!({"x": 1})).await;
    assert_eq!(run.state, pb::RunState::Succeeded as i32, "{run:?}");
    assert_eq!(run.steps[0].state, pb::StepState::Succeeded as i32);
    assert_eq!(run.steps[0].attempts, 1);
    let output = aura_proto::json::value_to_json(run.output.as_ref().unwrap());
    assert_eq!(output, json!({"only": {"x": 1}}), "noop returns its input");
    mesh.stop().await;
}

#[tokio::test]
async fn dag_passes_outputs_and_watch_streams_every_event_in_order() {
    let redis = RedisServer::start();
    let mesh = Mesh::start(&redis.url(), MeshOptions::default()).await;
    let mut gw = mesh.gateway().await;
    let wf = spec(json!({"name": "dag", "steps": [
        {"id": "a", "kind": "noop"},
        {"id": "b", "kind": "transform", "depends_on": ["a"], "config": {"jq": ".steps.a.output.n + 1"}},
        {"id": "c", "kind": "transform", "depends_on": ["a"], "config": {"jq": ".steps.a.output.n * 10"}},
        {"id": "d", "kind": "transform", "depends_on": ["b", "c"], "config": {"jq": ".steps.b.output + .steps.c.output"}},
        {"id": "e", "kind": "delay", "depends_on": ["d"], "config": {"seconds": 0.2}}
    ]}));
    gw.register_workflow(pb::RegisterWorkflowRequest { spec: Some(wf) }).await.unwrap();
    let run = gw
        .start_run(pb::StartRunRequest {
            workflow_name: "dag".into(),
            input: input(json!({"n": 4})),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .run
        .unwrap();
    let mut stream =
        gw.watch_run(pb::WatchRunRequest { run_id: run.run_id.clone() }).await.unwrap().into_inner();
    let mut types = Vec::new();
    let mut offsets = Vec::new();
    let mut step_events: Vec<(String, String)> = Vec::new();
    while let Some(event) = tokio_stream::StreamExt::next(&mut stream).await {
        let event = event.unwrap();
        offsets.push(event.offset.split(':').nth(1).unwrap().parse::<u64>().unwrap());
        let payload = aura_proto::json::struct_to_json(event.payload.as_ref().unwrap());
        assert_eq!(payload["run_id"], json!(run.run_id));
        assert_eq!(payload["workflow"], json!("dag"));
        if let Some(step) = payload["step_id"].as_str() {
            step_events.push((step.to_string(), event.r#type.clone()));
        }
        types.push(event.r#type);
    }
    // Events are in the order of the transitions themselves: each step is queued (roots
    // at start), then started, then succeeded; a dependent is queued only after its parents.
    assert_eq!(&types[..2], ["run.queued", "run.started"]);
    let position = |step: &str, ty: &str| step_events.iter().position(|(s, t)| s == step && t == ty);
    for step in ["a", "b", "c", "d", "e"] {
        let started =
            position(step, "step.started").unwrap_or_else(|| panic!("{step} started: {step_events:?}"));
        let succeeded = position(step, "step.succeeded").unwrap();
        assert!(started < succeeded, "{step_events:?}");
        if step != "a" {
            assert!(position(step, "step.queued").unwrap() < started, "{step_events:?}");
        }
    }
    for (parent, child) in [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("d", "e")] {
        assert!(
            position(parent, "step.succeeded").unwrap() < position(child, "step.queued").unwrap(),
            "{step_events:?}"
        );
    }
    assert_eq!(types.last().map(String::as_str), Some("run.succeeded"), "the stream ends with the run");
    assert_eq!(types.iter().filter(|t| *t == "step.succeeded").count(), 5);
    assert!(offsets.windows(2).all(|w| w[1] == w[0] + 1), "contiguous, in order: {offsets:?}");
    let run = wait_for_run(&mut gw, &run.run_id, Duration::from_secs(20)).await;
    assert_eq!(
        aura_proto::json::value_to_json(run.output.as_ref().unwrap()),
        json!({"e": {"delayed_seconds": 0.2}})
    );
    let d = run.steps.iter().find(|s| s.step_id == "d").unwrap();
    assert_eq!(aura_proto::json::value_to_json(d.output.as_ref().unwrap()), json!(45));
    mesh.stop().await;
}

fn bad_request_field(status: &tonic::Status) -> String {
    let details = status.get_error_details();
    details.bad_request().map(|b| b.field_violations[0].field.clone()).unwrap_or_default()
}

#[tokio::test]
async fn bad_input_gets_precise_statuses() {
    let redis = RedisServer::start();
    let mesh = Mesh::start(&redis.url(), MeshOptions { worker_concurrency: 0, ..Default::default() }).await;
    let mut gw = mesh.gateway().await;

    let err = gw
        .start_run(pb::StartRunRequest { workflow_name: "nope".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    let err = gw.start_run(pb::StartRunRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(bad_request_field(&err), "workflow_name");

    let err = gw.register_workflow(pb::RegisterWorkflowRequest { spec: None }).await.unwrap_err();
    assert_eq!((err.code(), bad_request_field(&err)), (Code::InvalidArgument, "spec".to_string()));

    let cycle = spec(json!({"name": "c", "steps": [
        {"id": "a", "kind": "noop", "depends_on": ["b"]}, {"id": "b", "kind": "noop", "depends_on": ["a"]}]}));
    let err = gw.register_workflow(pb::RegisterWorkflowRequest { spec: Some(cycle) }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("cycle"), "{}", err.message());

    let bad_jq = spec(
        json!({"name": "j", "steps": [{"id": "t", "kind": "transform", "config": {"jq": ".[ | oops"}}]}),
    );
    let err = gw.register_workflow(pb::RegisterWorkflowRequest { spec: Some(bad_jq) }).await.unwrap_err();
    assert_eq!(
        (err.code(), bad_request_field(&err)),
        (Code::InvalidArgument, "spec.steps[0].config.jq".to_string())
    );

    let err = gw.get_run(pb::GetRunRequest { run_id: "not-a-run".into() }).await.unwrap_err();
    assert_eq!((err.code(), bad_request_field(&err)), (Code::InvalidArgument, "run_id".to_string()));
    let err =
        gw.get_run(pb::GetRunRequest { run_id: "01M8DGSVV95MAA71FYR8TEPFV6-0".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let err = gw.poll_tasks(pb::PollTasksRequest { max_tasks: 1, ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut events = mesh.events().await;
    let err = events
        .publish(pb::PublishRequest { topic: String::new(), r#type: "t".into(), payload: None })
        .await
        .unwrap_err();
    assert_eq!((err.code(), bad_request_field(&err)), (Code::InvalidArgument, "topic".to_string()));
    let err = events
        .publish(pb::PublishRequest { topic: "runs.x".into(), r#type: "t".into(), payload: None })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "run topics are reserved");
    let err = events
        .get_history(pb::GetHistoryRequest { topic: "a.b".into(), from_offset: "nope".into(), limit: 10 })
        .await
        .unwrap_err();
    assert_eq!((err.code(), bad_request_field(&err)), (Code::InvalidArgument, "from_offset".to_string()));
    let err = gw
        .subscribe(pb::SubscribeRequest { patterns: vec!["a.>.b".into()], ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = gw
        .subscribe(pb::SubscribeRequest {
            patterns: vec!["a.b".into()],
            from_offset: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!((err.code(), bad_request_field(&err)), (Code::InvalidArgument, "from_offset".to_string()));
    mesh.stop().await;
}

#[tokio::test]
async fn every_service_reports_serving_health() {
    let redis = RedisServer::start();
    let mesh = Mesh::start(&redis.url(), MeshOptions::default()).await;
    for (addr, name) in [
        (mesh.gateway, "aura.v1.Gateway"),
        (mesh.scheduler, "aura.v1.Scheduler"),
        (mesh.worker.unwrap(), "aura.v1.Worker"),
        (mesh.events, "aura.v1.Events"),
    ] {
        aura_testkit::wait_until(&format!("{name} SERVING"), Duration::from_secs(10), || async move {
            Mesh::health(addr, name).await == Some(1) && Mesh::health(addr, "").await == Some(1)
        })
        .await;
    }
    let status = mesh.worker().await.get_status(pb::GetStatusRequest {}).await.unwrap().into_inner();
    assert_eq!(status.capacity, 16);
    mesh.stop().await;
}

#[tokio::test]
async fn get_metrics_reports_a_known_workload_exactly() {
    let redis = RedisServer::start();
    let mesh = Mesh::start(&redis.url(), MeshOptions::default()).await;
    let mut gw = mesh.gateway().await;
    // Fails (without retries: a jq error is fatal) when the input asks it to.
    let mixed = spec(json!({"name": "mixed", "steps": [
        {"id": "check", "kind": "transform",
         "config": {"jq": "if .input.fail then error(\"asked to fail\") else .input end"}},
    ]}));
    let other = spec(json!({"name": "other", "steps": [{"id": "only", "kind": "noop"}]}));
    for wf in [mixed, other] {
        gw.register_workflow(pb::RegisterWorkflowRequest { spec: Some(wf) }).await.unwrap();
    }
    let mut runs = Vec::new();
    for i in 0..23 {
        let (workflow, fail) = if i < 20 { ("mixed", i % 4 == 0) } else { ("other", false) };
        let req = pb::StartRunRequest {
            workflow_name: workflow.into(),
            input: input(json!({"fail": fail})),
            ..Default::default()
        };
        runs.push(gw.start_run(req).await.unwrap().into_inner().run.unwrap().run_id);
    }
    for run_id in &runs {
        wait_for_run(&mut gw, run_id, Duration::from_secs(30)).await;
    }
    let metrics = |workflow: &str| {
        let mut gw = gw.clone();
        let req = pb::GetMetricsRequest {
            workflow_name: workflow.into(),
            window: pb::MetricsWindow::LastHour as i32,
        };
        async move { gw.get_metrics(req).await.unwrap().into_inner().runs.unwrap() }
    };
    let kinds = |workflow: &str| {
        let mut gw = gw.clone();
        let req = pb::GetMetricsRequest {
            workflow_name: workflow.into(),
            window: pb::MetricsWindow::LastHour as i32,
        };
        async move { gw.get_metrics(req).await.unwrap().into_inner().step_kinds }
    };
    // Counters are written just after each final transition: wait for the last of them.
    aura_testkit::wait_until("every outcome is counted", Duration::from_secs(10), || async {
        let m = metrics("").await;
        m.runs_succeeded + m.runs_failed == 23 && m.durations_counted == 23
    })
    .await;
    let m = metrics("mixed").await;
    assert_eq!((m.runs_started, m.runs_succeeded, m.runs_failed, m.runs_cancelled), (20, 15, 5, 0), "{m:?}");
    assert_eq!(m.success_rate, 0.75);
    assert_eq!(m.steps_retried, 0, "a jq error is not retried");
    assert_eq!(m.durations_counted, 20);
    assert!(m.duration_p50_ms > 0.0, "{m:?}");
    assert!(m.duration_p50_ms <= m.duration_p95_ms && m.duration_p95_ms <= m.duration_p99_ms, "{m:?}");
    assert!(m.throughput_per_second > 0.0);
    assert!(m.queue_wait_p50_ms > 0.0, "every attempt waited some time in the queue: {m:?}");
    assert!(m.queue_wait_p50_ms <= m.queue_wait_p95_ms && m.queue_wait_p95_ms <= m.queue_wait_p99_ms);
    // Per step kind: one transform attempt per run of `mixed`; `other`'s noop steps apart.
    let mixed_kinds = kinds("mixed").await;
    assert_eq!(mixed_kinds.len(), 1, "{mixed_kinds:?}");
    assert_eq!((mixed_kinds[0].kind.as_str(), mixed_kinds[0].attempts_started), ("transform", 20));
    let all_kinds = kinds("").await;
    let started = |k: &str| all_kinds.iter().find(|x| x.kind == k).map_or(0, |x| x.attempts_started);
    assert_eq!((started("transform"), started("noop")), (20, 3), "{all_kinds:?}");
    let all = metrics("").await;
    assert_eq!((all.runs_started, all.runs_succeeded, all.runs_failed), (23, 18, 5), "{all:?}");
    let none = metrics("nosuch").await;
    assert_eq!((none.runs_started, none.durations_counted, none.duration_p99_ms), (0, 0, 0.0));
    mesh.stop().await;
}

#[tokio::test]
async fn a_new_version_reaches_every_scheduler_replica_through_pub_sub() {
    let redis = RedisServer::start();
    let mesh = Mesh::start(&redis.url(), MeshOptions { schedulers: 2, ..Default::default() }).await;
    let connect = |addr| async move {
        aura_proto::v1::scheduler_client::SchedulerClient::new(Mesh::channel(addr).await)
    };
    let (mut a, mut b) = (connect(mesh.schedulers[0]).await, connect(mesh.schedulers[1]).await);
    let register = |step: &str| pb::RegisterWorkflowRequest {
        spec: Some(spec(json!({"name": "cached", "steps": [{"id": step, "kind": "noop"}]}))),
    };
    let start = || pb::StartRunRequest { workflow_name: "cached".into(), ..Default::default() };
    a.register_workflow(register("first")).await.unwrap();
    // Replica B resolves (and caches) "latest" = 1.
    for _ in 0..3 {
        let run = b.start_run(start()).await.unwrap().into_inner().run.unwrap();
        assert_eq!(run.workflow_version, 1);
    }
    let v2 = a.register_workflow(register("second")).await.unwrap().into_inner();
    assert_eq!(v2.workflow.unwrap().version, 2);
    // B trusts its cache for a minute unless told: version 2 within seconds means the
    // registration on A invalidated it.
    aura_testkit::wait_until("replica B starts version 2", Duration::from_secs(10), || {
        let mut b = b.clone();
        async move { b.start_run(start()).await.unwrap().into_inner().run.unwrap().workflow_version == 2 }
    })
    .await;
    mesh.stop().await;
}

#[tokio::test]
async fn start_run_answers_what_get_run_then_reads() {
    let redis = RedisServer::start();
    // No worker polls the "nobody" queue, so the run stays as it was created.
    let mesh = Mesh::start(&redis.url(), MeshOptions::default()).await;
    let mut gw = mesh.gateway().await;
    let mut wf = spec(json!({"name": "still", "steps": [
        {"id": "a", "kind": "external", "config": {"queue": "nobody"}},
        {"id": "b", "kind": "external", "config": {"queue": "nobody"}, "depends_on": ["a"]},
    ]}));
    wf.max_concurrent_runs = 1;
    gw.register_workflow(pb::RegisterWorkflowRequest { spec: Some(wf) }).await.unwrap();
    let start = |key: &str| pb::StartRunRequest {
        workflow_name: "still".into(),
        input: input(json!({"order": 7})),
        priority: 9,
        idempotency_key: key.into(),
        ..Default::default()
    };
    // The first run is admitted; the second waits for the concurrency limit (all blocked).
    for key in ["first", "second"] {
        let started = gw.start_run(start(key)).await.unwrap().into_inner();
        assert!(started.created);
        let answered = started.run.unwrap();
        let read = gw.get_run(pb::GetRunRequest { run_id: answered.run_id.clone() }).await.unwrap();
        assert_eq!(answered, read.into_inner().run.unwrap(), "StartRun's run equals GetRun's ({key})");
        // A repeat of the key answers the same run.
        let again = gw.start_run(start(key)).await.unwrap().into_inner();
        assert!(!again.created);
        assert_eq!(again.run.unwrap().run_id, answered.run_id);
    }
    mesh.stop().await;
}

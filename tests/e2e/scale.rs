//! Many runs through replicated schedulers and workers, idempotency under concurrency, and
//! durability across a Redis crash.

use std::{collections::HashSet, time::Duration};

use aura_e2e::{input, spec, wait_for_run};
use aura_proto::v1 as pb;
use aura_testkit::{
    Persistence, RedisServer,
    mesh::{Mesh, MeshOptions},
    wait_until,
};
use serde_json::json;

async fn register_noop(gw: &mut pb::gateway_client::GatewayClient<tonic::transport::Channel>, name: &str) {
    let wf = spec(json!({"name": name, "steps": [{"id": "s", "kind": "noop"}]}));
    gw.register_workflow(pb::RegisterWorkflowRequest { spec: Some(wf) }).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_runs_on_two_schedulers_and_three_workers_none_lost_none_twice() {
    const RUNS: usize = 10_000;
    let redis = RedisServer::start();
    let options = MeshOptions {
        partitions: 2,
        worker_concurrency: 64,
        schedulers: 2,
        workers: 3,
        ..Default::default()
    };
    let mesh = Mesh::start(&redis.url(), options).await;
    let mut gw = mesh.gateway().await;
    register_noop(&mut gw, "bulk").await;
    let mut run_ids = HashSet::new();
    for batch in 0..RUNS / 1000 {
        let runs = (0..1000)
            .map(|i| pb::StartRunRequest {
                workflow_name: "bulk".into(),
                input: input(json!({"i": batch * 1000 + i})),
                ..Default::default()
            })
            .collect();
        let resp = gw.start_runs(pb::StartRunsRequest { runs }).await.unwrap().into_inner();
        for r in resp.results {
            assert_eq!(r.code, 0, "{}", r.message);
            run_ids.insert(r.run_id);
        }
    }
    assert_eq!(run_ids.len(), RUNS);
    wait_until("every run to finish", Duration::from_secs(300), || {
        let mut gw = gw.clone();
        async move {
            let stats = gw
                .get_queue_stats(pb::GetQueueStatsRequest { queue: "builtin".into() })
                .await
                .unwrap()
                .into_inner();
            stats.stats.unwrap().completed as usize >= RUNS
        }
    })
    .await;
    let stats =
        gw.get_queue_stats(pb::GetQueueStatsRequest { queue: "builtin".into() }).await.unwrap().into_inner();
    let stats = stats.stats.unwrap();
    assert_eq!(
        (stats.completed, stats.failed, stats.dead, stats.waiting, stats.active),
        (RUNS as u64, 0, 0, 0, 0)
    );
    // Every step ran exactly once: one attempt each, one recorded result each.
    let mut conn = redis.client();
    let keys: Vec<String> = redis::cmd("KEYS").arg("aura:*j:*").query(&mut conn).unwrap();
    assert_eq!(keys.len(), RUNS);
    let mut pipe = redis::pipe();
    for k in &keys {
        pipe.hmget(k, &["a", "s"]);
    }
    let rows: Vec<(u32, String)> = pipe.query(&mut conn).unwrap();
    assert!(rows.iter().all(|(a, s)| *a == 1 && s == "c"), "a step ran twice or did not finish");
    // Run metrics are recorded right after each report's transitions commit, so they trail
    // the queue's counters by a moment.
    wait_until("run metrics to count every run", Duration::from_secs(30), || {
        let mut gw = gw.clone();
        async move {
            let req = pb::GetMetricsRequest {
                workflow_name: "bulk".into(),
                window: pb::MetricsWindow::LastHour as i32,
            };
            let m = gw.get_metrics(req).await.unwrap().into_inner().runs.unwrap();
            (m.runs_started, m.runs_succeeded, m.runs_failed) == (RUNS as u64, RUNS as u64, 0)
        }
    })
    .await;
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_duplicate_starts_create_one_run() {
    let redis = RedisServer::start();
    let mesh =
        Mesh::start(&redis.url(), MeshOptions { schedulers: 2, partitions: 3, ..Default::default() }).await;
    let mut gw = mesh.gateway().await;
    register_noop(&mut gw, "idem").await;
    let calls = (0..50).map(|_| {
        let mut gw = gw.clone();
        tokio::spawn(async move {
            let req = pb::StartRunRequest {
                workflow_name: "idem".into(),
                idempotency_key: "order-42".into(),
                ..Default::default()
            };
            let resp = gw.start_run(req).await.unwrap().into_inner();
            (resp.run.unwrap().run_id, resp.created)
        })
    });
    let mut ids = HashSet::new();
    let mut created = 0;
    for call in calls.collect::<Vec<_>>() {
        let (id, c) = call.await.unwrap();
        ids.insert(id);
        created += usize::from(c);
    }
    assert_eq!((ids.len(), created), (1, 1));
    let runs = gw
        .list_runs(pb::ListRunsRequest { workflow_name: "idem".into(), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(runs.into_inner().runs.len(), 1);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_run_finishes_across_a_redis_crash_with_aof_always() {
    let mut redis = RedisServer::start_with(Persistence::AofAlways, &[]);
    let mesh = Mesh::start(&redis.url(), MeshOptions::default()).await;
    let mut gw = mesh.gateway().await;
    register_noop(&mut gw, "durable").await;
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let producer = {
        let mut gw = gw.clone();
        let progress = progress.clone();
        tokio::spawn(async move {
            // Calls made while Redis is down either fail (not acknowledged: fine) or wait
            // for the reconnect and succeed (acknowledged: must finish).
            let mut acknowledged = Vec::new();
            for i in 0..600 {
                let req = pb::StartRunRequest {
                    workflow_name: "durable".into(),
                    input: input(json!({"i": i})),
                    ..Default::default()
                };
                if let Ok(resp) = gw.start_run(req).await {
                    acknowledged.push(resp.into_inner().run.unwrap().run_id);
                }
                progress.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            acknowledged
        })
    };
    wait_until("some runs started", Duration::from_secs(30), || {
        let progress = progress.clone();
        async move { progress.load(std::sync::atomic::Ordering::SeqCst) >= 100 }
    })
    .await;
    redis.kill();
    let at_crash = progress.load(std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    redis.restart();
    let acknowledged = producer.await.unwrap();
    assert!(at_crash < 600, "the crash happened while runs were being started");
    assert!(acknowledged.len() > at_crash.saturating_sub(5), "runs before the crash were acknowledged");
    for run_id in &acknowledged {
        let run = wait_for_run(&mut gw, run_id, Duration::from_secs(60)).await;
        assert_eq!(run.state, pb::RunState::Succeeded as i32, "acknowledged run {run_id} was lost: {run:?}");
    }
    mesh.stop().await;
}

#[tokio::test]
async fn runs_beyond_a_workflows_concurrency_limit_wait_their_turn() {
    let redis = RedisServer::start();
    let mesh =
        Mesh::start(&redis.url(), MeshOptions { worker_concurrency: 0, partitions: 3, ..Default::default() })
            .await;
    let mut gw = mesh.gateway().await;
    // An external step: the test itself is the worker, so nothing depends on timing.
    let mut wf = spec(
        json!({"name": "limited", "steps": [{"id": "x", "kind": "external", "config": {"queue": "lim"}}]}),
    );
    wf.max_concurrent_runs = 2;
    gw.register_workflow(pb::RegisterWorkflowRequest { spec: Some(wf) }).await.unwrap();
    let mut run_ids = Vec::new();
    for i in 0..5 {
        let req = pb::StartRunRequest {
            workflow_name: "limited".into(),
            input: input(json!({"i": i})),
            ..Default::default()
        };
        run_ids.push(gw.start_run(req).await.unwrap().into_inner().run.unwrap().run_id);
    }
    let poll = |gw: &mut pb::gateway_client::GatewayClient<tonic::transport::Channel>| {
        let mut gw = gw.clone();
        async move {
            let req = pb::PollTasksRequest {
                worker_id: "test".into(),
                queues: vec!["lim".into()],
                max_tasks: 10,
                wait: Some(prost_types::Duration { seconds: 0, nanos: 200_000_000 }),
            };
            gw.poll_tasks(req).await.unwrap().into_inner().tasks
        }
    };
    let first = poll(&mut gw).await;
    assert_eq!(
        first.iter().map(|t| t.run_id.clone()).collect::<Vec<_>>(),
        run_ids[..2],
        "only two runs are let in"
    );
    let report = pb::ReportTaskResultsRequest {
        worker_id: "test".into(),
        results: vec![pb::TaskResult {
            task_id: first[0].task_id.clone(),
            lease_token: first[0].lease_token.clone(),
            outcome: Some(pb::task_result::Outcome::Output(aura_proto::json::json_to_value(&json!("done")))),
        }],
    };
    gw.report_task_results(report).await.unwrap();
    let next = poll(&mut gw).await;
    assert_eq!(
        next.iter().map(|t| t.run_id.clone()).collect::<Vec<_>>(),
        vec![run_ids[2].clone()],
        "the next in line starts"
    );
    let waiting =
        gw.get_run(pb::GetRunRequest { run_id: run_ids[4].clone() }).await.unwrap().into_inner().run.unwrap();
    assert_eq!(waiting.state, pb::RunState::Pending as i32);
    mesh.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_with_ten_thousand_runs_does_not_delay_another_tenants_run() {
    let redis = RedisServer::start();
    let mesh = Mesh::start(&redis.url(), MeshOptions { worker_concurrency: 0, ..Default::default() }).await;
    let mut gw = mesh.gateway().await;
    let wf = spec(
        json!({"name": "fair", "steps": [{"id": "x", "kind": "external", "config": {"queue": "fair-q"}}]}),
    );
    gw.register_workflow(pb::RegisterWorkflowRequest { spec: Some(wf) }).await.unwrap();
    for _ in 0..10 {
        let runs = (0..1000)
            .map(|_| pb::StartRunRequest {
                workflow_name: "fair".into(),
                concurrency_key: "tenant-a".into(),
                ..Default::default()
            })
            .collect();
        let resp = gw.start_runs(pb::StartRunsRequest { runs }).await.unwrap().into_inner();
        assert!(resp.results.iter().all(|r| r.code == 0));
    }
    let req = pb::StartRunRequest {
        workflow_name: "fair".into(),
        concurrency_key: "tenant-b".into(),
        ..Default::default()
    };
    let b_run = gw.start_run(req).await.unwrap().into_inner().run.unwrap().run_id;
    let mut claims = 0;
    loop {
        let req = pb::PollTasksRequest {
            worker_id: "t".into(),
            queues: vec!["fair-q".into()],
            max_tasks: 1,
            wait: None,
        };
        let task = gw.poll_tasks(req).await.unwrap().into_inner().tasks.remove(0);
        claims += 1;
        if task.run_id == b_run {
            break;
        }
        assert!(claims < 3, "tenant b's run waited behind tenant a's backlog");
    }
    mesh.stop().await;
}

#[tokio::test]
async fn a_callers_short_deadline_ends_the_long_poll_behind_the_gateway() {
    let redis = RedisServer::start();
    let mesh = Mesh::start(&redis.url(), MeshOptions { worker_concurrency: 0, ..Default::default() }).await;
    let mut gw = mesh.gateway().await;
    let wf = spec(
        json!({"name": "late", "steps": [{"id": "x", "kind": "external", "config": {"queue": "late-q"}}]}),
    );
    gw.register_workflow(pb::RegisterWorkflowRequest { spec: Some(wf) }).await.unwrap();
    // A 20 s long poll with a 50 ms deadline: the caller gives up at once...
    let mut poll = tonic::Request::new(pb::PollTasksRequest {
        worker_id: "impatient".into(),
        queues: vec!["late-q".into()],
        max_tasks: 1,
        wait: Some(prost_types::Duration { seconds: 20, nanos: 0 }),
    });
    poll.set_timeout(Duration::from_millis(50));
    let outcome = gw.poll_tasks(poll).await;
    assert!(matches!(&outcome, Ok(r) if r.get_ref().tasks.is_empty()) || outcome.is_err());
    // ...and so does the work behind it: a task enqueued now is not swallowed by a poll
    // nobody waits for any more; the next real poll gets it at once.
    let run = gw
        .start_run(pb::StartRunRequest { workflow_name: "late".into(), ..Default::default() })
        .await
        .unwrap();
    let run_id = run.into_inner().run.unwrap().run_id;
    let next = pb::PollTasksRequest {
        worker_id: "patient".into(),
        queues: vec!["late-q".into()],
        max_tasks: 1,
        wait: Some(prost_types::Duration { seconds: 5, nanos: 0 }),
    };
    let tasks = gw.poll_tasks(next).await.unwrap().into_inner().tasks;
    assert_eq!(tasks.len(), 1, "the task went to a poll whose caller had left");
    assert_eq!(tasks[0].run_id, run_id);
    assert_eq!(tasks[0].attempt, 1);
    mesh.stop().await;
}

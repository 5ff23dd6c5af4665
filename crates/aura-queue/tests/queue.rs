//! The queue's semantics against a real redis-server (and a real 3-node cluster).

use std::{collections::HashSet, time::Duration};

use aura_common::redis::connect;
use aura_queue::*;
use aura_testkit::{RedisCluster, RedisServer, wait_until};
use tokio_util::sync::CancellationToken;

async fn queue_on(url: &str, partitions: usize) -> Queue {
    let conn = connect(url).await.unwrap();
    Queue::new(conn, url, Keyspace::new("aura", partitions), CancellationToken::new()).unwrap()
}

fn lanes(name: &str) -> Vec<String> {
    vec![name.to_string()]
}

fn fast_retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(10),
        multiplier: 2.0,
        max_backoff: Duration::from_millis(50),
        jitter: 0.0,
    }
}

async fn duplicate_ids_create_one_job_on(url: &str) {
    let q = queue_on(url, 1).await;
    assert!(q.enqueue(NewJob::new("a", "q", "1")).await.unwrap());
    assert!(!q.enqueue(NewJob::new("a", "q", "2")).await.unwrap());
    let created = q.enqueue_bulk(vec![NewJob::new("a", "q", "3"), NewJob::new("b", "q", "4")]).await.unwrap();
    assert_eq!(created, vec![false, true]);
    let claim = q.claim(&lanes("q"), 10).await.unwrap();
    let payloads: Vec<_> = claim.jobs.iter().map(|j| String::from_utf8(j.payload.clone()).unwrap()).collect();
    assert_eq!(payloads, vec!["1", "4"]);
}

#[tokio::test]
async fn duplicate_ids_create_one_job() {
    let redis = RedisServer::start();
    duplicate_ids_create_one_job_on(&redis.url()).await;
}

async fn higher_priority_first_fifo_within_priority_on(url: &str) {
    let q = queue_on(url, 1).await;
    let mut jobs = Vec::new();
    for (id, prio) in [("l1", 0), ("h1", 10), ("l2", 0), ("h2", 10), ("m1", 5)] {
        let mut job = NewJob::new(id, "q", id);
        job.priority = prio;
        jobs.push(job);
    }
    q.enqueue_bulk(jobs).await.unwrap();
    let claim = q.claim(&lanes("q"), 10).await.unwrap();
    let order: Vec<_> = claim.jobs.iter().map(|j| j.lease.id.as_str()).collect();
    assert_eq!(order, vec!["h1", "h2", "m1", "l1", "l2"]);
}

#[tokio::test]
async fn higher_priority_first_fifo_within_priority() {
    let redis = RedisServer::start();
    higher_priority_first_fifo_within_priority_on(&redis.url()).await;
}

async fn priority_out_of_range_is_rejected_on(url: &str) {
    let q = queue_on(url, 1).await;
    let mut job = NewJob::new("x", "q", "");
    job.priority = 1001;
    assert!(matches!(q.enqueue(job).await, Err(QueueError::Invalid { field: "priority", .. })));
    assert!(matches!(
        q.enqueue(NewJob::new("a,b", "q", "")).await,
        Err(QueueError::Invalid { field: "id", .. })
    ));
}

#[tokio::test]
async fn priority_out_of_range_is_rejected() {
    let redis = RedisServer::start();
    priority_out_of_range_is_rejected_on(&redis.url()).await;
}

async fn delayed_job_is_not_claimable_before_its_time_on(url: &str) {
    let q = queue_on(url, 1).await;
    let mut job = NewJob::new("d", "q", "");
    job.delay = Duration::from_millis(300);
    q.enqueue(job).await.unwrap();
    let claim = q.claim(&lanes("q"), 1).await.unwrap();
    assert!(claim.jobs.is_empty());
    assert!(claim.next_delayed_at_ms > 0);
    assert_eq!(q.stats("q").await.unwrap().delayed, 1);
    // A blocking claim wakes up by itself when the delay is due.
    let jobs =
        q.claim_blocking(&lanes("q"), 1, Duration::from_secs(5), &CancellationToken::new()).await.unwrap();
    assert_eq!(jobs.len(), 1);
}

#[tokio::test]
async fn delayed_job_is_not_claimable_before_its_time() {
    let redis = RedisServer::start();
    delayed_job_is_not_claimable_before_its_time_on(&redis.url()).await;
}

async fn blocking_claim_wakes_on_enqueue_on(url: &str) {
    let q = queue_on(url, 2).await;
    let q2 = q.clone();
    let waiter = tokio::spawn(async move {
        q2.claim_blocking(&lanes("q"), 5, Duration::from_secs(20), &CancellationToken::new()).await.unwrap()
    });
    // Give the waiter time to block: whether it is blocking or not yet, it must get the job.
    tokio::time::sleep(Duration::from_millis(100)).await;
    q.enqueue(NewJob::new("w", "q", "")).await.unwrap();
    let jobs =
        tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken well before 20 s").unwrap();
    assert_eq!(jobs.len(), 1);
}

#[tokio::test]
async fn blocking_claim_wakes_on_enqueue() {
    let redis = RedisServer::start();
    blocking_claim_wakes_on_enqueue_on(&redis.url()).await;
}

async fn stale_lease_cannot_complete_after_reclaim_on(url: &str) {
    let q = queue_on(url, 1).await;
    let mut job = NewJob::new("j", "q", "");
    job.lease = Duration::from_millis(50);
    job.retry = fast_retry(3);
    job.retry.initial_backoff = Duration::ZERO;
    q.enqueue(job).await.unwrap();
    let first = q.claim(&lanes("q"), 1).await.unwrap().jobs.remove(0);
    // The lease runs out; the reaper hands the job back; another claimer takes it.
    wait_until("lease expiry reaped", Duration::from_secs(5), || async {
        !q.reap(100).await.unwrap().0.is_empty()
    })
    .await;
    let second = q.claim(&lanes("q"), 1).await.unwrap().jobs.remove(0);
    assert_eq!(second.attempt, 2);
    assert_ne!(first.lease.token, second.lease.token);
    let stale =
        q.complete(vec![Completion { lease: first.lease.clone(), result: "old".into() }]).await.unwrap();
    assert_eq!(stale, vec![CompleteOutcome::Refused("stale lease".into())]);
    let fresh =
        q.complete(vec![Completion { lease: second.lease.clone(), result: "new".into() }]).await.unwrap();
    assert!(matches!(fresh[0], CompleteOutcome::Recorded { .. }));
    // And completing twice with the right token is refused too.
    let again = q.complete(vec![Completion { lease: second.lease, result: "again".into() }]).await.unwrap();
    assert_eq!(again, vec![CompleteOutcome::Refused("stale lease".into())]);
    let stats = q.stats("q").await.unwrap();
    assert_eq!((stats.completed, stats.active, stats.waiting), (1, 0, 0));
}

#[tokio::test]
async fn stale_lease_cannot_complete_after_reclaim() {
    let redis = RedisServer::start();
    stale_lease_cannot_complete_after_reclaim_on(&redis.url()).await;
}

async fn retries_with_backoff_then_dead_letter_and_replay_on(url: &str) {
    let q = queue_on(url, 1).await;
    let mut job = NewJob::new("r", "q", "p");
    job.retry = fast_retry(3);
    q.enqueue(job).await.unwrap();
    let cancel = CancellationToken::new();
    for attempt in 1..=3 {
        let claimed =
            q.claim_blocking(&lanes("q"), 1, Duration::from_secs(5), &cancel).await.unwrap().remove(0);
        assert_eq!(claimed.attempt, attempt);
        let outcome = q
            .fail(vec![Failure {
                lease: claimed.lease,
                error: format!("boom {attempt}"),
                retryable: true,
                retry_after: None,
            }])
            .await
            .unwrap()
            .remove(0);
        if attempt < 3 {
            assert!(matches!(outcome, FailOutcome::Retrying { .. }), "{outcome:?}");
        } else {
            assert_eq!(outcome, FailOutcome::Dead { flow_state: String::new(), affected: vec![] });
        }
    }
    let stats = q.stats("q").await.unwrap();
    assert_eq!((stats.dead, stats.failed, stats.waiting, stats.delayed), (1, 3, 0, 0));
    let (dead, next) = q.dead_letters("q", (0, 0), 10).await.unwrap();
    assert!(next.is_none());
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].error, "boom 3");
    assert_eq!(dead[0].attempts, 3);
    assert_eq!(q.retry_dead("q", None).await.unwrap(), 1);
    let claimed = q.claim(&lanes("q"), 1).await.unwrap().jobs.remove(0);
    assert_eq!(claimed.attempt, 1, "a replayed dead letter starts with fresh attempts");
}

#[tokio::test]
async fn retries_with_backoff_then_dead_letter_and_replay() {
    let redis = RedisServer::start();
    retries_with_backoff_then_dead_letter_and_replay_on(&redis.url()).await;
}

async fn non_retryable_failure_skips_remaining_attempts_on(url: &str) {
    let q = queue_on(url, 1).await;
    q.enqueue(NewJob::new("n", "q", "")).await.unwrap();
    let claimed = q.claim(&lanes("q"), 1).await.unwrap().jobs.remove(0);
    let outcome = q
        .fail(vec![Failure {
            lease: claimed.lease,
            error: "bad input".into(),
            retryable: false,
            retry_after: None,
        }])
        .await
        .unwrap();
    assert!(matches!(outcome[0], FailOutcome::Dead { .. }));
    assert_eq!(q.stats("q").await.unwrap().dead, 1);
}

#[tokio::test]
async fn non_retryable_failure_skips_remaining_attempts() {
    let redis = RedisServer::start();
    non_retryable_failure_skips_remaining_attempts_on(&redis.url()).await;
}

async fn retry_after_is_honoured_and_backoff_grows_on(url: &str) {
    let q = queue_on(url, 1).await;
    let mut job = NewJob::new("b", "q", "");
    job.retry = RetryPolicy { jitter: 0.0, ..RetryPolicy::default() }; // 2 s, x2
    q.enqueue(job).await.unwrap();
    let before = now_ms();
    let claimed = q.claim(&lanes("q"), 1).await.unwrap().jobs.remove(0);
    let out = q
        .fail(vec![Failure { lease: claimed.lease, error: "e".into(), retryable: true, retry_after: None }])
        .await
        .unwrap()
        .remove(0);
    let FailOutcome::Retrying { at_ms } = out else { panic!("{out:?}") };
    assert!(at_ms >= before + 2000, "first backoff is the seed's 2000 ms");
    assert!(q.claim(&lanes("q"), 1).await.unwrap().jobs.is_empty(), "not before its backoff");
    assert_eq!(RetryPolicy::default().backoff(2), Duration::from_secs(4));
}

#[tokio::test]
async fn retry_after_is_honoured_and_backoff_grows() {
    let redis = RedisServer::start();
    retry_after_is_honoured_and_backoff_grows_on(&redis.url()).await;
}

async fn heartbeat_extends_and_reports_lost_leases_on(url: &str) {
    let q = queue_on(url, 1).await;
    let mut job = NewJob::new("h", "q", "");
    job.lease = Duration::from_millis(200);
    q.enqueue(job).await.unwrap();
    let claimed = q.claim(&lanes("q"), 1).await.unwrap().jobs.remove(0);
    let hb = q.heartbeat(vec![claimed.lease.clone()], Duration::from_secs(30)).await.unwrap();
    assert!(matches!(hb[0], HeartbeatOutcome::Extended(d) if d > claimed.deadline_ms));
    // Past the original deadline (Redis's clock and ours agree on loopback within ms)...
    let original = claimed.deadline_ms + 50;
    wait_until("the original lease deadline to pass", Duration::from_secs(5), || async move {
        now_ms() > original
    })
    .await;
    assert!(q.reap(10).await.unwrap().0.is_empty(), "an extended lease is not reaped");
    let bogus = Lease { token: "nope".into(), ..claimed.lease.clone() };
    assert_eq!(q.heartbeat(vec![bogus], Duration::from_secs(1)).await.unwrap(), vec![HeartbeatOutcome::Lost]);
}

#[tokio::test]
async fn heartbeat_extends_and_reports_lost_leases() {
    let redis = RedisServer::start();
    heartbeat_extends_and_reports_lost_leases_on(&redis.url()).await;
}

async fn paused_queue_is_not_claimed_until_resumed_on(url: &str) {
    let q = queue_on(url, 2).await;
    q.pause("q").await.unwrap();
    q.enqueue(NewJob::new("p", "q", "")).await.unwrap();
    assert!(q.claim(&lanes("q"), 1).await.unwrap().jobs.is_empty());
    let stats = q.stats("q").await.unwrap();
    assert!(stats.paused);
    assert_eq!(stats.waiting, 1);
    q.resume("q").await.unwrap();
    assert_eq!(q.claim(&lanes("q"), 1).await.unwrap().jobs.len(), 1);
}

#[tokio::test]
async fn paused_queue_is_not_claimed_until_resumed() {
    let redis = RedisServer::start();
    paused_queue_is_not_claimed_until_resumed_on(&redis.url()).await;
}

#[tokio::test]
async fn retention_trims_finished_jobs() {
    let redis = RedisServer::start();
    let q = queue_on(&redis.url(), 1).await;
    let jobs = (0..20).map(|i| NewJob::new(format!("t{i}"), "q", "")).collect();
    q.enqueue_bulk(jobs).await.unwrap();
    let claimed = q.claim(&lanes("q"), 20).await.unwrap().jobs;
    q.complete(claimed.into_iter().map(|j| Completion { lease: j.lease, result: String::new() }).collect())
        .await
        .unwrap();
    let retention = Retention { jobs: 5, job_age: Duration::from_secs(3600), ..Retention::default() };
    assert_eq!(q.trim(&retention).await.unwrap(), (15, 0));
    let mut conn = redis.client();
    let left: Vec<String> = redis::cmd("KEYS").arg("aura:*j:*").query(&mut conn).unwrap();
    assert_eq!(left.len(), 5);
}

fn flow_job(flow: &str, id: &str, parents: &[&str], dependents: &[&str]) -> FlowJob {
    FlowJob {
        id: format!("{flow}.{id}"),
        queue: "q".into(),
        payload: id.into(),
        parents: parents.iter().map(|p| format!("{flow}.{p}")).collect(),
        dependents: dependents.iter().map(|d| format!("{flow}.{d}")).collect(),
        retry: fast_retry(1),
        lease: Duration::from_secs(30),
        continue_on_failure: false,
        release_delay: Duration::ZERO,
    }
}

fn diamond(flow: &str, parents: usize) -> NewFlow {
    let mut jobs = Vec::new();
    let names: Vec<String> = (0..parents).map(|i| format!("p{i}")).collect();
    for name in &names {
        jobs.push(flow_job(flow, name, &[], &["join"]));
    }
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    jobs.push(flow_job(flow, "join", &refs, &[]));
    NewFlow {
        id: flow.into(),
        idempotency_key: String::new(),
        idempotency_ttl: Duration::from_secs(60),
        meta: "m".into(),
        input: "{}".into(),
        delay: Duration::ZERO,
        priority: 0,
        index: String::new(),
        concurrency_key: String::new(),
        concurrency_limit: 0,
        timeout: Duration::ZERO,
        jobs,
    }
}

async fn fan_in_is_enqueued_exactly_once_under_racing_parents_on(url: &str) {
    let q = queue_on(url, 1).await;
    for round in 0..20 {
        let flow = format!("f{round}");
        q.start_flow(0, diamond(&flow, 8)).await.unwrap();
        let parents = q.claim(&lanes("q"), 8).await.unwrap().jobs;
        assert_eq!(parents.len(), 8);
        // Complete all parents concurrently, each in its own call.
        let handles: Vec<_> = parents
            .into_iter()
            .map(|job| {
                let q = q.clone();
                tokio::spawn(async move {
                    q.complete(vec![Completion { lease: job.lease, result: "1".into() }])
                        .await
                        .unwrap()
                        .remove(0)
                })
            })
            .collect();
        let mut released = 0;
        for handle in handles {
            if let CompleteOutcome::Recorded { ready, .. } = handle.await.unwrap() {
                released += ready.len();
            }
        }
        assert_eq!(released, 1, "round {round}: join released exactly once");
        let join = q.claim(&lanes("q"), 10).await.unwrap().jobs;
        assert_eq!(join.len(), 1);
        assert_eq!(join[0].parent_results.len(), 8);
        let done =
            q.complete(vec![Completion { lease: join[0].lease.clone(), result: "j".into() }]).await.unwrap();
        assert!(
            matches!(&done[0], CompleteOutcome::Recorded { ready, flow_state, .. } if ready.is_empty() && flow_state == "succeeded"),
            "{:?}",
            done[0]
        );
    }
}

#[tokio::test]
async fn fan_in_is_enqueued_exactly_once_under_racing_parents() {
    let redis = RedisServer::start();
    fan_in_is_enqueued_exactly_once_under_racing_parents_on(&redis.url()).await;
}

async fn flow_idempotency_and_cancellation_on(url: &str) {
    let q = queue_on(url, 1).await;
    let mut flow = diamond("a", 2);
    flow.idempotency_key = "key-1".into();
    assert!(q.start_flow(0, flow.clone()).await.unwrap().created);
    let mut again = diamond("b", 2);
    again.idempotency_key = "key-1".into();
    assert_eq!(
        q.start_flow(0, again).await.unwrap(),
        FlowStart { created: false, flow_id: "a".into(), created_at_ms: 0, admitted: false }
    );

    let running = q.claim(&lanes("q"), 1).await.unwrap().jobs.remove(0);
    assert!(running.flow_started);
    let (state, cancelled) = q.cancel_flow(0, "a", "user asked").await.unwrap();
    assert_eq!(state, "cancelled");
    assert_eq!(cancelled.len(), 3);
    assert_eq!(
        q.heartbeat(vec![running.lease.clone()], Duration::from_secs(1)).await.unwrap(),
        vec![HeartbeatOutcome::Cancelled]
    );
    let refused = q.complete(vec![Completion { lease: running.lease, result: "x".into() }]).await.unwrap();
    assert_eq!(refused, vec![CompleteOutcome::Refused("cancelled".into())]);
    assert!(q.claim(&lanes("q"), 10).await.unwrap().jobs.is_empty());
    assert_eq!(q.stats("q").await.unwrap().active, 0);
}

#[tokio::test]
async fn flow_idempotency_and_cancellation() {
    let redis = RedisServer::start();
    flow_idempotency_and_cancellation_on(&redis.url()).await;
}

/// The events of a flow's topic, in stream order, as `[epoch, n, ms, type, payload]`: each
/// stream entry holds the events of one script call, a body of the line `epoch|first n|ms`
/// and a line `type|payload` per event.
async fn topic_records(q: &Queue, flow: &str) -> Vec<Vec<String>> {
    let mut conn = q.conn();
    let entries: Vec<(String, Vec<String>)> = redis::cmd("XRANGE")
        .arg(q.flow_events_key(0, flow))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut records = Vec::new();
    for (id, fields) in entries {
        assert_eq!(fields[0], "r", "entry {id}");
        let mut lines = fields[1].split('\n');
        let head: Vec<&str> = lines.next().unwrap().split('|').collect();
        let first: u64 = head[1].parse().unwrap();
        let mut n = first;
        for line in lines {
            let (event_type, payload) = line.split_once('|').unwrap();
            records.push(vec![
                head[0].into(),
                n.to_string(),
                head[2].into(),
                event_type.into(),
                payload.into(),
            ]);
            n += 1;
        }
        assert_eq!(format!("{}-0", n - 1), id, "an entry's id is its last number");
    }
    records
}

/// Numbers and types of the events on a flow's topic, in stream order.
async fn topic_events(q: &Queue, flow: &str) -> Vec<(String, String)> {
    topic_records(q, flow).await.into_iter().map(|r| (r[1].clone(), r[3].clone())).collect()
}

async fn a_batch_of_flows_starts_in_order_and_honours_keys_within_it_on(url: &str) {
    let q = queue_on(url, 1).await;
    let mut x = diamond("bx", 2);
    x.idempotency_key = "same".into();
    let mut y = diamond("by", 2);
    y.idempotency_key = "same".into();
    let started = q.start_flows(0, vec![x, y, diamond("bz", 1)]).await.unwrap();
    let got: Vec<(bool, &str)> = started.iter().map(|s| (s.created, s.flow_id.as_str())).collect();
    assert_eq!(got, vec![(true, "bx"), (false, "bx"), (true, "bz")]);
    let mut claimed = q.claim(&lanes("q"), 10).await.unwrap().jobs;
    let ids: Vec<&str> = claimed.iter().map(|j| j.lease.id.as_str()).collect();
    assert_eq!(ids, ["bx.p0", "bx.p1", "bz.p0"], "roots ready in the batch's order, none of the repeat");
    assert!(topic_events(&q, "by").await.is_empty(), "the repeat wrote no events");
    // One claim wrote run.started and two step.started for bx in one flush: still numbered
    // from 1, contiguous, in transition order.
    assert_eq!(
        topic_events(&q, "bx").await,
        [("1", "run.queued"), ("2", "run.started"), ("3", "step.started"), ("4", "step.started")]
            .map(|(i, t)| (i.to_string(), t.to_string()))
    );
    let bz = claimed.pop().unwrap();
    q.complete(vec![Completion { lease: bz.lease, result: "1".into() }]).await.unwrap();
    let join = q.claim(&lanes("q"), 10).await.unwrap().jobs.remove(0);
    let done = q.complete(vec![Completion { lease: join.lease, result: "j".into() }]).await.unwrap();
    assert!(matches!(&done[0], CompleteOutcome::Recorded { flow_state, .. } if flow_state == "succeeded"));
    let types: Vec<String> = topic_events(&q, "bz").await.into_iter().map(|(_, t)| t).collect();
    assert_eq!(
        types,
        [
            "run.queued",
            "run.started",
            "step.started",
            "step.succeeded",
            "step.queued",
            "step.started",
            "step.succeeded",
            "run.succeeded"
        ]
    );
    // A finished run's history expires after the retention period (set after its last events).
    let mut conn = q.conn();
    let ttl: i64 = redis::cmd("PTTL").arg(q.flow_events_key(0, "bz")).query_async(&mut conn).await.unwrap();
    assert!(ttl > 0, "events of a finished run expire: {ttl}");
}

#[tokio::test]
async fn a_batch_of_flows_starts_in_order_and_honours_keys_within_it() {
    let redis = RedisServer::start();
    a_batch_of_flows_starts_in_order_and_honours_keys_within_it_on(&redis.url()).await;
}

/// A one-step run (the common case, stored without its default fields) goes through start,
/// claim and complete with its events; with a deadline, finishing also drops the deadline.
async fn a_one_step_run_succeeds_with_or_without_a_deadline_on(url: &str) {
    let q = queue_on(url, 1).await;
    let conn = q.conn();
    let lone = |id: &str, timeout: Duration| NewFlow {
        timeout,
        jobs: vec![flow_job(id, "s", &[], &[])],
        ..diamond(id, 0)
    };
    q.start_flows(0, vec![lone("plain", Duration::ZERO), lone("timed", Duration::from_secs(60))])
        .await
        .unwrap();
    let deadlines_key = format!("{}deadlines", q.keys().partition(0));
    let deadlines = || {
        let mut conn = conn.clone();
        let key = deadlines_key.clone();
        async move {
            redis::cmd("ZRANGE").arg(key).arg(0).arg(-1).query_async::<Vec<String>>(&mut conn).await.unwrap()
        }
    };
    assert_eq!(deadlines().await, ["timed"]);
    let claimed = q.claim(&lanes("q"), 10).await.unwrap().jobs;
    assert_eq!(claimed.iter().map(|j| j.lease.id.as_str()).collect::<Vec<_>>(), ["plain.s", "timed.s"]);
    assert!(claimed.iter().all(|j| j.flow_started && j.parent_results.is_empty() && j.attempt == 1));
    let done = q
        .complete(claimed.into_iter().map(|j| Completion { lease: j.lease, result: "r".into() }).collect())
        .await
        .unwrap();
    for outcome in &done {
        assert!(
            matches!(outcome, CompleteOutcome::Recorded { ready, flow_state, .. } if ready.is_empty() && flow_state == "succeeded"),
            "{outcome:?}"
        );
    }
    for flow in ["plain", "timed"] {
        let types: Vec<String> = topic_events(&q, flow).await.into_iter().map(|(_, t)| t).collect();
        assert_eq!(
            types,
            ["run.queued", "run.started", "step.started", "step.succeeded", "run.succeeded"],
            "{flow}"
        );
    }
    // Payloads are JSON with run_id, workflow and the step's fields, whether built by
    // concatenation (plain ids) or by cjson (ids that need escaping).
    let mut odd = lone("odd\"id", Duration::ZERO);
    odd.index = "wf\\x".into();
    q.start_flow(0, odd).await.unwrap();
    let job = q.claim(&lanes("q"), 1).await.unwrap().jobs.remove(0);
    q.complete(vec![Completion { lease: job.lease, result: "r".into() }]).await.unwrap();
    for (flow, workflow) in [("plain", ""), ("odd\"id", "wf\\x")] {
        let payloads: Vec<serde_json::Value> = topic_records(&q, flow)
            .await
            .iter()
            .map(|r| serde_json::from_str(&r[4]).expect("JSON payload"))
            .collect();
        for p in &payloads {
            assert_eq!((p["run_id"].as_str(), p["workflow"].as_str()), (Some(flow), Some(workflow)), "{p}");
        }
        assert_eq!(payloads[2]["step_id"], "s");
        assert_eq!(payloads[2]["attempt"], 1);
        assert_eq!(payloads[3]["step_id"], "s");
    }
    assert!(deadlines().await.is_empty(), "a finished run leaves no deadline behind");
}

#[tokio::test]
async fn a_one_step_run_succeeds_with_or_without_a_deadline() {
    let redis = RedisServer::start();
    a_one_step_run_succeeds_with_or_without_a_deadline_on(&redis.url()).await;
}

/// Concurrent single starts share script calls (group commit); each caller still gets its
/// own answer, and a key repeated across callers creates one flow.
async fn concurrent_single_starts_each_get_their_own_answer_on(url: &str) {
    let q = queue_on(url, 2).await;
    let starts = (0..300).map(|i| {
        let q = q.clone();
        tokio::spawn(async move {
            let mut flow = diamond(&format!("s{i}"), 1);
            // Every third start repeats one of ten keys.
            if i % 3 == 0 {
                flow.idempotency_key = format!("k{}", i % 10);
            }
            (i, q.start_flow(i % 2, flow).await.unwrap())
        })
    });
    let mut by_key: std::collections::HashMap<String, Vec<(bool, String)>> = Default::default();
    for start in futures::future::join_all(starts).await {
        let (i, started) = start.unwrap();
        if i % 3 == 0 {
            by_key
                .entry(format!("k{}:{}", i % 10, i % 2))
                .or_default()
                .push((started.created, started.flow_id));
        } else {
            assert!(started.created && started.flow_id == format!("s{i}"), "s{i}: {started:?}");
        }
    }
    for (key, answers) in by_key {
        assert_eq!(answers.iter().filter(|(created, _)| *created).count(), 1, "{key}: {answers:?}");
        assert!(
            answers.iter().all(|(_, id)| *id == answers.iter().find(|a| a.0).unwrap().1),
            "{key}: {answers:?}"
        );
    }
    // Every created flow's root is ready: 200 unkeyed starts and one per key.
    let claimed = q.claim(&lanes("q"), 1000).await.unwrap().jobs;
    assert_eq!(claimed.len(), 200 + 10);
}

#[tokio::test]
async fn concurrent_single_starts_each_get_their_own_answer() {
    let redis = RedisServer::start();
    concurrent_single_starts_each_get_their_own_answer_on(&redis.url()).await;
}

async fn failing_step_fails_flow_unless_it_continues_on_failure_on(url: &str) {
    let q = queue_on(url, 1).await;
    // a -> b, a fails for good: b is cancelled, the flow fails.
    let mut flow = diamond("f", 1);
    flow.jobs[0].dependents = vec!["f.join".into()];
    q.start_flow(0, flow).await.unwrap();
    let a = q.claim(&lanes("q"), 1).await.unwrap().jobs.remove(0);
    let out =
        q.fail(vec![Failure { lease: a.lease, error: "x".into(), retryable: true, retry_after: None }]).await;
    assert_eq!(
        out.unwrap()[0],
        FailOutcome::Dead { flow_state: "failed".into(), affected: vec!["f.join".into()] }
    );

    // Same with continue_on_failure: join is skipped and the flow still ends.
    let mut flow = diamond("g", 1);
    flow.jobs[0].continue_on_failure = true;
    q.start_flow(0, flow).await.unwrap();
    let a = q.claim(&lanes("q"), 1).await.unwrap().jobs.remove(0);
    let out = q
        .fail(vec![Failure { lease: a.lease, error: "x".into(), retryable: false, retry_after: None }])
        .await;
    assert_eq!(
        out.unwrap()[0],
        FailOutcome::Dead { flow_state: "succeeded".into(), affected: vec!["g.join".into()] }
    );
}

#[tokio::test]
async fn failing_step_fails_flow_unless_it_continues_on_failure() {
    let redis = RedisServer::start();
    failing_step_fails_flow_unless_it_continues_on_failure_on(&redis.url()).await;
}

async fn concurrent_claimers_never_get_the_same_job_on(url: &str) {
    let q = queue_on(url, 2).await;
    let jobs = (0..2000).map(|i| NewJob::new(format!("c{i}"), "q", "")).collect();
    q.enqueue_bulk(jobs).await.unwrap();
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let q = q.clone();
            tokio::spawn(async move {
                let mut mine = Vec::new();
                loop {
                    let jobs = q.claim(&lanes("q"), 37).await.unwrap().jobs;
                    if jobs.is_empty() {
                        return mine;
                    }
                    let done =
                        jobs.iter().map(|j| Completion { lease: j.lease.clone(), result: String::new() });
                    let outcomes = q.complete(done.collect()).await.unwrap();
                    assert!(outcomes.iter().all(|o| matches!(o, CompleteOutcome::Recorded { .. })));
                    mine.extend(jobs.into_iter().map(|j| j.lease.id));
                }
            })
        })
        .collect();
    let mut seen = HashSet::new();
    let mut total = 0;
    for h in handles {
        for id in h.await.unwrap() {
            total += 1;
            seen.insert(id);
        }
    }
    assert_eq!((total, seen.len()), (2000, 2000));
    assert_eq!(q.stats("q").await.unwrap().completed, 2000);
}

#[tokio::test]
async fn concurrent_claimers_never_get_the_same_job() {
    let redis = RedisServer::start();
    concurrent_claimers_never_get_the_same_job_on(&redis.url()).await;
}

#[tokio::test]
async fn partitioned_queue_on_a_real_cluster_spreads_and_loses_nothing() {
    let cluster = RedisCluster::start();
    let q = queue_on(&cluster.url(), 3).await;
    let jobs = (0..600).map(|i| NewJob::new(format!("k{i}"), "q", "")).collect();
    assert!(q.enqueue_bulk(jobs).await.unwrap().into_iter().all(|c| c));
    // Every node holds some of the queue's keys.
    for node in &cluster.nodes {
        let keys: i64 = redis::cmd("DBSIZE").query(&mut node.client()).unwrap();
        assert!(keys > 50, "node {} holds {keys} keys", node.port());
    }
    // A flow (multi-key script) works on the cluster too.
    q.start_flow(1, diamond("cf", 3)).await.unwrap();
    let mut ids = HashSet::new();
    loop {
        let jobs = q.claim(&lanes("q"), 100).await.unwrap().jobs;
        if jobs.is_empty() {
            break;
        }
        let done =
            jobs.iter().map(|j| Completion { lease: j.lease.clone(), result: String::new() }).collect();
        q.complete(done).await.unwrap();
        ids.extend(jobs.into_iter().map(|j| j.lease.id));
    }
    assert_eq!(ids.len(), 604);
}

async fn released_job_is_ready_at_once_without_counting_an_attempt_on(url: &str) {
    let q = queue_on(url, 1).await;
    q.enqueue(NewJob::new("rel", "q", "")).await.unwrap();
    let first = q.claim(&lanes("q"), 1).await.unwrap().jobs.remove(0);
    assert_eq!(q.release(vec![first.lease.clone()]).await.unwrap(), vec![true]);
    assert_eq!(q.release(vec![first.lease]).await.unwrap(), vec![false], "a stale lease is refused");
    let again = q.claim(&lanes("q"), 1).await.unwrap().jobs.remove(0);
    assert_eq!(again.attempt, 1);
    assert_eq!(q.stats("q").await.unwrap().active, 1);
}

#[tokio::test]
async fn released_job_is_ready_at_once_without_counting_an_attempt() {
    let redis = RedisServer::start();
    released_job_is_ready_at_once_without_counting_an_attempt_on(&redis.url()).await;
}

#[tokio::test]
async fn retention_deletes_finished_flows_with_their_jobs_and_events() {
    let redis = RedisServer::start();
    let q = queue_on(&redis.url(), 1).await;
    for f in ["old", "new"] {
        let mut flow = diamond(f, 2);
        flow.idempotency_key = format!("key-{f}");
        flow.index = "wf".into();
        q.start_flow(0, flow).await.unwrap();
        loop {
            let jobs = q.claim(&lanes("q"), 10).await.unwrap().jobs;
            if jobs.is_empty() {
                break;
            }
            q.complete(jobs.into_iter().map(|j| Completion { lease: j.lease, result: "1".into() }).collect())
                .await
                .unwrap();
        }
    }
    // A running flow is never trimmed.
    q.start_flow(0, diamond("running", 1)).await.unwrap();
    let retention = Retention { flows: 1, ..Retention::default() };
    assert_eq!(q.trim(&retention).await.unwrap(), (0, 1));
    let mut conn = redis.client();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*old*").query(&mut conn).unwrap();
    assert!(keys.is_empty(), "left behind: {keys:?}");
    let idem: Option<String> =
        redis::cmd("GET").arg(format!("{}idem:key-old", q.keys().partition(0))).query(&mut conn).unwrap();
    assert_eq!(idem, None);
    let kept: Vec<String> = redis::cmd("KEYS").arg("*new*").query(&mut conn).unwrap();
    assert!(kept.len() >= 4, "the newest finished flow is kept: {kept:?}");
    let running: Vec<String> = redis::cmd("KEYS").arg("*running*").query(&mut conn).unwrap();
    assert!(!running.is_empty());
}

async fn flows_beyond_the_concurrency_limit_wait_and_start_in_order_on(url: &str) {
    let q = queue_on(url, 1).await;
    for i in 0..5 {
        let mut flow = diamond(&format!("g{i}"), 1);
        flow.index = "limited".into();
        flow.concurrency_limit = 2;
        q.start_flow(0, flow).await.unwrap();
    }
    // Only two flows are let in: their roots are the only claimable jobs.
    let first = q.claim(&lanes("q"), 100).await.unwrap().jobs;
    let ids: Vec<_> = first.iter().map(|j| j.lease.id.as_str()).collect();
    assert_eq!(ids, vec!["g0.p0", "g1.p0"]);
    // Finishing g0 (root, then join) frees a slot: g2 starts.
    q.complete(vec![Completion { lease: first[0].lease.clone(), result: "1".into() }]).await.unwrap();
    let join = q.claim(&lanes("q"), 100).await.unwrap().jobs;
    assert_eq!(join.iter().map(|j| j.lease.id.as_str()).collect::<Vec<_>>(), vec!["g0.join"]);
    q.complete(vec![Completion { lease: join[0].lease.clone(), result: "1".into() }]).await.unwrap();
    let next = q.claim(&lanes("q"), 100).await.unwrap().jobs;
    assert_eq!(next.iter().map(|j| j.lease.id.as_str()).collect::<Vec<_>>(), vec!["g2.p0"]);
    // Cancelling a waiting flow skips it; cancelling a running one frees its slot.
    q.cancel_flow(0, "g3", "no longer needed").await.unwrap();
    q.cancel_flow(0, "g1", "no longer needed").await.unwrap();
    let next = q.claim(&lanes("q"), 100).await.unwrap().jobs;
    assert_eq!(next.iter().map(|j| j.lease.id.as_str()).collect::<Vec<_>>(), vec!["g4.p0"]);
}

#[tokio::test]
async fn flows_beyond_the_concurrency_limit_wait_and_start_in_order() {
    let redis = RedisServer::start();
    flows_beyond_the_concurrency_limit_wait_and_start_in_order_on(&redis.url()).await;
}

async fn a_flooding_key_does_not_starve_another_key_on(url: &str) {
    let q = queue_on(url, 1).await;
    for i in 0..300 {
        let mut flow = diamond(&format!("a{i}"), 1);
        flow.jobs.truncate(1);
        flow.jobs[0].dependents.clear();
        flow.concurrency_key = "tenant-a".into();
        q.start_flow(0, flow).await.unwrap();
    }
    let mut flow = diamond("b0", 1);
    flow.jobs.truncate(1);
    flow.jobs[0].dependents.clear();
    flow.concurrency_key = "tenant-b".into();
    q.start_flow(0, flow).await.unwrap();
    q.enqueue(NewJob::new("plain", "q", "")).await.unwrap();
    assert_eq!(q.stats("q").await.unwrap().waiting, 302);
    // One claim at a time: tenant b's job and the key-less job come within three claims,
    // not after tenant a's 300.
    let mut first = Vec::new();
    for _ in 0..3 {
        first.extend(q.claim(&lanes("q"), 1).await.unwrap().jobs.into_iter().map(|j| j.lease.id));
    }
    assert!(first.contains(&"b0.p0".to_string()), "{first:?}");
    assert!(first.contains(&"plain".to_string()), "{first:?}");
    // A batch claim shares between keys too, and nothing is lost.
    let mut all: Vec<String> = first;
    loop {
        let jobs = q.claim(&lanes("q"), 64).await.unwrap().jobs;
        if jobs.is_empty() {
            break;
        }
        all.extend(jobs.into_iter().map(|j| j.lease.id));
    }
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 302);
    assert_eq!(q.stats("q").await.unwrap().waiting, 0);
}

#[tokio::test]
async fn a_flooding_key_does_not_starve_another_key() {
    let redis = RedisServer::start();
    a_flooding_key_does_not_starve_another_key_on(&redis.url()).await;
}

#[tokio::test]
async fn a_flow_past_its_timeout_fails_and_its_running_job_loses_its_lease() {
    let redis = RedisServer::start();
    let q = queue_on(&redis.url(), 1).await;
    let mut flow = diamond("t", 1);
    flow.timeout = Duration::from_millis(100);
    q.start_flow(0, flow).await.unwrap();
    let running = q.claim(&lanes("q"), 1).await.unwrap().jobs.remove(0);
    wait_until("run timeout", Duration::from_secs(5), || async { !q.reap(10).await.unwrap().1.is_empty() })
        .await;
    let refused = q.complete(vec![Completion { lease: running.lease, result: "late".into() }]).await.unwrap();
    assert_eq!(refused, vec![CompleteOutcome::Refused("cancelled".into())]);
    let mut conn = redis.client();
    let err: String =
        redis::cmd("HGET").arg(format!("{}f:t", q.keys().partition(0))).arg("err").query(&mut conn).unwrap();
    assert!(err.starts_with("run timed out after"), "{err}");
}

#[tokio::test]
async fn a_key_at_its_concurrency_cap_waits_while_other_keys_are_served() {
    let redis = RedisServer::start();
    let conn = connect(&redis.url()).await.unwrap();
    let q = Queue::new(conn, &redis.url(), Keyspace::new("aura", 1), CancellationToken::new())
        .unwrap()
        .with_key_concurrency_cap(1);
    for (flow, key) in [("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b")] {
        let mut f = diamond(flow, 1);
        f.jobs.truncate(1);
        f.jobs[0].dependents.clear();
        f.concurrency_key = key.into();
        q.start_flow(0, f).await.unwrap();
    }
    let first: Vec<_> = q.claim(&lanes("q"), 10).await.unwrap().jobs;
    let mut ids: Vec<_> = first.iter().map(|j| j.lease.id.clone()).collect();
    ids.sort();
    assert_eq!(ids, vec!["a1.p0", "b1.p0"], "one job per key at a time");
    assert!(q.claim(&lanes("q"), 10).await.unwrap().jobs.is_empty(), "key a is at its cap");
    // A blocked claimer is woken when key a's slot frees up.
    let q2 = q.clone();
    let waiter = tokio::spawn(async move {
        q2.claim_blocking(&lanes("q"), 10, Duration::from_secs(20), &CancellationToken::new()).await.unwrap()
    });
    let a1 = first.iter().find(|j| j.lease.id == "a1.p0").unwrap();
    q.complete(vec![Completion { lease: a1.lease.clone(), result: "1".into() }]).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken").unwrap();
    assert_eq!(next.iter().map(|j| j.lease.id.as_str()).collect::<Vec<_>>(), vec!["a2.p0"]);
}

/// The same scenarios on a real 3-node Redis Cluster (every key of a partition shares a
/// hash tag, so each script stays on one slot), flushing between scenarios.
#[tokio::test]
async fn the_queue_semantics_hold_on_a_real_cluster() {
    let cluster = RedisCluster::start();
    let url = cluster.url();
    let flush = || {
        for node in &cluster.nodes {
            let () = redis::cmd("FLUSHALL").query(&mut node.client()).unwrap();
        }
    };
    flush();
    duplicate_ids_create_one_job_on(&url).await;
    flush();
    higher_priority_first_fifo_within_priority_on(&url).await;
    flush();
    priority_out_of_range_is_rejected_on(&url).await;
    flush();
    delayed_job_is_not_claimable_before_its_time_on(&url).await;
    flush();
    blocking_claim_wakes_on_enqueue_on(&url).await;
    flush();
    stale_lease_cannot_complete_after_reclaim_on(&url).await;
    flush();
    retries_with_backoff_then_dead_letter_and_replay_on(&url).await;
    flush();
    non_retryable_failure_skips_remaining_attempts_on(&url).await;
    flush();
    retry_after_is_honoured_and_backoff_grows_on(&url).await;
    flush();
    heartbeat_extends_and_reports_lost_leases_on(&url).await;
    flush();
    paused_queue_is_not_claimed_until_resumed_on(&url).await;
    flush();
    fan_in_is_enqueued_exactly_once_under_racing_parents_on(&url).await;
    flush();
    flow_idempotency_and_cancellation_on(&url).await;
    flush();
    a_batch_of_flows_starts_in_order_and_honours_keys_within_it_on(&url).await;
    flush();
    failing_step_fails_flow_unless_it_continues_on_failure_on(&url).await;
    flush();
    concurrent_claimers_never_get_the_same_job_on(&url).await;
    flush();
    released_job_is_ready_at_once_without_counting_an_attempt_on(&url).await;
    flush();
    flows_beyond_the_concurrency_limit_wait_and_start_in_order_on(&url).await;
    flush();
    a_flooding_key_does_not_starve_another_key_on(&url).await;
}

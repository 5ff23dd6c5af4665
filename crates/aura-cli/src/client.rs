//! Client commands: talk to a running AURA through the Gateway.

use std::time::Duration;

use anyhow::Context;
use aura_proto::{json, v1 as pb};
use pb::gateway_client::GatewayClient;
use tokio_stream::StreamExt;
use tonic::{Request, transport::Channel};

use crate::config::{ClientOpts, EventsCmd, KeysCmd, QueueCmd, RunCmd, ScheduleCmd, WorkflowCmd};

struct Client {
    inner: GatewayClient<Channel>,
    api_key: Option<String>,
}

impl Client {
    async fn connect(opts: &ClientOpts) -> anyhow::Result<Self> {
        Self::connect_url(&opts.gateway, opts.api_key.clone()).await
    }

    async fn connect_url(url: &str, api_key: Option<String>) -> anyhow::Result<Self> {
        let channel = tonic::transport::Endpoint::from_shared(url.to_string())?
            .connect_timeout(Duration::from_secs(3))
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("cannot reach the gateway at {url} (is `aura up` running? set --gateway / AURA_GATEWAY_URL)"))?;
        Ok(Client { inner: GatewayClient::new(channel), api_key })
    }

    fn req<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        if let Some(key) = &self.api_key
            && let Ok(value) = format!("Bearer {key}").parse()
        {
            req.metadata_mut().insert("authorization", value);
        }
        req
    }
}

fn status_err(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

fn print_json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn run_state(s: i32) -> &'static str {
    pb::RunState::try_from(s).map(|s| s.as_str_name().trim_start_matches("RUN_STATE_")).unwrap_or("?")
}

fn step_state(s: i32) -> &'static str {
    pb::StepState::try_from(s).map(|s| s.as_str_name().trim_start_matches("STEP_STATE_")).unwrap_or("?")
}

fn ts(t: &Option<prost_types::Timestamp>) -> String {
    t.as_ref().map(|t| format!("{}.{:03}", t.seconds, t.nanos / 1_000_000)).unwrap_or_else(|| "-".into())
}

fn print_run(run: &pb::Run) {
    println!("run       {}", run.run_id);
    println!("workflow  {} v{}", run.workflow_name, run.workflow_version);
    println!("state     {}", run_state(run.state));
    if !run.error.is_empty() {
        println!("error     {}", run.error);
    }
    println!(
        "created   {}  started {}  finished {}",
        ts(&run.created_at),
        ts(&run.started_at),
        ts(&run.finished_at)
    );
    println!("steps:");
    for s in &run.steps {
        let extra = if s.error.is_empty() { String::new() } else { format!("  error: {}", s.error) };
        println!(
            "  {:<20} {:<10} {:<10} attempts={}{}",
            s.step_id,
            s.kind,
            step_state(s.state),
            s.attempts,
            extra
        );
    }
    if let Some(out) = &run.output {
        println!("output:");
        print_json(&json::value_to_json(out));
    }
}

/// Loads a workflow spec from YAML or JSON (JSON is YAML).
pub fn load_spec(path: &std::path::Path) -> anyhow::Result<pb::WorkflowSpec> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let spec: aura_engine::spec::WorkflowSpec = serde_norway::from_str(&text)
        .with_context(|| format!("{} is not a valid workflow spec", path.display()))?;
    Ok(aura_scheduler::convert::spec_to_pb(&spec))
}

pub async fn workflow(opts: ClientOpts, cmd: WorkflowCmd) -> anyhow::Result<()> {
    let mut c = Client::connect(&opts).await?;
    match cmd {
        WorkflowCmd::Apply { file } => {
            let spec = load_spec(&file)?;
            let resp = c
                .inner
                .register_workflow(c.req(pb::RegisterWorkflowRequest { spec: Some(spec) }))
                .await
                .map_err(status_err)?;
            let resp = resp.into_inner();
            let wf = resp.workflow.unwrap_or_default();
            let name = wf.spec.map(|s| s.name).unwrap_or_default();
            if resp.created {
                println!("workflow {name} registered as version {}", wf.version);
            } else {
                println!("workflow {name} unchanged (version {})", wf.version);
            }
        }
        WorkflowCmd::List => {
            let mut token = String::new();
            println!("{:<32} {:>7} {:>6}", "NAME", "VERSION", "STEPS");
            loop {
                let resp = c
                    .inner
                    .list_workflows(
                        c.req(pb::ListWorkflowsRequest { page_size: 100, page_token: token.clone() }),
                    )
                    .await
                    .map_err(status_err)?
                    .into_inner();
                for wf in resp.workflows {
                    let spec = wf.spec.unwrap_or_default();
                    println!("{:<32} {:>7} {:>6}", spec.name, wf.version, spec.steps.len());
                }
                if resp.next_page_token.is_empty() {
                    break;
                }
                token = resp.next_page_token;
            }
        }
        WorkflowCmd::Get { name, version } => {
            let wf = c
                .inner
                .get_workflow(c.req(pb::GetWorkflowRequest { name, version }))
                .await
                .map_err(status_err)?;
            let wf = wf.into_inner().workflow.unwrap_or_default();
            println!("# version {}", wf.version);
            let spec = wf.spec.unwrap_or_default();
            print!("{}", serde_norway::to_string(&spec_to_json(&spec))?);
        }
    }
    Ok(())
}

fn spec_to_json(spec: &pb::WorkflowSpec) -> serde_json::Value {
    serde_json::json!({
        "name": spec.name,
        "description": spec.description,
        "steps": spec.steps.iter().map(|s| serde_json::json!({
            "id": s.id,
            "kind": s.kind,
            "config": s.config.as_ref().map(json::struct_to_json),
            "depends_on": s.depends_on,
        })).collect::<Vec<_>>(),
    })
}

pub async fn run(opts: ClientOpts, cmd: RunCmd) -> anyhow::Result<()> {
    let mut c = Client::connect(&opts).await?;
    match cmd {
        RunCmd::Start { workflow, input, idempotency_key, priority, wait } => {
            let input: serde_json::Value =
                serde_json::from_str(&input).context("--input must be a JSON object")?;
            let input = json::json_to_struct(&input).context("--input must be a JSON object")?;
            let req = pb::StartRunRequest {
                workflow_name: workflow,
                input: Some(input),
                idempotency_key: idempotency_key.unwrap_or_default(),
                priority,
                ..Default::default()
            };
            let resp = c.inner.start_run(c.req(req)).await.map_err(status_err)?.into_inner();
            let run = resp.run.unwrap_or_default();
            println!("{} run {}", if resp.created { "started" } else { "existing" }, run.run_id);
            if wait {
                watch(&mut c, &run.run_id).await?;
            }
        }
        RunCmd::Get { run_id } => {
            let run = c.inner.get_run(c.req(pb::GetRunRequest { run_id })).await.map_err(status_err)?;
            print_run(&run.into_inner().run.unwrap_or_default());
        }
        RunCmd::List { workflow, limit } => {
            let req = pb::ListRunsRequest {
                workflow_name: workflow.unwrap_or_default(),
                page_size: limit,
                ..Default::default()
            };
            let resp = c.inner.list_runs(c.req(req)).await.map_err(status_err)?.into_inner();
            println!("{:<30} {:<24} {:<10} CREATED", "RUN", "WORKFLOW", "STATE");
            for r in resp.runs {
                println!(
                    "{:<30} {:<24} {:<10} {}",
                    r.run_id,
                    r.workflow_name,
                    run_state(r.state),
                    ts(&r.created_at)
                );
            }
        }
        RunCmd::Cancel { run_id, reason } => {
            let resp = c
                .inner
                .cancel_run(c.req(pb::CancelRunRequest { run_id, reason }))
                .await
                .map_err(status_err)?;
            print_run(&resp.into_inner().run.unwrap_or_default());
        }
        RunCmd::Watch { run_id } => watch(&mut c, &run_id).await?,
    }
    Ok(())
}

/// Follows a run with a progress bar until it ends; fails if the run did not succeed.
async fn watch(c: &mut Client, run_id: &str) -> anyhow::Result<()> {
    let run =
        c.inner.get_run(c.req(pb::GetRunRequest { run_id: run_id.to_string() })).await.map_err(status_err)?;
    let total = run.into_inner().run.map_or(0, |r| r.steps.len()) as u64;
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{bar:30}] {pos}/{len} steps  {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut stream = c
        .inner
        .watch_run(c.req(pb::WatchRunRequest { run_id: run_id.to_string() }))
        .await
        .map_err(status_err)?
        .into_inner();
    while let Some(event) = stream.next().await {
        let event = event.map_err(status_err)?;
        let payload = event.payload.as_ref().map(json::struct_to_json).unwrap_or_default();
        let step = payload.get("step_id").and_then(|s| s.as_str()).unwrap_or("");
        match event.r#type.as_str() {
            "step.succeeded" | "step.failed" => bar.inc(1),
            _ => {}
        }
        let error =
            payload.get("error").and_then(|e| e.as_str()).map(|e| format!(" ({e})")).unwrap_or_default();
        bar.suspend(|| println!("{:<16} {step}{error}", event.r#type));
        bar.set_message(event.r#type.clone());
    }
    bar.finish_and_clear();
    let run =
        c.inner.get_run(c.req(pb::GetRunRequest { run_id: run_id.to_string() })).await.map_err(status_err)?;
    let run = run.into_inner().run.unwrap_or_default();
    print_run(&run);
    anyhow::ensure!(
        run.state == pb::RunState::Succeeded as i32,
        "run {} ended {}",
        run.run_id,
        run_state(run.state)
    );
    Ok(())
}

pub async fn queue(opts: ClientOpts, cmd: QueueCmd) -> anyhow::Result<()> {
    let mut c = Client::connect(&opts).await?;
    let stats = match cmd {
        QueueCmd::Stats { queue } => {
            c.inner
                .get_queue_stats(c.req(pb::GetQueueStatsRequest { queue }))
                .await
                .map_err(status_err)?
                .into_inner()
                .stats
        }
        QueueCmd::Pause { queue } => {
            c.inner
                .pause_queue(c.req(pb::PauseQueueRequest { queue }))
                .await
                .map_err(status_err)?
                .into_inner()
                .stats
        }
        QueueCmd::Resume { queue } => {
            c.inner
                .resume_queue(c.req(pb::ResumeQueueRequest { queue }))
                .await
                .map_err(status_err)?
                .into_inner()
                .stats
        }
        QueueCmd::DeadLetters { queue } => {
            let resp = c
                .inner
                .list_dead_letters(c.req(pb::ListDeadLettersRequest {
                    queue,
                    page_size: 100,
                    page_token: String::new(),
                }))
                .await
                .map_err(status_err)?
                .into_inner();
            println!("{:<48} {:>8}  ERROR", "TASK", "ATTEMPTS");
            for d in resp.dead_letters {
                println!("{:<48} {:>8}  {}", d.task_id, d.attempts, d.error);
            }
            return Ok(());
        }
        QueueCmd::Retry { queue, task_id, all } => {
            let req = pb::RetryDeadLetterRequest { queue, task_id: task_id.unwrap_or_default(), all };
            let resp = c.inner.retry_dead_letter(c.req(req)).await.map_err(status_err)?.into_inner();
            println!("retried {}", resp.retried);
            return Ok(());
        }
    };
    let s = stats.unwrap_or_default();
    println!("queue      {}{}", s.queue, if s.paused { " (paused)" } else { "" });
    println!(
        "waiting    {}\ndelayed    {}\nactive     {}\ncompleted  {}\nfailed     {}\ndead       {}",
        s.waiting, s.delayed, s.active, s.completed, s.failed, s.dead
    );
    Ok(())
}

pub async fn schedule(opts: ClientOpts, cmd: ScheduleCmd) -> anyhow::Result<()> {
    let mut c = Client::connect(&opts).await?;
    match cmd {
        ScheduleCmd::Create { workflow, cron, input } => {
            let input: serde_json::Value =
                serde_json::from_str(&input).context("--input must be a JSON object")?;
            let input = json::json_to_struct(&input).context("--input must be a JSON object")?;
            let req = pb::CreateScheduleRequest {
                workflow_name: workflow,
                workflow_version: 0,
                cron,
                input: Some(input),
            };
            let s = c
                .inner
                .create_schedule(c.req(req))
                .await
                .map_err(status_err)?
                .into_inner()
                .schedule
                .unwrap_or_default();
            println!("schedule {} created; next run at {}", s.schedule_id, ts(&s.next_fire_time));
        }
        ScheduleCmd::List => {
            let resp = c
                .inner
                .list_schedules(c.req(pb::ListSchedulesRequest {}))
                .await
                .map_err(status_err)?
                .into_inner();
            println!("{:<28} {:<24} {:<20} NEXT", "SCHEDULE", "WORKFLOW", "CRON");
            for s in resp.schedules {
                println!(
                    "{:<28} {:<24} {:<20} {}",
                    s.schedule_id,
                    s.workflow_name,
                    s.cron,
                    ts(&s.next_fire_time)
                );
            }
        }
        ScheduleCmd::Delete { schedule_id } => {
            c.inner
                .delete_schedule(c.req(pb::DeleteScheduleRequest { schedule_id: schedule_id.clone() }))
                .await
                .map_err(status_err)?;
            println!("schedule {schedule_id} deleted");
        }
    }
    Ok(())
}

pub async fn keys(cmd: KeysCmd) -> anyhow::Result<()> {
    let url = match &cmd {
        KeysCmd::Create { redis, .. } | KeysCmd::List { redis } | KeysCmd::Revoke { redis, .. } => {
            redis.redis_url.clone()
        }
    };
    let conn = aura_common::redis::connect(&url).await?;
    let store = aura_auth::KeyStore::new(conn, "aura");
    match cmd {
        KeysCmd::Create { tenant, name, .. } => {
            let (key, record) = store.create(&tenant, &name).await?;
            eprintln!(
                "created {} for tenant {} (shown once; only its hash is stored):",
                record.id, record.tenant
            );
            println!("{key}");
        }
        KeysCmd::List { .. } => {
            println!("{:<16} {:<20} {:<20} {:<8} CREATED", "ID", "TENANT", "NAME", "STATE");
            for k in store.list().await? {
                let state = if k.revoked { "revoked" } else { "active" };
                println!("{:<16} {:<20} {:<20} {:<8} {}", k.id, k.tenant, k.name, state, k.created_at_ms);
            }
        }
        KeysCmd::Revoke { id, .. } => {
            let record = store.revoke(&id).await?;
            println!("revoked {} (tenant {}); gateways refuse it within a second", record.id, record.tenant);
        }
    }
    Ok(())
}

pub async fn events(opts: ClientOpts, cmd: EventsCmd) -> anyhow::Result<()> {
    let mut c = Client::connect(&opts).await?;
    let EventsCmd::Tail { pattern, from } = cmd;
    let req = pb::SubscribeRequest {
        patterns: vec![pattern],
        from_offset: from.unwrap_or_default(),
        from_beginning: false,
    };
    let mut stream = c.inner.subscribe(c.req(req)).await.map_err(status_err)?.into_inner();
    while let Some(event) = stream.next().await {
        let event = event.map_err(status_err)?;
        let payload = event.payload.as_ref().map(json::struct_to_json).unwrap_or_default();
        println!("{} {} {} {}", event.offset, event.topic, event.r#type, payload);
    }
    Ok(())
}

pub async fn metrics(
    opts: ClientOpts,
    workflow: Option<String>,
    window: Option<String>,
) -> anyhow::Result<()> {
    let mut c = Client::connect(&opts).await?;
    let windows = match window.as_deref() {
        None => vec!["1m", "1h", "24h"],
        Some(w @ ("1m" | "1h" | "24h")) => vec![w],
        Some(other) => anyhow::bail!("--window {other:?}: use 1m, 1h or 24h"),
    };
    println!("workflow: {}", workflow.as_deref().unwrap_or("(all)"));
    println!(
        "{:<6} {:>8} {:>10} {:>7} {:>10} {:>8} {:>9} {:>8} {:>10} {:>10} {:>10}",
        "WINDOW",
        "STARTED",
        "SUCCEEDED",
        "FAILED",
        "CANCELLED",
        "RETRIED",
        "SUCCESS",
        "RUNS/S",
        "P50",
        "P95",
        "P99"
    );
    let mut kind_rows = Vec::new();
    for w in windows {
        let window = match w {
            "1m" => pb::MetricsWindow::LastMinute,
            "1h" => pb::MetricsWindow::LastHour,
            _ => pb::MetricsWindow::LastDay,
        };
        let req = pb::GetMetricsRequest {
            workflow_name: workflow.clone().unwrap_or_default(),
            window: window as i32,
        };
        let resp = c.inner.get_metrics(c.req(req)).await.map_err(status_err)?.into_inner();
        let m = resp.runs.unwrap_or_default();
        let ms = |v: f64| if m.durations_counted == 0 { "-".to_string() } else { format!("{v:.1}ms") };
        println!(
            "{:<6} {:>8} {:>10} {:>7} {:>10} {:>8} {:>8.1}% {:>8.2} {:>10} {:>10} {:>10}",
            w,
            m.runs_started,
            m.runs_succeeded,
            m.runs_failed,
            m.runs_cancelled,
            m.steps_retried,
            m.success_rate * 100.0,
            m.throughput_per_second,
            ms(m.duration_p50_ms),
            ms(m.duration_p95_ms),
            ms(m.duration_p99_ms),
        );
        let wait = |p50: f64, p95: f64, p99: f64| format!("{p50:>9.1}ms {p95:>9.1}ms {p99:>9.1}ms");
        kind_rows.push(format!(
            "{:<6} {:<10} {:>9} {}",
            w,
            "(all)",
            resp.step_kinds.iter().map(|k| k.attempts_started).sum::<u64>(),
            wait(m.queue_wait_p50_ms, m.queue_wait_p95_ms, m.queue_wait_p99_ms)
        ));
        for k in &resp.step_kinds {
            kind_rows.push(format!(
                "{:<6} {:<10} {:>9} {}",
                w,
                k.kind,
                k.attempts_started,
                wait(k.queue_wait_p50_ms, k.queue_wait_p95_ms, k.queue_wait_p99_ms)
            ));
        }
    }
    println!();
    println!(
        "{:<6} {:<10} {:>9} {:>11} {:>11} {:>11}",
        "WINDOW", "STEP KIND", "ATTEMPTS", "WAIT P50", "WAIT P95", "WAIT P99"
    );
    for row in kind_rows {
        println!("{row}");
    }
    Ok(())
}

/// `aura up --demo`: registers `examples/hello.yaml`'s workflow and runs it once.
pub async fn demo(gateway: &str, api_key: Option<String>) -> anyhow::Result<()> {
    let mut c = Client::connect_url(gateway, api_key).await?;
    let spec: aura_engine::spec::WorkflowSpec =
        serde_norway::from_str(include_str!("../../../examples/hello.yaml"))?;
    let spec = aura_scheduler::convert::spec_to_pb(&spec);
    c.inner
        .register_workflow(c.req(pb::RegisterWorkflowRequest { spec: Some(spec) }))
        .await
        .map_err(status_err)?;
    let input = json::json_to_struct(&serde_json::json!({"name": "AURA"})).unwrap_or_default();
    let req = pb::StartRunRequest { workflow_name: "hello".into(), input: Some(input), ..Default::default() };
    let run = c.inner.start_run(c.req(req)).await.map_err(status_err)?.into_inner().run.unwrap_or_default();
    println!("demo: started run {} of workflow hello", run.run_id);
    watch(&mut c, &run.run_id).await
}

#[cfg(test)]
mod tests {
    /// Every example under examples/ is a valid workflow (what `workflow apply` would send).
    #[test]
    fn examples_are_valid_workflows() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let spec: aura_engine::spec::WorkflowSpec =
                serde_norway::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            spec.validate(1 << 20).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            for step in &spec.steps {
                aura_steps::validate_step(&step.kind, &step.config, &step.depends_on)
                    .unwrap_or_else(|e| panic!("{}: {e:?}", path.display()));
            }
            checked += 1;
        }
        assert!(checked >= 4, "examples checked: {checked}");
    }
}

//! Any language: `examples/python-worker/worker.py` (grpcio, stubs generated from proto/)
//! takes the `external` steps of queue `py-queue` through the Gateway. A run whose middle
//! step is external succeeds with the Python worker's output flowing into a transform; a
//! handler error fails the step with the handler's message; a cancellation reaches the
//! Python task through its heartbeats; SIGTERM stops the worker cleanly.
//!
//! The interpreter is `$AURA_PYTHON` (default `python3`) with grpcio and grpcio-tools.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use aura_e2e::{input, spec, wait_for_run};
use aura_proto::{json, v1 as pb};
use aura_testkit::{
    RedisServer,
    mesh::{Mesh, MeshOptions},
    wait_until,
};
use pb::gateway_client::GatewayClient;
use serde_json::{Value as Json, json};
use tonic::transport::Channel;

fn python() -> String {
    std::env::var("AURA_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root").to_path_buf()
}

/// The Python worker as a child process; its log (stderr) is collected as it comes.
struct PythonWorker {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl PythonWorker {
    fn spawn(gateway: &str, queue: &str) -> PythonWorker {
        let mut child = Command::new(python())
            .arg(repo_root().join("examples/python-worker/worker.py"))
            .args(["--gateway", gateway, "--queue", queue, "--worker-id", "py-test", "--drain-timeout", "5"])
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python must be installed (AURA_PYTHON picks the interpreter)");
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = log.clone();
        let stderr = child.stderr.take().expect("piped stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        PythonWorker { child, log }
    }

    /// Waits until it polls; fails at once with its log if it exits first (no grpcio…).
    async fn wait_until_polling(&mut self) {
        let start = Instant::now();
        while !self.logged("polling queue") {
            if let Some(status) = self.child.try_wait().expect("wait for python") {
                panic!(
                    "the python worker exited ({status}) before polling; AURA_PYTHON must name an \
                     interpreter with grpcio and grpcio-tools (pip install -r tests/interop/requirements.txt). \
                     Its log:\n{}",
                    self.log()
                );
            }
            assert!(start.elapsed() < Duration::from_secs(60), "python worker not polling:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn logged(&self, text: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(text))
    }
}

impl Drop for PythonWorker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_run(gw: &mut GatewayClient<Channel>, run_input: Json) -> String {
    let req =
        pb::StartRunRequest { workflow_name: "shout".into(), input: input(run_input), ..Default::default() };
    gw.start_run(req).await.expect("start run").into_inner().run.expect("run").run_id
}

#[tokio::test]
async fn python_worker_runs_external_steps_through_the_gateway() {
    let redis = RedisServer::start();
    let mesh = Mesh::start(&redis.url(), MeshOptions::default()).await;
    let mut gw = mesh.gateway().await;
    let wf = spec(json!({"name": "shout", "steps": [
        {"id": "prep", "kind": "noop"},
        {"id": "shout", "kind": "external", "depends_on": ["prep"], "config": {"queue": "py-queue"}},
        {"id": "final", "kind": "transform", "depends_on": ["shout"],
         "config": {"jq": "{shout: .steps.shout.output.upper, length: .steps.shout.output.length}"}},
    ]}));
    gw.register_workflow(pb::RegisterWorkflowRequest { spec: Some(wf) }).await.expect("register");

    let mut worker = PythonWorker::spawn(&mesh.gateway.to_string(), "py-queue");
    worker.wait_until_polling().await;

    // The Python worker's output flows into the transform.
    let run_id = start_run(&mut gw, json!({"text": "hello from rust"})).await;
    let run = wait_for_run(&mut gw, &run_id, Duration::from_secs(90)).await;
    assert_eq!(run.state, pb::RunState::Succeeded as i32, "{run:#?}\npython log:\n{}", worker.log());
    let output = json::value_to_json(run.output.as_ref().expect("run output"));
    assert_eq!(output, json!({"final": {"shout": "HELLO FROM RUST", "length": 15}}));
    let shout = run.steps.iter().find(|s| s.step_id == "shout").expect("shout step");
    assert_eq!(shout.attempts, 1);

    // A handler error fails the step with the handler's message, without retries.
    let run_id = start_run(&mut gw, json!({"text": 42})).await;
    let run = wait_for_run(&mut gw, &run_id, Duration::from_secs(30)).await;
    assert_eq!(run.state, pb::RunState::Failed as i32, "{run:#?}");
    let shout = run.steps.iter().find(|s| s.step_id == "shout").expect("shout step");
    assert_eq!(shout.attempts, 1, "{shout:?}");
    assert!(shout.error.contains("input.text must be a string"), "{}", shout.error);

    // A long task learns of a cancellation from its heartbeats and stops.
    let run_id = start_run(&mut gw, json!({"text": "slow", "sleep_seconds": 120})).await;
    wait_until("the python worker runs the long task", Duration::from_secs(30), || async {
        let run = gw.clone().get_run(pb::GetRunRequest { run_id: run_id.clone() }).await;
        run.ok()
            .and_then(|r| r.into_inner().run)
            .and_then(|r| r.steps.into_iter().find(|s| s.step_id == "shout"))
            .is_some_and(|s| s.state == pb::StepState::Running as i32)
    })
    .await;
    gw.cancel_run(pb::CancelRunRequest { run_id: run_id.clone(), reason: "test".into() }).await.unwrap();
    wait_until("the python task stops", Duration::from_secs(15), || async {
        worker.logged("LEASE_STATUS_CANCELLED") && worker.logged("cancelled")
    })
    .await;

    // SIGTERM: a clean exit.
    let pid = worker.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().is_ok_and(|s| s.success()));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = worker.child.try_wait().expect("wait for python") {
            break status;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "python worker ignored SIGTERM:\n{}",
            worker.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}\n{}", worker.log());
    assert!(worker.logged("stopped: 2 tasks finished, 0 handed back"), "{}", worker.log());
    mesh.stop().await;
}

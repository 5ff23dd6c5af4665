//! Helpers shared by the end-to-end tests.

use std::time::Duration;

use aura_proto::{json, v1 as pb};
use pb::gateway_client::GatewayClient;
use tonic::transport::Channel;

/// A workflow spec from JSON (the shape users write in YAML).
pub fn spec(value: serde_json::Value) -> pb::WorkflowSpec {
    let name = value["name"].as_str().unwrap_or_default().to_string();
    let steps = value["steps"]
        .as_array()
        .map(|steps| {
            steps
                .iter()
                .map(|s| pb::StepSpec {
                    id: s["id"].as_str().unwrap_or_default().into(),
                    kind: s["kind"].as_str().unwrap_or_default().into(),
                    config: s.get("config").and_then(json::json_to_struct),
                    depends_on: s["depends_on"]
                        .as_array()
                        .map(|d| d.iter().filter_map(|x| x.as_str().map(String::from)).collect())
                        .unwrap_or_default(),
                    ..Default::default()
                })
                .collect()
        })
        .unwrap_or_default();
    pb::WorkflowSpec { name, steps, ..Default::default() }
}

/// Input struct from JSON.
pub fn input(value: serde_json::Value) -> Option<prost_types::Struct> {
    json::json_to_struct(&value)
}

/// Starts a run of `workflow` with `input` and waits for its final state.
pub async fn run_to_end(
    client: &mut GatewayClient<Channel>,
    workflow: &str,
    input_json: serde_json::Value,
) -> pb::Run {
    let started = client
        .start_run(pb::StartRunRequest {
            workflow_name: workflow.into(),
            input: input(input_json),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|s| panic!("StartRun {workflow}: {s:?}"))
        .into_inner();
    let run_id = started.run.expect("StartRun answers the run").run_id;
    wait_for_run(client, &run_id, Duration::from_secs(20)).await
}

/// Waits until the run reaches a final state and returns it.
pub async fn wait_for_run(client: &mut GatewayClient<Channel>, run_id: &str, timeout: Duration) -> pb::Run {
    let final_states =
        [pb::RunState::Succeeded as i32, pb::RunState::Failed as i32, pb::RunState::Cancelled as i32];
    let start = std::time::Instant::now();
    loop {
        if let Ok(resp) = client.get_run(pb::GetRunRequest { run_id: run_id.to_string() }).await {
            let run = resp.into_inner().run.unwrap_or_default();
            if final_states.contains(&run.state) {
                return run;
            }
        }
        assert!(start.elapsed() < timeout, "run {run_id} did not finish within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The `aura` binary: `$AURA_BIN`, or `<target>/debug/aura` (build it first with
/// `cargo build -p aura-cli --bin aura`; `scripts/test.sh` does).
pub fn aura_bin() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("AURA_BIN") {
        return path.into();
    }
    let root =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR").map(Into::into).unwrap_or_else(|| root.join("target"));
    let bin = target.join("debug").join("aura");
    assert!(
        bin.exists(),
        "{} is missing: build it first with `cargo build -p aura-cli --bin aura`",
        bin.display()
    );
    bin
}

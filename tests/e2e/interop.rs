//! What grpcurl does, from another language: a Python client that knows nothing but the
//! address lists the services by reflection (v1 and v1alpha), describes aura.v1.Gateway,
//! checks health, and calls StartRun with stubs generated from proto/.

use std::{path::PathBuf, process::Command, time::Duration};

use aura_e2e::spec;
use aura_proto::v1 as pb;
use aura_testkit::{
    RedisServer,
    mesh::{Mesh, MeshOptions},
};
use serde_json::json;

fn python() -> String {
    std::env::var("AURA_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("repo root").to_path_buf()
}

#[tokio::test]
async fn python_grpcio_client_discovers_and_calls_the_gateway() {
    let redis = RedisServer::start();
    let mesh = Mesh::start(&redis.url(), MeshOptions::default()).await;
    let mut gw = mesh.gateway().await;
    let wf = spec(json!({"name": "py", "steps": [{"id": "s", "kind": "noop"}]}));
    gw.register_workflow(pb::RegisterWorkflowRequest { spec: Some(wf) }).await.unwrap();
    aura_testkit::wait_until("gateway SERVING", Duration::from_secs(10), || async {
        Mesh::health(mesh.gateway, "").await == Some(1)
    })
    .await;
    let addr = mesh.gateway.to_string();
    let root = repo_root();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(root.join("tests/interop/reflection_client.py"))
            .arg(&addr)
            .arg(root.join("proto"))
            .output()
    })
    .await
    .unwrap()
    .expect("python3 must be installed (scripts/test.sh installs the interop requirements)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "python interop client failed (install deps: pip install -r tests/interop/requirements.txt)\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("services(v1): ") && stdout.contains("aura.v1.Gateway"), "{stdout}");
    assert!(stdout.contains("services(v1alpha): "), "{stdout}");
    assert!(stdout.contains("health: SERVING"), "{stdout}");
    assert!(stdout.contains("run: RUN_STATE_SUCCEEDED"), "{stdout}");
    mesh.stop().await;
}

//! TLS, with certificates made by the `openssl` CLI:
//! - the Gateway's listener: a client that trusts the certificate gets in, a plaintext one
//!   does not;
//! - reload: a new pair written over the files serves new connections (in-process through
//!   `ServerTls::reload`, and with SIGHUP on a real `aura serve gateway`), connections
//!   opened before keep working, and a pair that does not load leaves the old one in use;
//! - between services: Scheduler and Events serving TLS, the Gateway and the Worker reaching
//!   them at `https://` URLs trusting a private CA; a Gateway without that CA gets
//!   UNAVAILABLE.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use aura_common::tls::{ClientTls, ServerTls};
use aura_e2e::{aura_bin, run_to_end, spec};
use aura_proto::v1 as pb;
use aura_testkit::{
    RedisServer,
    mesh::{InternalTls, Mesh, MeshOptions},
};
use pb::gateway_client::GatewayClient;
use serde_json::{Value as Json, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::{
    Code,
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

// ---------------------------------------------------------------------------------------
// Certificates.

/// A new P-256 key, unencrypted.
const EC_KEY: &str = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";

/// A directory of test CAs and certificates; `live/` holds the pair a server is pointed at.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let pki = Pki { dir: tempfile::tempdir().unwrap() };
        std::fs::create_dir(pki.path("live")).unwrap();
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Runs `openssl` with `command`'s words as arguments.
    fn openssl(&self, command: &str) {
        let args: Vec<&str> = command.split_whitespace().collect();
        let out = Command::new("openssl")
            .current_dir(self.dir.path())
            .args(&args)
            .output()
            .expect("openssl must be installed");
        assert!(out.status.success(), "openssl {command}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A self-signed CA: `<name>.pem`, `<name>.key`.
    fn ca(&self, name: &str) -> &Self {
        self.openssl(&format!(
            "req -x509 {EC_KEY} -days 1 -subj /CN=aura-test-{name} -keyout {name}.key -out {name}.pem"
        ));
        self
    }

    /// A certificate for localhost signed by CA `ca`, with a key of its own: `<name>.pem`,
    /// `<name>.key`.
    fn leaf(&self, ca: &str, name: &str) -> &Self {
        self.openssl(&format!("req {EC_KEY} -subj /CN=localhost -keyout {name}.key -out {name}.csr"));
        std::fs::write(self.path("ext.cnf"), "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n")
            .unwrap();
        self.openssl(&format!(
            "x509 -req -in {name}.csr -CA {ca}.pem -CAkey {ca}.key -CAcreateserial -days 1 \
             -extfile ext.cnf -out {name}.pem"
        ));
        self
    }

    /// Writes certificate `cert` and key `key` over `live/cert.pem` and `live/key.pem`.
    fn install(&self, cert: &str, key: &str) {
        std::fs::copy(self.path(&format!("{cert}.pem")), self.live_cert()).unwrap();
        std::fs::copy(self.path(&format!("{key}.key")), self.live_key()).unwrap();
    }

    fn live_cert(&self) -> PathBuf {
        self.path("live/cert.pem")
    }

    fn live_key(&self) -> PathBuf {
        self.path("live/key.pem")
    }
}

/// A TLS connection to `addr` as `localhost`, trusting only the CA in `ca`.
async fn connect(addr: SocketAddr, ca: &Path) -> Result<GatewayClient<Channel>, tonic::transport::Error> {
    let ca = Certificate::from_pem(std::fs::read(ca).unwrap());
    let channel = Endpoint::from_shared(format!("https://localhost:{}", addr.port()))?
        .tls_config(ClientTlsConfig::new().ca_certificate(ca).domain_name("localhost"))?
        .connect()
        .await?;
    Ok(GatewayClient::new(channel))
}

async fn list_workflows(client: &mut GatewayClient<Channel>) -> Result<(), tonic::Status> {
    client.list_workflows(pb::ListWorkflowsRequest::default()).await.map(drop)
}

/// An in-process gateway serving `tls` in front of `mesh`.
async fn tls_gateway(
    redis: &RedisServer,
    mesh: &Mesh,
    tls: ServerTls,
    stop: CancellationToken,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = aura_gateway::Config {
        scheduler_urls: vec![format!("http://{}", mesh.scheduler)],
        events_urls: vec![format!("http://{}", mesh.events)],
        redis_url: redis.url(),
        insecure_no_auth: true,
        tls: Some(tls),
        ..Default::default()
    };
    tokio::spawn(async move { aura_gateway::serve(config, listener, stop).await.unwrap() });
    addr
}

// ---------------------------------------------------------------------------------------
// The Gateway's listener.

#[tokio::test]
async fn the_gateway_serves_tls_with_a_test_certificate() {
    let pki = Pki::new();
    pki.ca("ca").leaf("ca", "server");
    pki.install("server", "server");
    let redis = RedisServer::start();
    let mesh = Mesh::start(&redis.url(), MeshOptions { worker_concurrency: 0, ..Default::default() }).await;
    let stop = CancellationToken::new();
    let tls = ServerTls::from_files(pki.live_cert(), pki.live_key()).unwrap();
    let addr = tls_gateway(&redis, &mesh, tls, stop.clone()).await;

    let mut gw = connect(addr, &pki.path("ca.pem")).await.expect("TLS handshake with the test certificate");
    list_workflows(&mut gw).await.expect("a call over TLS");

    let plain = Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await;
    let refused = match plain {
        Err(_) => true,
        Ok(channel) => list_workflows(&mut GatewayClient::new(channel)).await.is_err(),
    };
    assert!(refused, "plaintext must not reach a TLS gateway");
    stop.cancel();
    mesh.stop().await;
}

#[tokio::test]
async fn a_reloaded_certificate_serves_new_connections_and_spares_open_ones() {
    let pki = Pki::new();
    pki.ca("ca1").leaf("ca1", "a").ca("ca2").leaf("ca2", "b").leaf("ca2", "stray");
    pki.install("a", "a");
    let redis = RedisServer::start();
    let mesh = Mesh::start(&redis.url(), MeshOptions { worker_concurrency: 0, ..Default::default() }).await;
    let stop = CancellationToken::new();
    let tls = ServerTls::from_files(pki.live_cert(), pki.live_key()).unwrap();
    let addr = tls_gateway(&redis, &mesh, tls.clone(), stop.clone()).await;
    let mut before = connect(addr, &pki.path("ca1.pem")).await.expect("certificate A, trusted through CA1");
    list_workflows(&mut before).await.unwrap();

    // B (signed by CA2) over the same files, then a reload.
    pki.install("b", "b");
    tls.reload().expect("pair B loads");
    let mut after = connect(addr, &pki.path("ca2.pem")).await.expect("certificate B, trusted through CA2");
    list_workflows(&mut after).await.unwrap();
    assert!(connect(addr, &pki.path("ca1.pem")).await.is_err(), "CA1 must no longer be enough");
    // A reconnect would need CA1 to accept B, which it cannot: the call passing proves the
    // connection opened before the reload is still the one in use.
    list_workflows(&mut before).await.expect("a connection opened before the reload keeps working");

    // A key that is not the certificate's, then no key at all: B stays.
    pki.install("b", "stray");
    let err = tls.reload().expect_err("a mismatched key must not load").to_string();
    assert!(err.contains("does not fit"), "{err}");
    std::fs::remove_file(pki.live_key()).unwrap();
    let err = tls.reload().expect_err("a missing key must not load").to_string();
    assert!(err.contains("cannot read TLS key"), "{err}");
    let mut still = connect(addr, &pki.path("ca2.pem")).await.expect("B is still served");
    list_workflows(&mut still).await.unwrap();
    list_workflows(&mut before).await.unwrap();

    stop.cancel();
    mesh.stop().await;
}

/// `aura serve gateway` with TLS, its JSON log lines passed on as they come.
struct GatewayProcess {
    child: Child,
    addr: SocketAddr,
    logs: mpsc::Receiver<Json>,
}

impl GatewayProcess {
    fn spawn(redis: &RedisServer, mesh: &Mesh, pki: &Pki) -> GatewayProcess {
        let mut child = Command::new(aura_bin())
            .args(["serve", "gateway", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"])
            .args(["--redis-url", &redis.url(), "--insecure-no-auth"])
            .args(["--scheduler-url", &format!("http://{}", mesh.scheduler)])
            .args(["--events-url", &format!("http://{}", mesh.events)])
            .arg("--tls-cert")
            .arg(pki.live_cert())
            .arg("--tls-key")
            .arg(pki.live_key())
            .env("AURA_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the aura binary");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, logs) = mpsc::channel();
        // Keeps draining so the pipe never fills up.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(entry) = serde_json::from_str::<Json>(&line) {
                    let _ = tx.send(entry);
                }
            }
        });
        let mut process = GatewayProcess { child, addr: SocketAddr::from(([0, 0, 0, 0], 0)), logs };
        let listening = process.wait_for_log("gateway listening");
        process.addr =
            listening["fields"]["addr"].as_str().and_then(|a| a.parse().ok()).expect("bound address");
        process
    }

    /// The next log entry whose message is `message`.
    fn wait_for_log(&mut self, message: &str) -> Json {
        loop {
            match self.logs.recv_timeout(Duration::from_secs(30)) {
                Ok(entry) if entry["fields"]["message"] == message => return entry,
                Ok(_) => {}
                Err(_) => {
                    let _ = self.child.kill();
                    panic!("the gateway never logged {message:?}");
                }
            }
        }
    }

    fn sighup(&self) {
        let status = Command::new("kill").args(["-HUP", &self.child.id().to_string()]).status();
        assert!(status.is_ok_and(|s| s.success()), "kill -HUP");
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn sighup_reloads_the_certificate_of_a_running_gateway_process() {
    let pki = Pki::new();
    pki.ca("ca1").leaf("ca1", "a").ca("ca2").leaf("ca2", "b").leaf("ca2", "stray");
    pki.install("a", "a");
    let redis = RedisServer::start();
    let mesh = Mesh::start(&redis.url(), MeshOptions { worker_concurrency: 0, ..Default::default() }).await;
    let mut gateway = GatewayProcess::spawn(&redis, &mesh, &pki);
    let mut before = connect(gateway.addr, &pki.path("ca1.pem")).await.expect("certificate A");
    list_workflows(&mut before).await.unwrap();

    pki.install("b", "b");
    gateway.sighup();
    gateway.wait_for_log("tls certificate reloaded");
    let mut after = connect(gateway.addr, &pki.path("ca2.pem")).await.expect("certificate B after SIGHUP");
    list_workflows(&mut after).await.unwrap();
    assert!(connect(gateway.addr, &pki.path("ca1.pem")).await.is_err(), "CA1 must no longer be enough");
    list_workflows(&mut before).await.expect("a connection opened before SIGHUP keeps working");

    pki.install("b", "stray");
    gateway.sighup();
    let failed = gateway.wait_for_log("tls certificate reload failed; still serving the previous one");
    assert_eq!(failed["level"], "ERROR", "{failed}");
    let mut still = connect(gateway.addr, &pki.path("ca2.pem")).await.expect("B is still served");
    list_workflows(&mut still).await.unwrap();
    assert!(gateway.child.try_wait().unwrap().is_none(), "SIGHUP must not stop the gateway");
    mesh.stop().await;
}

// ---------------------------------------------------------------------------------------
// Between services.

#[tokio::test]
async fn internal_services_over_tls_run_workflows_and_refuse_gateways_without_the_ca() {
    let pki = Pki::new();
    pki.ca("ca").leaf("ca", "internal").ca("other");
    let internal_tls = InternalTls {
        server: ServerTls::from_files(pki.path("internal.pem"), pki.path("internal.key")).unwrap(),
        // The URLs say 127.0.0.1; the certificate says localhost.
        client: ClientTls::from_file(pki.path("ca.pem"), Some("localhost".into())).unwrap(),
    };
    let redis = RedisServer::start();
    let mut mesh = Mesh::start(
        &redis.url(),
        MeshOptions { internal_tls: Some(internal_tls), workers: 1, ..Default::default() },
    )
    .await;

    // Gateway → Scheduler (register, start, get), Worker → Scheduler (poll, report) and
    // Gateway → Events (watch), all over TLS.
    let mut gw = mesh.gateway().await;
    let wf = spec(json!({"name": "tls", "steps": [{"id": "only", "kind": "noop"}]}));
    gw.register_workflow(pb::RegisterWorkflowRequest { spec: Some(wf) }).await.unwrap();
    let run = run_to_end(&mut gw, "tls", json!({"x": 1})).await;
    assert_eq!(run.state, pb::RunState::Succeeded as i32, "{run:?}");
    let mut events = gw.watch_run(pb::WatchRunRequest { run_id: run.run_id }).await.unwrap().into_inner();
    let mut types = Vec::new();
    while let Some(event) = tokio_stream::StreamExt::next(&mut events).await {
        types.push(event.expect("events over TLS").r#type);
    }
    assert!(types.iter().any(|t| t.contains("succeeded")), "{types:?}");

    // Gateways that cannot verify the services: no CA at all, another CA, plaintext.
    let other_ca = ClientTls::from_file(pki.path("other.pem"), Some("localhost".into())).unwrap();
    let plain_scheduler = format!("http://{}", mesh.scheduler);
    let plain_events = format!("http://{}", mesh.events);
    let without_ca = mesh.add_gateway(|c| c.internal_tls = None).await;
    let wrong_ca = mesh.add_gateway(|c| c.internal_tls = Some(other_ca)).await;
    let plaintext = mesh
        .add_gateway(|c| {
            c.internal_tls = None;
            c.scheduler_urls = vec![plain_scheduler];
            c.events_urls = vec![plain_events];
        })
        .await;
    for (what, addr) in [("no CA", without_ca), ("another CA", wrong_ca), ("plaintext", plaintext)] {
        let mut gw = GatewayClient::new(Mesh::channel(addr).await);
        let mut request = tonic::Request::new(pb::ListWorkflowsRequest::default());
        // Only a bound on a hang, which would otherwise show as DEADLINE_EXCEEDED.
        request.set_timeout(Duration::from_secs(20));
        let err = gw.list_workflows(request).await.expect_err(what);
        // A failed handshake is UNAVAILABLE. Plaintext fails later, once the TLS server
        // hangs up on the HTTP/2 preface, and tonic reports that as UNKNOWN "transport error".
        let expected: &[Code] =
            if what == "plaintext" { &[Code::Unavailable, Code::Unknown] } else { &[Code::Unavailable] };
        assert!(expected.contains(&err.code()), "{what}: {err:?}");
    }
    mesh.stop().await;
}

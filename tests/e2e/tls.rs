//! The Gateway over TLS: a client that trusts the certificate gets in; a plaintext one
//! does not.

use std::process::Command;

use aura_proto::v1 as pb;
use aura_testkit::{
    RedisServer,
    mesh::{Mesh, MeshOptions},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

#[tokio::test]
async fn the_gateway_serves_tls_with_a_test_certificate() {
    // A test CA and a server certificate for localhost signed by it.
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name);
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir.path())
            .args(args)
            .output()
            .expect("openssl must be installed");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    openssl(
        &[
            &["req", "-x509"],
            &ec[..],
            &["-days", "1", "-subj", "/CN=aura test CA", "-keyout", "ca.key", "-out", "ca.pem"],
        ]
        .concat(),
    );
    openssl(
        &[&["req"], &ec[..], &["-subj", "/CN=localhost", "-keyout", "key.pem", "-out", "server.csr"]]
            .concat(),
    );
    std::fs::write(path("ext.cnf"), "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n").unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "cert.pem",
    ]);
    let (cert, key) = (path("cert.pem"), path("key.pem"));

    let redis = RedisServer::start();
    let mesh = Mesh::start(&redis.url(), MeshOptions { worker_concurrency: 0, ..Default::default() }).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let config = aura_gateway::Config {
        scheduler_urls: vec![format!("http://{}", mesh.scheduler)],
        events_urls: vec![format!("http://{}", mesh.events)],
        redis_url: redis.url(),
        insecure_no_auth: true,
        tls: Some((cert.clone(), key)),
        ..Default::default()
    };
    let token = stop.clone();
    tokio::spawn(async move { aura_gateway::serve(config, listener, token).await.unwrap() });

    let ca = Certificate::from_pem(std::fs::read(path("ca.pem")).unwrap());
    let tls = ClientTlsConfig::new().ca_certificate(ca).domain_name("localhost");
    let channel = Endpoint::from_shared(format!("https://localhost:{}", addr.port()))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("TLS handshake with the test certificate");
    let mut gw = pb::gateway_client::GatewayClient::new(channel);
    gw.list_workflows(pb::ListWorkflowsRequest::default()).await.expect("a call over TLS");

    let plain = Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await;
    let refused = match plain {
        Err(_) => true,
        Ok(channel) => pb::gateway_client::GatewayClient::new(channel)
            .list_workflows(pb::ListWorkflowsRequest::default())
            .await
            .is_err(),
    };
    assert!(refused, "plaintext must not reach a TLS gateway");
    stop.cancel();
    mesh.stop().await;
}

//! `aura up`: the whole mesh in one process, for a laptop. Uses the Redis at `--redis-url`
//! or, when nothing answers there and `redis-server` is installed, a private one in a temp
//! dir that stops with AURA.

use std::{
    net::SocketAddr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use aura_common::{CancellationToken, grpc, metrics, shutdown};

use crate::{
    config::{Role, Settings, UpOpts},
    roles,
};

/// A private redis-server, killed on drop.
struct PrivateRedis {
    child: Child,
    _dir: tempfile::TempDir,
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn redis_answers(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else { return false };
    let ping = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    matches!(tokio::time::timeout(Duration::from_secs(1), ping).await, Ok(Ok(_)))
}

async fn ensure_redis(url: &str) -> anyhow::Result<(String, Option<PrivateRedis>)> {
    if redis_answers(url).await {
        return Ok((url.to_string(), None));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let dir = tempfile::tempdir()?;
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|_| {
            anyhow::anyhow!(
                "nothing answers at {url} and redis-server is not installed.\n\
                 Install Redis (Debian/Ubuntu: `sudo apt-get install redis-server`; macOS: `brew install redis`), \
                 or point --redis-url / AURA_REDIS_URL at a running Redis."
            )
        })?;
    let private = PrivateRedis { child, _dir: dir };
    let url = format!("redis://127.0.0.1:{port}");
    for _ in 0..100 {
        if redis_answers(&url).await {
            tracing::info!(%url, "started a private redis-server (no persistence; stops with aura up)");
            return Ok((url, Some(private)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("the private redis-server on port {port} did not start")
}

/// Runs the four roles until Ctrl-C / SIGTERM.
pub async fn run(opts: UpOpts) -> anyhow::Result<()> {
    let (redis_url, _private) = ensure_redis(&opts.redis_url).await?;
    let addr = |port| SocketAddr::new(opts.bind, port);
    let settings = Settings {
        listen: None,
        metrics_listen: None,
        redis_url,
        scheduler_urls: vec![format!("http://{}", addr(opts.scheduler_port))],
        events_urls: vec![format!("http://{}", addr(opts.events_port))],
        partitions: opts.partitions,
        key_concurrency_cap: 0,
        concurrency: opts.concurrency,
        kind_concurrency: Default::default(),
        queues: vec!["builtin".into()],
        drain_timeout: Duration::from_secs(30),
        llm_api_key: std::env::var("AURA_LLM_API_KEY").ok(),
        insecure_no_auth: opts.insecure_no_auth,
        api_keys_file: None,
        rate_limit: Some(aura_ratelimit::Limit { rps: 1000, burst: 2000 }),
        rate_limit_groups: Default::default(),
        rate_limit_fail_closed: false,
        envoy_rls: false,
        max_message_bytes: aura_gateway::Config::default().max_message_bytes,
        max_in_flight: aura_gateway::Config::default().max_in_flight,
        method_costs: aura_gateway::default_method_costs(),
        tls: None,
        internal_tls_ca: None,
        internal_tls_domain: None,
    };
    // A development key for tenant `dev`, so the laptop setup is authenticated like production.
    let dev_key = if opts.insecure_no_auth {
        None
    } else {
        let store = aura_auth::KeyStore::new(aura_common::redis::connect(&settings.redis_url).await?, "aura");
        let key = match &opts.dev_api_key {
            Some(key) => {
                anyhow::ensure!(key.len() >= 16, "--dev-api-key must be at least 16 characters");
                let record = aura_auth::KeyRecord {
                    id: "key_dev".into(),
                    tenant: "dev".into(),
                    name: "aura up".into(),
                    created_at_ms: 0,
                    revoked: false,
                };
                store.put(key, &record).await?;
                key.clone()
            }
            None => store.create("dev", "aura up").await?.0,
        };
        Some(key)
    };
    let token = CancellationToken::new();
    shutdown::cancel_on_signal(token.clone());
    let roles = [
        (Role::Scheduler, opts.scheduler_port),
        (Role::Events, opts.events_port),
        (Role::Worker, opts.worker_port),
        (Role::Gateway, opts.gateway_port),
    ];
    let mut tasks = tokio::task::JoinSet::new();
    for (role, port) in roles {
        let listener = grpc::bind(addr(port))
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", addr(port)))?;
        // Same order as the defaults: gateway, scheduler, worker, events.
        let metrics_addr =
            addr(opts.metrics_port + (role.default_metrics_port() - Role::Gateway.default_metrics_port()));
        let registry = roles::registry(role);
        match metrics::bind(metrics_addr).await {
            Ok(l) => {
                tokio::spawn(metrics::serve(l, registry.clone(), token.clone()));
            }
            Err(e) => {
                tracing::warn!(addr = %metrics_addr, error = %e, "metrics port busy; /metrics disabled for this role")
            }
        }
        let settings = settings.clone();
        let token = token.clone();
        tasks.spawn(async move { roles::run_role(role, &settings, None, listener, token, registry).await });
    }
    let gateway = format!("{}:{}", opts.bind, opts.gateway_port);
    println!("AURA is up. Gateway: {gateway} (gRPC, plaintext). Redis: {}", settings.redis_url);
    match &dev_key {
        Some(key) => {
            println!("  API key (tenant dev): export AURA_API_KEY={key}");
            println!("  try: grpcurl -plaintext -H 'authorization: Bearer {key}' {gateway} list");
        }
        None => {
            println!("  authentication is OFF (--insecure-no-auth); try: grpcurl -plaintext {gateway} list")
        }
    }
    println!(
        "  then: aura workflow apply -f examples/hello.yaml && aura run start hello --input '{{\"name\":\"ada\"}}' --wait"
    );
    if opts.demo {
        let outcome = crate::client::demo(&format!("http://{gateway}"), dev_key.clone()).await;
        match &outcome {
            Ok(()) => println!("demo: OK"),
            Err(e) => eprintln!("demo failed: {e:#}"),
        }
        if opts.exit_after_demo {
            token.cancel();
            while tasks.join_next().await.is_some() {}
            return outcome;
        }
    }
    // A role that stops with an error stops the others.
    let mut first_error = None;
    while let Some(done) = tasks.join_next().await {
        let result = done.map_err(anyhow::Error::from).and_then(|r| r);
        if let Err(e) = result {
            token.cancel();
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

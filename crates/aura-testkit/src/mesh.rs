//! The whole mesh in-process: each service on a listener bound to `127.0.0.1:0` before it
//! starts (no port races), stopped by one token.

use std::{net::SocketAddr, time::Duration};

use aura_proto::v1::{
    events_client::EventsClient, gateway_client::GatewayClient, scheduler_client::SchedulerClient,
    worker_client::WorkerClient,
};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// Options of a test mesh.
#[derive(Clone, Debug)]
pub struct MeshOptions {
    /// Queue partitions.
    pub partitions: usize,
    /// Concurrency of each worker (0: no worker at all).
    pub worker_concurrency: usize,
    /// Scheduler replicas (gateway and workers balance over all of them).
    pub schedulers: usize,
    /// Worker replicas.
    pub workers: usize,
    /// Require API keys at the gateway (off: `--insecure-no-auth`).
    pub auth: bool,
    /// The gateway's default rate limit (`None`: no limiter).
    pub rate_limit: Option<aura_ratelimit::Limit>,
    /// TLS between the services (`None`: plaintext, as by default in production).
    pub internal_tls: Option<InternalTls>,
}

/// TLS inside the mesh: the Scheduler(s) and Events serve `server`; the gateway and the
/// workers reach them at `https://` URLs, trusting `client`. The gateway and the workers
/// themselves still serve plaintext, so the mesh's Gateway and Worker clients work as
/// usual (its Scheduler and Events clients do not).
#[derive(Clone, Debug)]
pub struct InternalTls {
    /// The certificate the Scheduler(s) and Events serve.
    pub server: aura_common::tls::ServerTls,
    /// What the gateway and workers trust.
    pub client: aura_common::tls::ClientTls,
}

impl Default for MeshOptions {
    fn default() -> Self {
        MeshOptions {
            partitions: 1,
            worker_concurrency: 16,
            schedulers: 1,
            workers: 1,
            auth: false,
            rate_limit: aura_gateway::Config::default().rate_limit,
            internal_tls: None,
        }
    }
}

/// A running mesh.
pub struct Mesh {
    /// Gateway address.
    pub gateway: SocketAddr,
    /// Scheduler address (the first replica).
    pub scheduler: SocketAddr,
    /// Every scheduler replica.
    pub schedulers: Vec<SocketAddr>,
    /// Worker address (the first worker, if any).
    pub worker: Option<SocketAddr>,
    /// Events address.
    pub events: SocketAddr,
    /// The Prometheus registry of the first scheduler replica: what it saw of each call.
    pub scheduler_metrics: aura_common::metrics::SharedRegistry,
    redis_url: String,
    /// `MeshOptions::internal_tls`, for gateways added later.
    internal_tls: Option<InternalTls>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

/// The URL the gateway and workers reach an internal service at.
fn internal_url(tls: &Option<InternalTls>, addr: SocketAddr) -> String {
    let scheme = if tls.is_some() { "https" } else { "http" };
    format!("{scheme}://{addr}")
}

async fn bind() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("bound address");
    (listener, addr)
}

impl Mesh {
    /// Starts the four services on `redis_url`.
    pub async fn start(redis_url: &str, options: MeshOptions) -> Mesh {
        let shutdown = CancellationToken::new();
        let (el, events) = bind().await;
        let (gl, gateway) = bind().await;
        let mut tasks = Vec::new();
        let internal_tls = options.internal_tls.clone();
        let server_tls = internal_tls.as_ref().map(|t| t.server.clone());
        let client_tls = internal_tls.as_ref().map(|t| t.client.clone());
        let url = |a: SocketAddr| internal_url(&internal_tls, a);

        let mut schedulers = Vec::new();
        let scheduler_metrics = aura_common::metrics::registry();
        for i in 0..options.schedulers.max(1) {
            let (sl, addr) = bind().await;
            schedulers.push(addr);
            let config = aura_scheduler::Config {
                redis_url: redis_url.into(),
                partitions: options.partitions,
                metrics: if i == 0 { scheduler_metrics.clone() } else { aura_common::metrics::registry() },
                tls: server_tls.clone(),
                ..Default::default()
            };
            let token = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                aura_scheduler::serve(config, sl, token).await.expect("scheduler")
            }));
        }
        let scheduler_urls: Vec<String> = schedulers.iter().map(|a| url(*a)).collect();

        let config = aura_events::Config {
            redis_url: redis_url.into(),
            partitions: options.partitions,
            tls: server_tls,
            ..Default::default()
        };
        let token = shutdown.clone();
        tasks.push(tokio::spawn(async move { aura_events::serve(config, el, token).await.expect("events") }));

        let config = aura_gateway::Config {
            scheduler_urls: scheduler_urls.clone(),
            events_urls: vec![url(events)],
            redis_url: redis_url.into(),
            insecure_no_auth: !options.auth,
            rate_limit: options.rate_limit,
            internal_tls: client_tls.clone(),
            ..Default::default()
        };
        let token = shutdown.clone();
        tasks.push(tokio::spawn(
            async move { aura_gateway::serve(config, gl, token).await.expect("gateway") },
        ));

        let mut worker = None;
        if options.worker_concurrency > 0 {
            for i in 0..options.workers.max(1) {
                let (wl, addr) = bind().await;
                worker.get_or_insert(addr);
                let config = aura_worker::Config {
                    scheduler_urls: scheduler_urls.clone(),
                    redis_url: redis_url.into(),
                    concurrency: options.worker_concurrency,
                    drain_timeout: Duration::from_secs(5),
                    worker_id: format!("test-worker-{i}"),
                    internal_tls: client_tls.clone(),
                    ..Default::default()
                };
                let token = shutdown.clone();
                tasks.push(tokio::spawn(async move {
                    aura_worker::serve(config, wl, token).await.expect("worker")
                }));
            }
        }
        let scheduler = schedulers[0];
        Mesh {
            gateway,
            scheduler,
            schedulers,
            worker,
            events,
            scheduler_metrics,
            redis_url: redis_url.to_string(),
            internal_tls,
            shutdown,
            tasks,
        }
    }

    /// Starts one more gateway in front of this mesh's services (authentication off unless
    /// `configure` turns it on; the mesh's internal TLS unless it changes it), stopped with
    /// the mesh; returns its address.
    pub async fn add_gateway(&mut self, configure: impl FnOnce(&mut aura_gateway::Config)) -> SocketAddr {
        let (listener, addr) = bind().await;
        let mut config = aura_gateway::Config {
            scheduler_urls: self.schedulers.iter().map(|a| internal_url(&self.internal_tls, *a)).collect(),
            events_urls: vec![internal_url(&self.internal_tls, self.events)],
            redis_url: self.redis_url.clone(),
            insecure_no_auth: true,
            internal_tls: self.internal_tls.as_ref().map(|t| t.client.clone()),
            ..Default::default()
        };
        configure(&mut config);
        let token = self.shutdown.clone();
        self.tasks.push(tokio::spawn(async move {
            aura_gateway::serve(config, listener, token).await.expect("gateway")
        }));
        addr
    }

    /// How many calls of `method` (e.g. `GetRun`) the first scheduler replica answered, any
    /// status.
    pub fn scheduler_calls(&self, method: &str) -> u64 {
        let mut text = String::new();
        let registry = self.scheduler_metrics.lock().unwrap_or_else(|p| p.into_inner());
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("metrics encode");
        let label = format!("method=\"{method}\"");
        text.lines()
            .filter(|l| l.starts_with("aura_grpc_server_calls_total{") && l.contains(&label))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// A connected channel to `addr`.
    pub async fn channel(addr: SocketAddr) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("valid endpoint")
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connect")
    }

    /// A Gateway client.
    pub async fn gateway(&self) -> GatewayClient<Channel> {
        GatewayClient::new(Self::channel(self.gateway).await)
    }

    /// A Scheduler client.
    pub async fn scheduler(&self) -> SchedulerClient<Channel> {
        SchedulerClient::new(Self::channel(self.scheduler).await)
    }

    /// An Events client.
    pub async fn events(&self) -> EventsClient<Channel> {
        EventsClient::new(Self::channel(self.events).await)
    }

    /// A Worker client.
    pub async fn worker(&self) -> WorkerClient<Channel> {
        WorkerClient::new(Self::channel(self.worker.expect("mesh started with a worker")).await)
    }

    /// Health status of `service` ("" for overall) at `addr`: 1 SERVING, 2 NOT_SERVING;
    /// `None` when the call fails.
    pub async fn health(addr: SocketAddr, service: &str) -> Option<i32> {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{addr}")).ok()?.connect().await.ok()?;
        let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
        let resp =
            client.check(tonic_health::pb::HealthCheckRequest { service: service.to_string() }).await.ok()?;
        Some(resp.into_inner().status)
    }

    /// Stops every service and waits for them.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

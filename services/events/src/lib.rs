//! The Events service: `aura.v1.Events` over [`aura_bus`].
//!
//! # Layout
//! - [`serve`] — wiring.
//! - [`EventsService`] — Publish, Subscribe (server streaming), GetHistory.
//! - [`to_status`] — bus errors → gRPC statuses, in one place.
#![forbid(unsafe_code)]

use std::{pin::Pin, time::Duration};

use aura_bus::{
    Bus, BusError, EventRecord, Offset, Pattern, Retention,
    hub::{Hub, Start},
};
use aura_common::{CancellationToken, grpc, status};
use aura_proto::{json, v1 as pb};
use futures::StreamExt;
use tokio::net::TcpListener;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// Events settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Redis URL.
    pub redis_url: String,
    /// Key prefix.
    pub prefix: String,
    /// History kept per topic.
    pub retention: Retention,
    /// Events buffered per subscriber before it is cut off as lagging.
    pub subscriber_buffer: usize,
    /// Queue partitions (as the Scheduler's): run topics live in their run's partition.
    pub partitions: usize,
    /// Where this role's Prometheus series are registered (served by the caller).
    pub metrics: aura_common::metrics::SharedRegistry,
    /// Serve TLS with this certificate.
    pub tls: Option<aura_common::tls::ServerTls>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            redis_url: "redis://127.0.0.1:6379".into(),
            prefix: "aura".into(),
            retention: Retention::default(),
            subscriber_buffer: 1024,
            partitions: 1,
            metrics: aura_common::metrics::registry(),
            tls: None,
        }
    }
}

/// Bus errors → statuses.
pub fn to_status(err: BusError) -> Status {
    match err {
        BusError::Redis(e) if aura_common::redis::is_unavailable(&e) => status::redis_unavailable(&e),
        BusError::Redis(e) => Status::internal(format!("redis command failed: {e}")),
        BusError::Invalid(msg) => Status::invalid_argument(msg),
        err @ BusError::OutOfRange { .. } => Status::out_of_range(err.to_string()),
        err @ BusError::EpochChanged { .. } => Status::failed_precondition(err.to_string()),
        err @ BusError::Lagged { .. } => {
            let mut status = Status::resource_exhausted(err.to_string());
            if let BusError::Lagged { resume_from } = &err
                && let Ok(v) = resume_from.parse()
            {
                status.metadata_mut().insert("aura-resume-offset", v);
            }
            status
        }
        BusError::Protocol(msg) => Status::internal(msg),
    }
}

/// Converts a bus event to protobuf.
pub fn event_to_pb(e: EventRecord) -> pb::Event {
    pb::Event {
        topic: e.topic,
        r#type: e.event_type,
        payload: json::json_to_struct(&e.payload),
        time: Some(prost_types::Timestamp {
            seconds: (e.time_ms / 1000) as i64,
            nanos: ((e.time_ms % 1000) * 1_000_000) as i32,
        }),
        offset: e.offset.to_string(),
    }
}

/// The Events service.
#[derive(Clone)]
pub struct EventsService {
    bus: Bus,
    hub: Hub,
    /// Ends open subscriptions when the process drains.
    shutdown: CancellationToken,
}

impl EventsService {
    /// A service over a bus and its hub.
    pub fn new(bus: Bus, hub: Hub, shutdown: CancellationToken) -> Self {
        EventsService { bus, hub, shutdown }
    }

    /// Opens a subscription (shared by the Events and Gateway `Subscribe` handlers).
    pub async fn open(&self, req: pb::SubscribeRequest) -> Result<EventStream, Status> {
        let patterns = req
            .patterns
            .iter()
            .enumerate()
            .map(|(i, p)| {
                Pattern::parse(p).map_err(|e| status::invalid_field(format!("patterns[{i}]"), e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if patterns.is_empty() {
            return Err(status::invalid_field("patterns", "at least one pattern is required"));
        }
        let start = match (req.from_offset.is_empty(), req.from_beginning) {
            (true, false) => Start::Live,
            (true, true) => Start::Beginning,
            (false, false) => Start::After(
                req.from_offset
                    .parse::<Offset>()
                    .map_err(|e| status::invalid_field("from_offset", e.to_string()))?,
            ),
            (false, true) => {
                return Err(status::invalid_field(
                    "from_beginning",
                    "set either from_offset or from_beginning",
                ));
            }
        };
        let rx = self.hub.subscribe(patterns.clone(), start, 64).map_err(|e| match e {
            BusError::Invalid(msg) => status::invalid_field("patterns", msg),
            other => to_status(other),
        })?;
        // Answer once Redis delivers the patterns' events here: a client that subscribes
        // and then publishes (or starts a run) must not miss what follows.
        self.hub.wait_subscribed(&patterns, aura_bus::hub::SUBSCRIBE_WAIT).await;
        let stream = rx
            .map(|item| item.map(event_to_pb).map_err(to_status))
            .take_until(self.shutdown.clone().cancelled_owned());
        Ok(Box::pin(stream))
    }
}

/// A stream of events as served.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

#[tonic::async_trait]
impl pb::events_server::Events for EventsService {
    async fn publish(
        &self,
        req: Request<pb::PublishRequest>,
    ) -> Result<Response<pb::PublishResponse>, Status> {
        let req = req.into_inner();
        let payload = req.payload.as_ref().map(json::struct_to_json).unwrap_or_else(|| serde_json::json!({}));
        if req.topic.is_empty() {
            return Err(status::invalid_field("topic", "is required"));
        }
        aura_bus::validate_topic(&req.topic).map_err(|e| status::invalid_field("topic", e.to_string()))?;
        if req.topic.starts_with("runs.") {
            return Err(status::invalid_field(
                "topic",
                "topics under runs. are reserved for AURA's run lifecycle events",
            ));
        }
        if req.r#type.is_empty() || req.r#type.len() > 128 {
            return Err(status::invalid_field("type", "must be 1-128 characters"));
        }
        if req.r#type.chars().any(|c| c == '|' || c.is_control()) {
            return Err(status::invalid_field("type", "must not contain '|' or control characters"));
        }
        let offset = self.bus.publish(&req.topic, &req.r#type, &payload).await.map_err(to_status)?;
        Ok(Response::new(pb::PublishResponse { offset: offset.to_string() }))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(&self, req: Request<pb::SubscribeRequest>) -> Result<Response<EventStream>, Status> {
        Ok(Response::new(self.open(req.into_inner()).await?))
    }

    async fn get_history(
        &self,
        req: Request<pb::GetHistoryRequest>,
    ) -> Result<Response<pb::GetHistoryResponse>, Status> {
        let req = req.into_inner();
        aura_bus::validate_topic(&req.topic).map_err(|e| status::invalid_field("topic", e.to_string()))?;
        let limit = match req.limit {
            0 => 100,
            1..=1000 => req.limit as usize,
            _ => return Err(status::invalid_field("limit", "must be 1-1000")),
        };
        let after = if req.from_offset.is_empty() {
            None
        } else {
            Some(
                req.from_offset
                    .parse::<Offset>()
                    .map_err(|e| status::invalid_field("from_offset", e.to_string()))?,
            )
        };
        let (events, more) = self.bus.history(&req.topic, after.as_ref(), limit).await.map_err(to_status)?;
        let next_offset = if more {
            events.last().map(|e| e.offset.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::GetHistoryResponse {
            events: events.into_iter().map(event_to_pb).collect(),
            next_offset,
        }))
    }
}

/// Builds the service for `config`.
pub async fn service(
    config: &Config,
    shutdown: CancellationToken,
) -> anyhow::Result<(EventsService, aura_common::redis::RedisConn)> {
    let conn = aura_common::redis::connect(&config.redis_url).await?;
    let keys = aura_queue::Keyspace::new(&config.prefix, config.partitions);
    let bus = Bus::new(conn.clone(), &config.prefix, config.retention.clone())
        .with_router(aura_engine::ids::run_topic_router(keys));
    let hub = Hub::start(bus.clone(), &config.redis_url, config.subscriber_buffer, shutdown.clone())?;
    Ok((EventsService::new(bus, hub, shutdown), conn))
}

/// Serves Events on `listener` until `shutdown`.
pub async fn serve(config: Config, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let (service, conn) = service(&config, shutdown.clone()).await?;
    let (reporter, health) = grpc::health::<pb::events_server::EventsServer<EventsService>>().await;
    let health_task = grpc::follow_redis::<pb::events_server::EventsServer<EventsService>>(
        reporter,
        conn,
        Duration::from_secs(1),
        shutdown.clone(),
    );
    let gauges = tokio::spawn(hub_gauges(service.hub.clone(), &config.metrics, shutdown.clone()));
    tracing::info!(addr = %listener.local_addr()?, tls = config.tls.is_some(), "events listening");
    tonic::transport::Server::builder()
        // A span per call, joining the caller's trace.
        .layer(aura_common::telemetry::TraceLayer)
        .layer(aura_common::metrics::GrpcMetricsLayer::new(&config.metrics))
        .add_service(health)
        .add_service(grpc::reflection_v1())
        .add_service(grpc::reflection_v1alpha())
        .add_service(pb::events_server::EventsServer::new(service))
        .serve_with_incoming_shutdown(
            aura_common::tls::incoming(listener, config.tls.as_ref()),
            shutdown.cancelled_owned(),
        )
        .await?;
    let _ = health_task.await;
    let _ = gauges.await;
    tracing::info!("events stopped");
    Ok(())
}

/// Subscriber and Redis-subscription counts as gauges.
fn hub_gauges(
    hub: Hub,
    registry: &aura_common::metrics::SharedRegistry,
    shutdown: CancellationToken,
) -> impl std::future::Future<Output = ()> + use<> {
    use prometheus_client::metrics::gauge::Gauge;
    let subscribers = Gauge::<i64>::default();
    let patterns = Gauge::<i64>::default();
    {
        let mut r = registry.lock().unwrap_or_else(|p| p.into_inner());
        r.register("events_subscribers", "Local event subscribers", subscribers.clone());
        r.register(
            "events_redis_patterns",
            "Redis pattern subscriptions held (one per distinct pattern)",
            patterns.clone(),
        );
        let m = hub.metrics();
        r.register("events_delivered", "Events handed to local subscribers", m.delivered.clone());
        r.register(
            "events_subscribers_cut_off",
            "Subscribers cut off for falling behind (they resume from their offset)",
            m.cut_off.clone(),
        );
        r.register("events_redis_reconnects", "Redis pub/sub reconnections", m.reconnects.clone());
        r.register(
            "events_delivery_lag_seconds",
            "Time from publish (event time) to arrival at this process",
            m.lag.clone(),
        );
    }
    async move {
        loop {
            subscribers.set(hub.subscriber_count() as i64);
            patterns.set(hub.redis_pattern_count() as i64);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

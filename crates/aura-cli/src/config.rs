//! Command line and configuration.
//!
//! Precedence: flags > environment (`AURA_*`) > config file (`--config`, YAML) > defaults.
//! clap handles the first two (every flag names its variable in `--help`); the file fills
//! what neither set.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;

/// AURA: a workflow-execution platform on a gRPC mesh sharing Redis.
#[derive(Parser, Debug)]
#[command(name = "aura", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub client: ClientOpts,
}

/// Options of the client commands.
#[derive(Args, Debug, Clone)]
pub struct ClientOpts {
    /// Gateway address for client commands.
    #[arg(long, global = true, env = "AURA_GATEWAY_URL", default_value = "http://127.0.0.1:50051")]
    pub gateway: String,
    /// API key sent as `authorization: Bearer <key>`.
    #[arg(long, global = true, env = "AURA_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run one role of the mesh.
    Serve {
        /// Which role.
        role: Role,
        #[command(flatten)]
        opts: Box<ServeOpts>,
    },
    /// Run the whole mesh in one process (starts a private redis-server if none answers).
    Up(UpOpts),
    /// Register and inspect workflows.
    #[command(subcommand)]
    Workflow(WorkflowCmd),
    /// Start, inspect, cancel and watch runs.
    #[command(subcommand)]
    Run(RunCmd),
    /// Queue administration.
    #[command(subcommand)]
    Queue(QueueCmd),
    /// Cron schedules.
    #[command(subcommand)]
    Schedule(ScheduleCmd),
    /// API keys (talks to Redis directly: an operator's tool).
    #[command(subcommand)]
    Keys(KeysCmd),
    /// Event streams.
    #[command(subcommand)]
    Events(EventsCmd),
    /// Run metrics as a table.
    Metrics {
        /// Only this workflow.
        workflow: Option<String>,
        /// Window: 1m, 1h or 24h (default: one row for each).
        #[arg(long)]
        window: Option<String>,
    },
}

/// The four roles.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The public API.
    Gateway,
    /// Workflows, runs and the queue.
    Scheduler,
    /// Executes built-in steps.
    Worker,
    /// The event bus.
    Events,
}

impl Role {
    /// Lower-case name, as on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Scheduler => "scheduler",
            Role::Worker => "worker",
            Role::Events => "events",
        }
    }

    /// Default gRPC port.
    pub fn default_port(self) -> u16 {
        match self {
            Role::Gateway => 50051,
            Role::Scheduler => 50052,
            Role::Worker => 50053,
            Role::Events => 50054,
        }
    }

    /// Default metrics port.
    pub fn default_metrics_port(self) -> u16 {
        match self {
            Role::Gateway => 9101,
            Role::Scheduler => 9102,
            Role::Worker => 9103,
            Role::Events => 9104,
        }
    }
}

/// Options of `aura serve`.
#[derive(Args, Debug, Clone, Default)]
pub struct ServeOpts {
    /// YAML config file (keys as the long flags, with underscores).
    #[arg(long, env = "AURA_CONFIG")]
    pub config: Option<PathBuf>,
    /// gRPC listen address [default: 0.0.0.0:<role port>].
    #[arg(long, env = "AURA_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Prometheus /metrics listen address [default: 0.0.0.0:<role metrics port>].
    #[arg(long, env = "AURA_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Redis URL; a comma-separated list of node URLs means Redis Cluster
    /// [default: redis://127.0.0.1:6379].
    #[arg(long, env = "AURA_REDIS_URL")]
    pub redis_url: Option<String>,
    /// Scheduler endpoints, comma-separated [default: http://127.0.0.1:50052].
    #[arg(long, env = "AURA_SCHEDULER_URL")]
    pub scheduler_url: Option<String>,
    /// Events endpoints, comma-separated [default: http://127.0.0.1:50054].
    #[arg(long, env = "AURA_EVENTS_URL")]
    pub events_url: Option<String>,
    /// Queue partitions; keep it fixed once runs exist [default: 1].
    #[arg(long, env = "AURA_PARTITIONS")]
    pub partitions: Option<usize>,
    /// Scheduler: most steps of one concurrency key running at once [default: 0, no cap].
    #[arg(long, env = "AURA_KEY_CONCURRENCY_CAP")]
    pub key_concurrency_cap: Option<u32>,
    /// Worker: most tasks in flight [default: 64].
    #[arg(long, env = "AURA_WORKER_CONCURRENCY")]
    pub concurrency: Option<usize>,
    /// Worker: most tasks in flight per step kind, e.g. `http=32,llm=4` [default: none].
    #[arg(long, env = "AURA_WORKER_KIND_CONCURRENCY")]
    pub kind_concurrency: Option<String>,
    /// Worker: queues to poll, comma-separated [default: builtin].
    #[arg(long, env = "AURA_WORKER_QUEUES")]
    pub queues: Option<String>,
    /// Seconds in-flight work may take to finish on shutdown [default: 30].
    #[arg(long, env = "AURA_DRAIN_TIMEOUT_SECS")]
    pub drain_timeout_secs: Option<u64>,
    /// Gateway: accept calls without an API key (logs a warning at start).
    #[arg(long, env = "AURA_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// Gateway: default rate limit per tenant, calls per second; 0 turns limiting off
    /// [default: 1000].
    #[arg(long, env = "AURA_RATE_LIMIT_RPS")]
    pub rate_limit_rps: Option<u32>,
    /// Gateway: burst (bucket capacity) of the default limit [default: 2000].
    #[arg(long, env = "AURA_RATE_LIMIT_BURST")]
    pub rate_limit_burst: Option<u32>,
    /// Gateway: the limit of one method group (`default`, `tasks`) as `<group>=<rps>/<burst>`,
    /// e.g. `tasks=5000/10000`; repeatable (the variable takes a comma-separated list). A
    /// tenant's override in Redis still wins [default: every group at the default limit].
    #[arg(long = "rate-limit-group", env = "AURA_RATE_LIMIT_GROUPS", value_delimiter = ',')]
    pub rate_limit_groups: Vec<String>,
    /// Gateway: tokens one call of a method takes, `<Method>=<cost>` (1-1000), e.g.
    /// `StartRuns=10`; repeatable (the variable takes a comma-separated list); replaces the
    /// defaults [default: StartRuns=10, every other method 1].
    #[arg(long = "rate-limit-cost", env = "AURA_RATE_LIMIT_COSTS", value_delimiter = ',')]
    pub rate_limit_costs: Vec<String>,
    /// Gateway: refuse calls (UNAVAILABLE) while Redis is unreachable, instead of applying the
    /// limit per process.
    #[arg(long, env = "AURA_RATE_LIMIT_FAIL_CLOSED")]
    pub rate_limit_fail_closed: bool,
    /// Gateway: also serve Envoy's `envoy.service.ratelimit.v3.RateLimitService` on the same
    /// limiter. It takes no API key: only turn it on where untrusted clients cannot reach the
    /// gateway's port except through the proxy.
    #[arg(long, env = "AURA_ENVOY_RLS")]
    pub envoy_rls: bool,
    /// Gateway: largest request message accepted, bytes; larger ones get RESOURCE_EXHAUSTED
    /// [default: 4194304].
    #[arg(long, env = "AURA_MAX_MESSAGE_BYTES")]
    pub max_message_bytes: Option<usize>,
    /// Gateway: most calls in flight at once; more are answered UNAVAILABLE at once (load
    /// shedding) [default: 10000].
    #[arg(long, env = "AURA_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<usize>,
    /// Serve TLS with this PEM certificate chain (needs --tls-key); SIGHUP reloads both files.
    #[arg(long, env = "AURA_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "AURA_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Gateway, worker: PEM CA that `https://` Scheduler and Events endpoints must chain to.
    #[arg(long, env = "AURA_INTERNAL_TLS_CA")]
    pub internal_tls_ca: Option<PathBuf>,
    /// Gateway, worker: the name internal services' certificates must carry, instead of the
    /// endpoint's host (needs --internal-tls-ca).
    #[arg(long, env = "AURA_INTERNAL_TLS_DOMAIN")]
    pub internal_tls_domain: Option<String>,
    /// Gateway: a file of `tenant:key` lines accepted besides the keys in Redis.
    #[arg(long, env = "AURA_API_KEYS_FILE")]
    pub api_keys_file: Option<PathBuf>,
    /// Worker: default API key for `llm` steps.
    #[arg(long, env = "AURA_LLM_API_KEY", hide_env_values = true)]
    pub llm_api_key: Option<String>,
}

/// The config file: the same keys as `ServeOpts`.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    metrics_listen: Option<SocketAddr>,
    redis_url: Option<String>,
    scheduler_url: Option<String>,
    events_url: Option<String>,
    partitions: Option<usize>,
    key_concurrency_cap: Option<u32>,
    concurrency: Option<usize>,
    kind_concurrency: Option<String>,
    queues: Option<String>,
    drain_timeout_secs: Option<u64>,
    llm_api_key: Option<String>,
    insecure_no_auth: Option<bool>,
    api_keys_file: Option<PathBuf>,
    rate_limit_rps: Option<u32>,
    rate_limit_burst: Option<u32>,
    rate_limit_groups: Option<GroupLimits>,
    rate_limit_costs: Option<GroupLimits>,
    rate_limit_fail_closed: Option<bool>,
    envoy_rls: Option<bool>,
    max_message_bytes: Option<usize>,
    max_in_flight: Option<usize>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    internal_tls_ca: Option<PathBuf>,
    internal_tls_domain: Option<String>,
}

/// `rate_limit_groups` / `rate_limit_costs` in the file: a list (`[tasks=5000/10000]`) or
/// the variable's comma-separated form.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum GroupLimits {
    List(Vec<String>),
    Text(String),
}

impl GroupLimits {
    fn items(self) -> Vec<String> {
        match self {
            GroupLimits::List(items) => items,
            GroupLimits::Text(text) => list(&text),
        }
    }
}

/// Resolved settings of a role.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: Option<SocketAddr>,
    pub metrics_listen: Option<SocketAddr>,
    pub redis_url: String,
    pub scheduler_urls: Vec<String>,
    pub events_urls: Vec<String>,
    pub partitions: usize,
    pub key_concurrency_cap: u32,
    pub concurrency: usize,
    pub kind_concurrency: std::collections::BTreeMap<String, usize>,
    pub queues: Vec<String>,
    pub drain_timeout: Duration,
    pub llm_api_key: Option<String>,
    pub insecure_no_auth: bool,
    pub api_keys_file: Option<PathBuf>,
    pub rate_limit: Option<aura_ratelimit::Limit>,
    pub rate_limit_groups: std::collections::BTreeMap<String, aura_ratelimit::Limit>,
    pub method_costs: std::collections::BTreeMap<String, u32>,
    pub rate_limit_fail_closed: bool,
    pub envoy_rls: bool,
    pub max_message_bytes: usize,
    pub max_in_flight: usize,
    /// Certificate and key files this role serves TLS with.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// CA file for `https://` internal endpoints.
    pub internal_tls_ca: Option<PathBuf>,
    /// Server name checked instead of the endpoint's host.
    pub internal_tls_domain: Option<String>,
}

fn list(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

impl Settings {
    /// Flags/env first, then the file, then defaults.
    pub fn resolve(opts: &ServeOpts) -> anyhow::Result<Self> {
        let file = match &opts.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("cannot read config file {}: {e}", path.display()))?;
                serde_norway::from_str::<FileConfig>(&text)
                    .map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let partitions = opts.partitions.or(file.partitions).unwrap_or(1);
        anyhow::ensure!((1..=1024).contains(&partitions), "AURA_PARTITIONS / --partitions must be 1-1024");
        // Flags and the variable (clap) replace the file's list as a whole.
        let group_items = if opts.rate_limit_groups.is_empty() {
            file.rate_limit_groups.map(GroupLimits::items)
        } else {
            None
        }
        .unwrap_or_else(|| opts.rate_limit_groups.clone());
        let rate_limit_groups = aura_ratelimit::parse_group_limits(&group_items, aura_gateway::METHOD_GROUPS)
            .map_err(|e| anyhow::anyhow!("AURA_RATE_LIMIT_GROUPS / --rate-limit-group: {e}"))?;
        let cost_items = if opts.rate_limit_costs.is_empty() {
            file.rate_limit_costs.map(GroupLimits::items)
        } else {
            Some(opts.rate_limit_costs.clone())
        };
        let method_costs = match cost_items {
            None => aura_gateway::default_method_costs(),
            Some(items) => {
                let methods = aura_gateway::gateway_methods();
                let methods: Vec<&str> = methods.iter().map(String::as_str).collect();
                aura_ratelimit::parse_method_costs(&items, &methods)
                    .map_err(|e| anyhow::anyhow!("AURA_RATE_LIMIT_COSTS / --rate-limit-cost: {e}"))?
            }
        };
        let max_message_bytes = opts.max_message_bytes.or(file.max_message_bytes).unwrap_or(4 * 1024 * 1024);
        anyhow::ensure!(
            (1024..=1024 * 1024 * 1024).contains(&max_message_bytes),
            "AURA_MAX_MESSAGE_BYTES / --max-message-bytes must be 1 KiB-1 GiB"
        );
        let max_in_flight = opts.max_in_flight.or(file.max_in_flight).unwrap_or(10_000);
        anyhow::ensure!(
            (1..=1_000_000).contains(&max_in_flight),
            "AURA_MAX_IN_FLIGHT / --max-in-flight must be 1-1000000"
        );
        anyhow::ensure!(
            opts.internal_tls_domain.is_none() && file.internal_tls_domain.is_none()
                || opts.internal_tls_ca.is_some()
                || file.internal_tls_ca.is_some(),
            "AURA_INTERNAL_TLS_DOMAIN / --internal-tls-domain needs AURA_INTERNAL_TLS_CA / --internal-tls-ca"
        );
        let concurrency = opts.concurrency.or(file.concurrency).unwrap_or(64);
        anyhow::ensure!(
            (1..=100_000).contains(&concurrency),
            "AURA_WORKER_CONCURRENCY / --concurrency must be 1-100000"
        );
        Ok(Settings {
            listen: opts.listen.or(file.listen),
            metrics_listen: opts.metrics_listen.or(file.metrics_listen),
            redis_url: opts
                .redis_url
                .clone()
                .or(file.redis_url)
                .unwrap_or_else(|| "redis://127.0.0.1:6379".into()),
            scheduler_urls: list(
                &opts
                    .scheduler_url
                    .clone()
                    .or(file.scheduler_url)
                    .unwrap_or_else(|| "http://127.0.0.1:50052".into()),
            ),
            events_urls: list(
                &opts
                    .events_url
                    .clone()
                    .or(file.events_url)
                    .unwrap_or_else(|| "http://127.0.0.1:50054".into()),
            ),
            partitions,
            key_concurrency_cap: opts.key_concurrency_cap.or(file.key_concurrency_cap).unwrap_or(0),
            concurrency,
            kind_concurrency: aura_worker::parse_kind_concurrency(
                opts.kind_concurrency.as_deref().or(file.kind_concurrency.as_deref()).unwrap_or(""),
            )
            .map_err(|e| anyhow::anyhow!("AURA_WORKER_KIND_CONCURRENCY / --kind-concurrency: {e}"))?,
            queues: list(&opts.queues.clone().or(file.queues).unwrap_or_else(|| "builtin".into())),
            drain_timeout: Duration::from_secs(
                opts.drain_timeout_secs.or(file.drain_timeout_secs).unwrap_or(30),
            ),
            llm_api_key: opts.llm_api_key.clone().or(file.llm_api_key),
            insecure_no_auth: opts.insecure_no_auth || file.insecure_no_auth.unwrap_or(false),
            api_keys_file: opts.api_keys_file.clone().or(file.api_keys_file),
            rate_limit: {
                let rps = opts.rate_limit_rps.or(file.rate_limit_rps).unwrap_or(1000);
                let burst = opts.rate_limit_burst.or(file.rate_limit_burst).unwrap_or(2000);
                anyhow::ensure!(
                    rps == 0 || burst > 0,
                    "AURA_RATE_LIMIT_BURST / --rate-limit-burst must be at least 1"
                );
                (rps > 0).then_some(aura_ratelimit::Limit { rps, burst })
            },
            rate_limit_groups,
            method_costs,
            rate_limit_fail_closed: opts.rate_limit_fail_closed
                || file.rate_limit_fail_closed.unwrap_or(false),
            envoy_rls: opts.envoy_rls || file.envoy_rls.unwrap_or(false),
            max_message_bytes,
            max_in_flight,
            tls: match (opts.tls_cert.clone().or(file.tls_cert), opts.tls_key.clone().or(file.tls_key)) {
                (Some(cert), Some(key)) => Some((cert, key)),
                (None, None) => None,
                _ => anyhow::bail!("AURA_TLS_CERT and AURA_TLS_KEY must be set together"),
            },
            internal_tls_ca: opts.internal_tls_ca.clone().or(file.internal_tls_ca),
            internal_tls_domain: opts.internal_tls_domain.clone().or(file.internal_tls_domain),
        })
    }

    /// The certificate this role serves TLS with, if any.
    pub fn server_tls(&self) -> anyhow::Result<Option<aura_common::tls::ServerTls>> {
        let Some((cert, key)) = &self.tls else { return Ok(None) };
        Ok(Some(aura_common::tls::ServerTls::from_files(cert, key)?))
    }

    /// What `https://` internal endpoints are checked against, if configured.
    pub fn client_tls(&self) -> anyhow::Result<Option<aura_common::tls::ClientTls>> {
        let Some(ca) = &self.internal_tls_ca else { return Ok(None) };
        Ok(Some(aura_common::tls::ClientTls::from_file(ca, self.internal_tls_domain.clone())?))
    }
}

/// Options of `aura up`.
#[derive(Args, Debug, Clone)]
pub struct UpOpts {
    /// Redis URL; when nothing answers there and `redis-server` is installed, a private one
    /// is started in a temp dir and stopped on exit.
    #[arg(long, env = "AURA_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Address the four services bind to.
    #[arg(long, env = "AURA_BIND", default_value = "127.0.0.1")]
    pub bind: std::net::IpAddr,
    /// Gateway gRPC port.
    #[arg(long, default_value_t = 50051)]
    pub gateway_port: u16,
    /// Scheduler gRPC port.
    #[arg(long, default_value_t = 50052)]
    pub scheduler_port: u16,
    /// Worker gRPC port.
    #[arg(long, default_value_t = 50053)]
    pub worker_port: u16,
    /// Events gRPC port.
    #[arg(long, default_value_t = 50054)]
    pub events_port: u16,
    /// First of the four metrics ports (gateway, scheduler, worker, events).
    #[arg(long, default_value_t = 9101)]
    pub metrics_port: u16,
    /// Queue partitions.
    #[arg(long, env = "AURA_PARTITIONS", default_value_t = 1)]
    pub partitions: usize,
    /// Worker concurrency.
    #[arg(long, env = "AURA_WORKER_CONCURRENCY", default_value_t = 64)]
    pub concurrency: usize,
    /// The development API key `aura up` registers for tenant `dev` (default: a new random
    /// key, printed at start).
    #[arg(long, env = "AURA_DEV_API_KEY", hide_env_values = true)]
    pub dev_api_key: Option<String>,
    /// Accept calls without an API key (logs a warning).
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// After start, register a demo workflow, run it and print the result.
    #[arg(long)]
    pub demo: bool,
    /// Stop after the demo instead of serving.
    #[arg(long, requires = "demo")]
    pub exit_after_demo: bool,
}

#[derive(Subcommand, Debug)]
pub enum WorkflowCmd {
    /// Register (or update) a workflow from a YAML or JSON file.
    Apply {
        /// The file.
        #[arg(short, long)]
        file: PathBuf,
    },
    /// List workflows.
    List,
    /// Show a workflow as YAML.
    Get {
        /// Name.
        name: String,
        /// Version (0: latest).
        #[arg(long, default_value_t = 0)]
        version: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum RunCmd {
    /// Start a run.
    Start {
        /// Workflow name.
        workflow: String,
        /// Input as a JSON object.
        #[arg(long, default_value = "{}")]
        input: String,
        /// Idempotency key.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Priority 0-1000.
        #[arg(long, default_value_t = 0)]
        priority: i32,
        /// Wait for the run to finish, showing progress.
        #[arg(long)]
        wait: bool,
    },
    /// Show a run.
    Get {
        /// Run id.
        run_id: String,
    },
    /// List runs, newest first.
    List {
        /// Only this workflow.
        #[arg(long)]
        workflow: Option<String>,
        /// Most runs shown.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Cancel a run.
    Cancel {
        /// Run id.
        run_id: String,
        /// Reason recorded on the run.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Follow a run's steps until it ends.
    Watch {
        /// Run id.
        run_id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum QueueCmd {
    /// Queue counters.
    Stats {
        /// Queue name.
        #[arg(default_value = "builtin")]
        queue: String,
    },
    /// Pause claims.
    Pause {
        /// Queue name.
        queue: String,
    },
    /// Resume claims.
    Resume {
        /// Queue name.
        queue: String,
    },
    /// List dead letters.
    DeadLetters {
        /// Queue name.
        #[arg(default_value = "builtin")]
        queue: String,
    },
    /// Retry a dead letter (or all).
    Retry {
        /// Queue name.
        queue: String,
        /// Task id; omit with --all.
        task_id: Option<String>,
        /// Retry every dead letter of the queue.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum EventsCmd {
    /// Print events of matching topics as they arrive.
    Tail {
        /// Topic pattern (`*` one segment, `>` the rest).
        pattern: String,
        /// Resume after this offset (single concrete topic).
        #[arg(long)]
        from: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ScheduleCmd {
    /// Start a run of WORKFLOW at every tick of a cron expression (UTC).
    Create {
        /// Workflow name.
        workflow: String,
        /// Cron: 5 fields, or 6 with leading seconds.
        #[arg(long)]
        cron: String,
        /// Input of every run, a JSON object.
        #[arg(long, default_value = "{}")]
        input: String,
    },
    /// List schedules.
    List,
    /// Delete a schedule.
    Delete {
        /// Schedule id.
        schedule_id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// Create a key for a tenant; the key is printed once and stored only as a hash.
    Create {
        /// Tenant the key acts for.
        #[arg(long)]
        tenant: String,
        /// A label.
        #[arg(long, default_value = "")]
        name: String,
        #[command(flatten)]
        redis: RedisOpt,
    },
    /// List keys (ids, tenants, names; never the keys).
    List {
        #[command(flatten)]
        redis: RedisOpt,
    },
    /// Revoke a key by id; gateways refuse it within a second.
    Revoke {
        /// Key id (from `aura keys list`).
        id: String,
        #[command(flatten)]
        redis: RedisOpt,
    },
}

/// Where the keys live.
#[derive(Args, Debug, Clone)]
pub struct RedisOpt {
    /// Redis URL.
    #[arg(long, env = "AURA_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(args: &[&str], yaml: Option<&str>) -> anyhow::Result<Settings> {
        let file = yaml.map(|text| {
            let file = tempfile::NamedTempFile::new().unwrap();
            std::fs::write(file.path(), text).unwrap();
            file
        });
        let mut argv = vec!["aura", "serve", "gateway"];
        argv.extend_from_slice(args);
        let path;
        if let Some(f) = &file {
            path = f.path().display().to_string();
            argv.extend_from_slice(&["--config", &path]);
        }
        let Command::Serve { opts, .. } = Cli::try_parse_from(argv)?.command else { unreachable!() };
        Settings::resolve(&opts)
    }

    #[test]
    fn group_limits_come_from_flags_before_the_file() {
        let limit = |rps, burst| aura_ratelimit::Limit { rps, burst };
        let s = resolve(&["--rate-limit-group", "tasks=5/10", "--rate-limit-group", "default=1/2"], None)
            .unwrap();
        assert_eq!(s.rate_limit_groups["tasks"], limit(5, 10));
        assert_eq!(s.rate_limit_groups["default"], limit(1, 2));
        let yaml = "rate_limit_groups: [tasks=7/8]\nenvoy_rls: true\nmax_message_bytes: 65536\n";
        let s = resolve(&[], Some(yaml)).unwrap();
        assert_eq!(s.rate_limit_groups["tasks"], limit(7, 8));
        assert!(s.envoy_rls);
        assert_eq!(s.max_message_bytes, 65536);
        let s = resolve(
            &["--rate-limit-group", "tasks=5/10"],
            Some("rate_limit_groups: tasks=7/8,default=3/4\n"),
        )
        .unwrap();
        assert_eq!(s.rate_limit_groups.len(), 1, "the flag replaces the file's list");
        assert_eq!(s.rate_limit_groups["tasks"], limit(5, 10));
        let err = resolve(&["--rate-limit-group", "taks=5/10"], None).unwrap_err().to_string();
        assert!(err.contains("--rate-limit-group") && err.contains("unknown method group"), "{err}");
    }

    #[test]
    fn internal_tls_comes_from_flags_before_the_file() {
        let s =
            resolve(&["--internal-tls-ca", "/flag/ca.pem"], Some("internal_tls_ca: /file/ca.pem\n")).unwrap();
        assert_eq!(s.internal_tls_ca, Some(PathBuf::from("/flag/ca.pem")));
        assert_eq!(s.internal_tls_domain, None);
        let yaml = "internal_tls_ca: /file/ca.pem\ninternal_tls_domain: scheduler.aura\n";
        let s = resolve(&[], Some(yaml)).unwrap();
        assert_eq!(s.internal_tls_ca, Some(PathBuf::from("/file/ca.pem")));
        assert_eq!(s.internal_tls_domain.as_deref(), Some("scheduler.aura"));
        let err = resolve(&["--internal-tls-domain", "scheduler.aura"], None).unwrap_err().to_string();
        assert!(err.contains("--internal-tls-ca"), "{err}");
    }
}

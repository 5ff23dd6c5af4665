//! The test harness: private `redis-server` processes (never the shared one on 6379) that
//! tests can kill and restart, a real 3-node Redis Cluster, and `wait_until` instead of
//! sleeps.
//!
//! # Layout
//! - [`RedisServer`] — one node on a free port in a temp dir; `kill`, `restart`.
//! - [`RedisCluster`] — three masters joined with `redis-cli --cluster create`.
//! - [`wait_until`] — polls a predicate until it holds or a timeout passes.
//! - [`mesh::Mesh`] (feature `mesh`): the four services in-process on bound ephemeral
//!   listeners, with typed clients.
#![forbid(unsafe_code)]

#[cfg(feature = "mesh")]
pub mod mesh;

use std::{
    future::Future,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// Polls `check` every 20 ms until it returns true; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if check().await {
            return;
        }
        assert!(start.elapsed() < timeout, "timed out after {timeout:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; fine for child processes like Redis
/// that must bind themselves).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Durability of a test Redis.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Persistence {
    /// Nothing on disk: a restart loses everything.
    None,
    /// AOF with `appendfsync always`: an acknowledged write survives a crash.
    AofAlways,
}

/// A private `redis-server` on a free port, stopped when dropped.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    persistence: Persistence,
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a node with no persistence.
    pub fn start() -> Self {
        Self::start_with(Persistence::None, &[])
    }

    /// Starts a node with the given persistence and extra `redis-server` arguments.
    pub fn start_with(persistence: Persistence, extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = RedisServer {
            port: free_port(),
            dir,
            child: None,
            persistence,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let mut args: Vec<String> = vec![
            "--port".into(),
            self.port.to_string(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--dir".into(),
            self.dir.path().display().to_string(),
            "--save".into(),
            "".into(),
            "--daemonize".into(),
            "no".into(),
            "--logfile".into(),
            "redis.log".into(),
        ];
        match self.persistence {
            Persistence::None => args.extend(["--appendonly".into(), "no".into()]),
            Persistence::AofAlways => {
                args.extend(["--appendonly".into(), "yes".into(), "--appendfsync".into(), "always".into()])
            }
        }
        args.extend(self.extra.iter().cloned());
        let child = Command::new(redis_server_binary())
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        self.child = Some(child);
        wait_for_port(self.port);
    }

    /// Port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its working directory (AOF files, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Kills it with SIGKILL (a crash, not a shutdown).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// A synchronous client connection, for test setup and assertions.
    pub fn client(&self) -> redis::Connection {
        redis::Client::open(self.url()).and_then(|c| c.get_connection()).expect("connect to test redis")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn redis_server_binary() -> PathBuf {
    std::env::var_os("AURA_TEST_REDIS_SERVER").map(PathBuf::from).unwrap_or_else(|| "redis-server".into())
}

fn wait_for_port(port: u16) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "redis-server did not start on port {port}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A real 3-master Redis Cluster on free ports.
pub struct RedisCluster {
    /// The nodes.
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three nodes and joins them (equal contiguous slot ranges).
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..3)
            .map(|_| {
                RedisServer::start_with(
                    Persistence::None,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--cluster-node-timeout",
                        "2000",
                    ],
                )
            })
            .collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect();
        let status = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("redis-cli must be installed");
        assert!(status.success(), "redis-cli --cluster create failed");
        let cluster = RedisCluster { nodes };
        let start = Instant::now();
        while !cluster.is_ok() {
            assert!(start.elapsed() < Duration::from_secs(20), "cluster did not become ok");
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    fn is_ok(&self) -> bool {
        self.nodes.iter().all(|n| {
            redis::cmd("CLUSTER")
                .arg("INFO")
                .query::<String>(&mut n.client())
                .map(|info| info.contains("cluster_state:ok"))
                .unwrap_or(false)
        })
    }

    /// The comma-separated node list AURA takes as a cluster URL.
    pub fn url(&self) -> String {
        self.nodes.iter().map(RedisServer::url).collect::<Vec<_>>().join(",")
    }
}

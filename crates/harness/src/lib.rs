//! # jetrun-harness
//!
//! Real nats-server processes for tests and for `jetrun dev`'s managed server:
//!
//! - [`NatsServer::start`] spawns one server with JetStream on a free loopback port and a
//!   temporary store; [`NatsServer::stop`] and [`NatsServer::restart`] let a test take
//!   JetStream away and bring it back on the same port and store;
//! - [`Cluster::start`] spawns three clustered servers (R3 streams work);
//! - [`ShippedNats::start`] runs the shipped least-privilege configuration
//!   (`infra/nats/jetrun.conf` and `accounts.conf`) with every user's password filled in,
//!   and connects as any of its users;
//! - [`github_standin`] is a local GitHub REST API that records what it is sent;
//! - [`ServerProcess`] is the underlying child process, also used by `jetrun dev` with a
//!   persistent data directory.
//!
//! Every process is killed, and its temp store removed, on drop. The binary is
//! `$JETRUN_NATS_SERVER`, or `nats-server` on `PATH` (2.11 or newer).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod github;
mod shipped;

pub use github::{GithubSeen, github_standin};
pub use shipped::{ShippedNats, ShippedUser, shipped_config_dir, shipped_users};

/// Errors starting a server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// The binary could not be run.
    #[error("cannot run {binary}: {source} (install nats-server 2.11+ or set JETRUN_NATS_SERVER)")]
    Spawn {
        /// What was run.
        binary: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// It did not accept connections in time.
    #[error("nats-server on {addr} not ready after {waited:?}; log: {log}")]
    NotReady {
        /// Its address.
        addr: SocketAddr,
        /// How long we waited.
        waited: Duration,
        /// The tail of its log.
        log: String,
    },
    /// Filesystem trouble.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A shipped configuration file could not be read.
    #[error("reading {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A shipped configuration file is not what the harness can run.
    #[error("{}: {message}", path.display())]
    Config {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The nats-server binary to run.
pub fn server_binary() -> String {
    std::env::var("JETRUN_NATS_SERVER").unwrap_or_else(|_| "nats-server".to_string())
}

/// A free TCP port on 127.0.0.1 (bound, then released: good enough for tests).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// How to run one server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Client listen address.
    pub addr: SocketAddr,
    /// JetStream store directory.
    pub store_dir: PathBuf,
    /// Server name (required in clusters).
    pub name: String,
    /// Cluster: (cluster name, own cluster port, every node's cluster port).
    pub cluster: Option<(String, u16, Vec<u16>)>,
    /// Where the server's log goes.
    pub log_file: PathBuf,
    /// Extra command-line arguments.
    pub extra_args: Vec<String>,
}

/// A running nats-server child process, killed on drop.
#[derive(Debug)]
pub struct ServerProcess {
    child: Option<Child>,
    opts: ServerOptions,
}

impl ServerProcess {
    /// The server's name (`server_name`), as JetStream reports it in cluster info.
    pub fn name(&self) -> &str {
        &self.opts.name
    }

    /// Spawns the server and waits until it accepts TCP connections.
    pub fn spawn(opts: ServerOptions) -> Result<Self, HarnessError> {
        std::fs::create_dir_all(&opts.store_dir)?;
        let binary = server_binary();
        let mut cmd = Command::new(&binary);
        cmd.arg("-js")
            .arg("-a")
            .arg(opts.addr.ip().to_string())
            .arg("-p")
            .arg(opts.addr.port().to_string())
            .arg("-sd")
            .arg(&opts.store_dir)
            .arg("-n")
            .arg(&opts.name)
            .arg("-l")
            .arg(&opts.log_file);
        if let Some((cname, port, routes)) = &opts.cluster {
            let routes: Vec<String> = routes
                .iter()
                .filter(|p| *p != port)
                .map(|p| format!("nats://127.0.0.1:{p}"))
                .collect();
            cmd.arg("--cluster_name")
                .arg(cname)
                .arg("--cluster")
                .arg(format!("nats://127.0.0.1:{port}"))
                .arg("--routes")
                .arg(routes.join(","));
        }
        cmd.args(&opts.extra_args);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .map_err(|source| HarnessError::Spawn { binary, source })?;
        let mut p = Self {
            child: Some(child),
            opts,
        };
        p.wait_ready(Duration::from_secs(20))?;
        Ok(p)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), HarnessError> {
        let start = Instant::now();
        loop {
            if TcpStream::connect_timeout(&self.opts.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
                .is_some();
            if exited || start.elapsed() > timeout {
                return Err(HarnessError::NotReady {
                    addr: self.opts.addr,
                    waited: start.elapsed(),
                    log: self.log_tail(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of the server's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.opts.log_file).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(10)..].join("\n")
    }

    /// `nats://host:port`
    pub fn url(&self) -> String {
        format!("nats://{}", self.opts.addr)
    }

    /// The options it runs with.
    pub fn options(&self) -> &ServerOptions {
        &self.opts
    }

    /// The child's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Asks the server to stop (SIGTERM via `kill`), waiting up to `grace` before SIGKILL.
    pub fn shutdown(&mut self, grace: Duration) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let start = Instant::now();
            while start.elapsed() < grace {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server at once (SIGKILL): a crash, as far as clients can tell.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again with the same options (same port and store).
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.kill();
        let fresh = Self::spawn(self.opts.clone())?;
        *self = fresh;
        Ok(())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One nats-server with JetStream for one test, on a free port with a temp store.
#[derive(Debug)]
pub struct NatsServer {
    process: ServerProcess,
    // Dropped after the process (field order), so the store outlives the server.
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a fresh server.
    pub fn start() -> Result<Self, HarnessError> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let process = ServerProcess::spawn(ServerOptions {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            store_dir: dir.path().join("jetstream"),
            name: format!("test-{port}"),
            cluster: None,
            log_file: dir.path().join("nats.log"),
            extra_args: vec![],
        })?;
        Ok(Self { process, _dir: dir })
    }

    /// `nats://127.0.0.1:<port>`
    pub fn url(&self) -> String {
        self.process.url()
    }

    /// A connected client.
    pub async fn client(&self) -> async_nats::Client {
        connect(&self.url()).await
    }

    /// Stops the server (the port stays reserved for [`NatsServer::restart`]).
    pub fn stop(&mut self) {
        self.process.kill();
    }

    /// Starts it again on the same port with the same store.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.process.restart()
    }

    /// The store directory.
    pub fn store_dir(&self) -> &Path {
        &self.process.opts.store_dir
    }
}

/// Three clustered nats-servers with JetStream, for R3 streams.
#[derive(Debug)]
pub struct Cluster {
    /// The nodes.
    pub nodes: Vec<ServerProcess>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts a 3-node cluster and waits until JetStream has a meta leader.
    pub async fn start() -> Result<Self, HarnessError> {
        let dir = tempfile::tempdir()?;
        let cports: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_, _>>()?;
        let mut nodes = Vec::new();
        for (i, cport) in cports.iter().enumerate() {
            let port = free_port()?;
            let node_dir = dir.path().join(format!("n{i}"));
            // Spawn without waiting on each other: the cluster forms as peers come up.
            nodes.push(ServerProcess::spawn(ServerOptions {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                store_dir: node_dir.join("jetstream"),
                name: format!("n{i}"),
                cluster: Some(("jetrun-test".into(), *cport, cports.clone())),
                log_file: dir.path().join(format!("n{i}.log")),
                extra_args: vec![],
            })?);
        }
        let c = Self { nodes, _dir: dir };
        // Wait for a JetStream meta leader: account info succeeds only then.
        let client = connect(&c.urls()).await;
        let js = async_nats::jetstream::new(client);
        let start = Instant::now();
        // Ready when an R3 stream can be placed: every peer has joined.
        while js
            .create_stream(async_nats::jetstream::stream::Config {
                name: "HARNESS_READY".into(),
                subjects: vec!["harness.ready".into()],
                num_replicas: 3,
                ..Default::default()
            })
            .await
            .is_err()
        {
            if start.elapsed() > Duration::from_secs(30) {
                return Err(HarnessError::NotReady {
                    addr: c.nodes[0].opts.addr,
                    waited: start.elapsed(),
                    log: c.nodes[0].log_tail(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = js.delete_stream("HARNESS_READY").await;
        Ok(c)
    }

    /// All nodes' URLs, comma-separated (what a client is given).
    pub fn urls(&self) -> String {
        self.nodes.iter().map(|n| n.url()).collect::<Vec<_>>().join(",")
    }

    /// A client connected to the cluster.
    pub async fn client(&self) -> async_nats::Client {
        connect(&self.urls()).await
    }
}

/// Connects to `url` (comma-separated for several), retrying briefly; panics on failure
/// because it is for tests.
pub async fn connect(url: &str) -> async_nats::Client {
    let start = Instant::now();
    loop {
        match async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(server_addrs(url))
            .await
        {
            Ok(c) => return c,
            Err(e) if start.elapsed() > Duration::from_secs(10) => {
                panic!("connect {url}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Parses a comma-separated server list (`nats://a:4222,nats://b:4222`).
pub fn server_addrs(url: &str) -> Vec<async_nats::ServerAddr> {
    url.split(',').filter_map(|u| u.trim().parse().ok()).collect()
}

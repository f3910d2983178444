//! Test harness: real `redis-server` processes on free loopback ports (feature `testkit`).
//!
//! Each server runs under a small shell watchdog that removes it, and its directory, when the
//! test process goes away, even after SIGKILL, so shared servers held in statics never leak.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A free loopback port whose `+10000` (the Cluster bus port) is free too.
pub fn free_port() -> u16 {
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local addr").port();
        if port < 50_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// One `redis-server` child.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    watchdog: Child,
}

impl RedisServer {
    /// Starts a standalone server.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments.
    pub fn start_with(extra: &[&str]) -> Self {
        let port = free_port();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("wr-redis-{}-{n}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create redis dir");
        let args = extra.join(" ");
        let script = format!(
            "redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no --dir '{dir}' \
             --logfile '{dir}/redis.log' {args} &\n\
             R=$!\n\
             trap 'kill $R 2>/dev/null; wait $R 2>/dev/null; rm -rf \"{dir}\"; exit 0' TERM INT\n\
             while kill -0 {parent} 2>/dev/null && kill -0 $R 2>/dev/null; do sleep 0.2; done\n\
             kill $R 2>/dev/null; wait $R 2>/dev/null; rm -rf \"{dir}\"\n",
            dir = dir.display(),
            parent = std::process::id(),
        );
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn sh for redis-server (is redis-server installed?)");
        let server = RedisServer { port, dir, watchdog };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.command("PING").is_ok_and(|reply| reply.starts_with("+PONG")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let log = std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default();
        panic!("redis-server on port {} did not start:\n{log}", self.port);
    }

    /// Sends one inline command on a connection of its own and returns the raw first reply
    /// line(s).
    pub fn command(&self, cmd: &str) -> std::io::Result<String> {
        self.connect()?.command(cmd)
    }

    /// A connection kept open for several commands (one that stays counted by
    /// `connected_clients`, and still works while the server refuses new ones).
    pub fn connect(&self) -> std::io::Result<RedisConn> {
        let s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(RedisConn(BufReader::new(s)))
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A server shared by every test of this process.
    pub fn shared() -> &'static RedisServer {
        static SHARED: OnceLock<RedisServer> = OnceLock::new();
        SHARED.get_or_init(RedisServer::start)
    }
}

/// A kept connection to a test server ([`RedisServer::connect`]).
#[derive(Debug)]
pub struct RedisConn(BufReader<TcpStream>);

impl RedisConn {
    /// Sends one inline command and returns the raw first reply line, or a bulk reply's body.
    pub fn command(&mut self, cmd: &str) -> std::io::Result<String> {
        self.0.get_mut().write_all(format!("{cmd}\r\n").as_bytes())?;
        let mut line = String::new();
        self.0.read_line(&mut line)?;
        if let Some(len) = line.strip_prefix('$').and_then(|l| l.trim().parse::<usize>().ok()) {
            let mut body = vec![0u8; len + 2];
            self.0.read_exact(&mut body)?;
            line.push_str(&String::from_utf8_lossy(&body));
        }
        Ok(line)
    }

    /// `connected_clients` from `INFO clients` (this connection included).
    pub fn connected_clients(&mut self) -> std::io::Result<usize> {
        let info = self.command("INFO clients")?;
        info.lines()
            .find_map(|l| l.strip_prefix("connected_clients:"))
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no connected_clients in {info:?}")))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.watchdog.id().to_string()).status();
        let _ = self.watchdog.wait();
    }
}

/// A local Redis Cluster of `n` masters (no replicas).
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `n` (≥ 3) cluster-enabled servers and joins them with `redis-cli --cluster create`.
    pub fn start(n: usize) -> Self {
        let nodes: Vec<RedisServer> = (0..n)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled yes",
                    "--cluster-config-file nodes.conf",
                    "--cluster-node-timeout 5000",
                ])
            })
            .collect();
        let mut cmd = Command::new("redis-cli");
        cmd.arg("--cluster").arg("create");
        for node in &nodes {
            cmd.arg(format!("127.0.0.1:{}", node.port));
        }
        let out = cmd
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(out.status.success(), "cluster create failed: {}", String::from_utf8_lossy(&out.stdout));
        let cluster = RedisCluster { nodes };
        cluster.wait_ok();
        cluster
    }

    fn wait_ok(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        'outer: while Instant::now() < deadline {
            for node in &self.nodes {
                let info = node.command("CLUSTER INFO").unwrap_or_default();
                if !info.contains("cluster_state:ok") {
                    std::thread::sleep(Duration::from_millis(100));
                    continue 'outer;
                }
            }
            return;
        }
        panic!("cluster did not reach cluster_state:ok");
    }

    /// Comma-separated node URLs (the `WR_REDIS_URL` form of a Cluster).
    pub fn urls(&self) -> String {
        self.nodes.iter().map(RedisServer::url).collect::<Vec<_>>().join(",")
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// A 3-master cluster shared by every test of this process.
    pub fn shared() -> &'static RedisCluster {
        static SHARED: OnceLock<RedisCluster> = OnceLock::new();
        SHARED.get_or_init(|| RedisCluster::start(3))
    }
}

/// A room id unique within this process, for tests sharing a server.
pub fn unique_room(prefix: &str) -> crate::RoomId {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    crate::RoomId::parse(&format!("{prefix}-{}-{n}", std::process::id())).expect("valid room id")
}

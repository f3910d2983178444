//! A backend of fixed capacity for overload drills and the gate benchmark
//! (`tests/common/capacity.rs`, shared with the gate tests). `GET /_stats` reports what it served.
//!
//! `CAP_LISTEN` (default 127.0.0.1:9090), `CAP_CONCURRENT` (10), `CAP_LATENCY_MS` (100),
//! `CAP_DEADLINE_MS` (1000).

use std::time::Duration;

// What the gate tests record too; this binary only serves.
#[allow(dead_code)]
#[path = "../tests/common/capacity.rs"]
mod capacity;

use capacity::Capacity;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let listen = std::env::var("CAP_LISTEN").unwrap_or_else(|_| "127.0.0.1:9090".into());
    let cap = Capacity {
        concurrent: env("CAP_CONCURRENT", 10),
        latency: Duration::from_millis(env("CAP_LATENCY_MS", 100)),
        deadline: Duration::from_millis(env("CAP_DEADLINE_MS", 1000)),
    };
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    let (addr, _record) = capacity::start(listener, cap).await?;
    println!("capacity upstream on http://{addr}: {cap:?}");
    tokio::signal::ctrl_c().await?;
    Ok(())
}

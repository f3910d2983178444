//! The gateway binary: load config, set up tracing, bind, run until SIGTERM/SIGINT. It needs
//! a backend (`WR_UPSTREAM`); the whole system in one process is the `waiting-room` binary.
//! `queue-gateway check-config` validates the configuration and exits.

use std::process::ExitCode;

use queue_gateway::config::GatewayConfig;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let cfg = match GatewayConfig::load() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("queue-gateway: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    match std::env::args().nth(1).as_deref() {
        Some("check-config") => {
            println!("configuration OK: {cfg:?}");
            return ExitCode::SUCCESS;
        }
        Some(other) => {
            eprintln!("usage: queue-gateway [check-config] (unknown argument {other:?})");
            return ExitCode::from(2);
        }
        None => {}
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("queue-gateway: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let listener = match TcpListener::bind(cfg.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("queue-gateway: cannot listen on {}: {e}", cfg.listen);
                return ExitCode::FAILURE;
            }
        };
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let store = if cfg.redis_url.is_some() { "redis" } else { "memory" };
        tracing::info!(%addr, store, upstream = cfg.upstream.as_deref().unwrap_or(""), "listening");
        match queue_gateway::run(listener, cfg, queue_core::process::shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("queue-gateway: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

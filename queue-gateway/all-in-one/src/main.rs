//! `waiting-room`: the whole system on embedded defaults (`cargo run --release` at the
//! workspace root): load both configs, set up tracing, bind, run until SIGTERM/SIGINT.

use std::process::ExitCode;

use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;
use waiting_room::Config;

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    if let Some(arg) = std::env::args().nth(1) {
        eprintln!("usage: waiting-room (no arguments; configured by WR_* and TB_* variables), not {arg:?}");
        return ExitCode::from(2);
    }
    let cfg = match Config::load() {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("waiting-room: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let (gateway, backend) =
        match (TcpListener::bind(cfg.gateway.listen).await, TcpListener::bind(cfg.backend.listen).await) {
            (Ok(g), Ok(b)) => (g, b),
            (Err(e), _) => return cannot_listen(cfg.gateway.listen, e),
            (_, Err(e)) => return cannot_listen(cfg.backend.listen, e),
        };
    if let (Ok(g), Ok(b)) = (gateway.local_addr(), backend.local_addr()) {
        println!("{}", waiting_room::banner(g, b, cfg.has_demo_room()));
    }
    match waiting_room::run(gateway, backend, cfg, queue_core::process::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("waiting-room: {e}");
            ExitCode::FAILURE
        }
    }
}

fn cannot_listen(addr: std::net::SocketAddr, e: std::io::Error) -> ExitCode {
    eprintln!("waiting-room: cannot listen on {addr}: {e}");
    ExitCode::FAILURE
}

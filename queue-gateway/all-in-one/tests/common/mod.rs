//! The gateway tests' HTTP client (`queue-gateway/tests/common/http.rs`), and the whole
//! system started as `cargo run --release` starts it.
#![allow(dead_code)]

#[path = "../../../tests/common/http.rs"]
mod http;

pub use http::*;

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::StatusCode;

/// The all-in-one system as `cargo run --release` starts it (the `waiting-room` process: the
/// gateway in front of the real backend), working in `dir`, with an optional config file; returns the gateway's and the
/// backend's addresses once the catalog answers through the gateway.
pub async fn start_all_in_one(
    dir: &std::path::Path,
    config_file: Option<&std::path::Path>,
) -> (Proc, SocketAddr, SocketAddr) {
    std::fs::create_dir_all(dir).unwrap();
    let (port, backend) = (queue_core::testkit::free_port(), queue_core::testkit::free_port());
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_waiting-room"));
    cmd.current_dir(dir)
        .env("WR_LISTEN", format!("127.0.0.1:{port}"))
        .env("TB_LISTEN", format!("127.0.0.1:{backend}"))
        .env("WR_ADMIN_TOKEN", ADMIN)
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null());
    if let Some(f) = config_file {
        cmd.env("WR_CONFIG", f);
    }
    let proc = Proc(cmd.spawn().expect("start waiting-room"));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !(tokio::net::TcpStream::connect(addr).await.is_ok()
        && Http::new(addr).get("/api/v1/concerts").await.status == StatusCode::OK)
    {
        assert!(std::time::Instant::now() < deadline, "the all-in-one system did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (proc, addr, format!("127.0.0.1:{backend}").parse().unwrap())
}

//! The local payment provider simulator (`ticketing_backend::paysim`): Toss's confirm,
//! cancel and lookup API for the demo and tests.
//!
//! `PS_LISTEN` (default 127.0.0.1:8082), `PS_SECRET_KEY` (default the backend's default).

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).init();
    let listen = std::env::var("PS_LISTEN").unwrap_or_else(|_| "127.0.0.1:8082".into());
    let secret = std::env::var("PS_SECRET_KEY").unwrap_or_else(|_| "test_sk_local_simulator".into());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    let addr = ticketing_backend::paysim::start(listener, &secret).await?;
    println!("payment simulator on http://{addr}");
    tokio::signal::ctrl_c().await?;
    Ok(())
}

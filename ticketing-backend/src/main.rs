//! The backend binary: load config, set up tracing, bind, run until SIGTERM/SIGINT.
//!
//! Subcommands:
//! - `ticketing-backend jobs <expire-holds|expire-coupons|settle|cleanup-performances|reconcile>
//!   [--day YYYY-MM-DD]`: runs one batch job against the configured database and prints
//!   its outcome (safe beside running instances: jobs take a lease). `reconcile` compares
//!   the provider's ledger (`TB_PAYMENTS_BASE_URL`) with the database, refunds orphan
//!   charges and prints every disagreement.
//! - `ticketing-backend reindex [--url http://host:port]`: asks a running instance (default
//!   `TB_LISTEN`) to rebuild its search index, signing in as `TB_ADMIN_EMAIL`.
//! - `ticketing-backend seed-demo`: loads the demo catalog (the embedded default's) into the
//!   configured database if it has no concerts yet, for a staging or load-test setup on
//!   PostgreSQL; running instances pick it up on their next `reindex`.

use std::process::ExitCode;

use ticketing_backend::config::BackendConfig;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    let cfg = match BackendConfig::load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ticketing-backend: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ticketing-backend: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    rt.block_on(async move {
        match args.first().map(String::as_str) {
            None => serve(cfg).await,
            Some("jobs") => job(cfg, &args[1..]).await,
            Some("reindex") => reindex(cfg, &args[1..]).await,
            Some("seed-demo") => seed_demo(cfg).await,
            Some(other) => {
                eprintln!("ticketing-backend: unknown command {other:?} (try: jobs, reindex, seed-demo)");
                ExitCode::from(2)
            }
        }
    })
}

async fn serve(cfg: BackendConfig) -> ExitCode {
    let listener = match TcpListener::bind(cfg.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ticketing-backend: cannot listen on {}: {e}", cfg.listen);
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(addr = %cfg.listen, "listening");
    match ticketing_backend::run(listener, cfg, queue_core::process::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ticketing-backend: {e}");
            ExitCode::FAILURE
        }
    }
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

async fn job(cfg: BackendConfig, args: &[String]) -> ExitCode {
    let Some(name) = args.first().filter(|n| ticketing_backend::jobs::JOBS.contains(&n.as_str())) else {
        eprintln!(
            "usage: ticketing-backend jobs <{}> [--day YYYY-MM-DD]",
            ticketing_backend::jobs::JOBS.join("|")
        );
        return ExitCode::from(2);
    };
    if *name == "reconcile" && cfg.payments_base_url.is_none() {
        eprintln!(
            "ticketing-backend: reconcile reads the provider's ledger: set TB_PAYMENTS_BASE_URL (the built-in \
             simulator's ledger lives inside the serving process, which reconciles it itself)"
        );
        return ExitCode::from(2);
    }
    let day = match flag(args, "--day") {
        Some(d) => match time::Date::parse(d, time::macros::format_description!("[year]-[month]-[day]")) {
            Ok(date) => Some(date.midnight().assume_utc().unix_timestamp() * 1000),
            Err(_) => {
                eprintln!("ticketing-backend: --day must be YYYY-MM-DD, got {d:?}");
                return ExitCode::from(2);
            }
        },
        None => None,
    };
    let state = match ticketing_backend::build(&cfg).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("ticketing-backend: {e}");
            return ExitCode::FAILURE;
        }
    };
    let holder = format!("cli-{}", std::process::id());
    match ticketing_backend::jobs::run_named(&state, name, &holder, day).await {
        Ok(out) => {
            println!("{}", serde_json::to_string(&out).unwrap_or_default());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ticketing-backend: job {name} failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn reindex(cfg: BackendConfig, args: &[String]) -> ExitCode {
    let base = flag(args, "--url").map(str::to_owned).unwrap_or_else(|| format!("http://{}", cfg.listen));
    let (Some(email), Some(password)) = (&cfg.admin_email, &cfg.admin_password) else {
        eprintln!("ticketing-backend: reindex signs in as TB_ADMIN_EMAIL / TB_ADMIN_PASSWORD; set both");
        return ExitCode::from(2);
    };
    match ticketing_backend::admin_reindex(&base, email, password).await {
        Ok(answer) => {
            println!("{answer}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ticketing-backend: reindex failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn seed_demo(cfg: BackendConfig) -> ExitCode {
    let seeded = match ticketing_backend::build(&cfg).await {
        Ok(state) => ticketing_backend::seed::seed_if_empty(&state).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    match seeded {
        Ok(true) => {
            println!("demo catalog loaded");
            ExitCode::SUCCESS
        }
        Ok(false) => {
            println!("the catalog has concerts already: nothing loaded");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ticketing-backend: seed-demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

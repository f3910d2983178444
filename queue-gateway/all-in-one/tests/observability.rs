//! `grafana/`: `promtool` accepts the Prometheus config and the alert rules, and a real
//! Prometheus scraping a running all-in-one system (gateway and backend) finds data for every
//! PromQL expression of the dashboard and the rules: none names a metric that does not exist.
//! Needs `prometheus` and `promtool` on the PATH (Debian: `prometheus`; `.ci/run` installs it).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use common::*;
use queue_core::testkit::free_port;
use serde_json::{Value, json};

fn grafana() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../grafana")
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .output()
        .expect("promtool on the PATH (Debian package prometheus)");
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every PromQL expression: the dashboard's targets and the rules' `expr` (without the
/// threshold, so that a quiet system still has data to show).
fn expressions() -> Vec<String> {
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(grafana().join("dashboards/waiting-room.json")).unwrap(),
    )
    .unwrap();
    let mut out: Vec<String> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().iter().map(|t| t["expr"].as_str().unwrap().to_owned()))
        .collect();
    let rules = std::fs::read_to_string(grafana().join("alerts.yml")).unwrap();
    for line in rules.lines() {
        if let Some(expr) = line.trim().strip_prefix("expr: ") {
            let cut = expr.rfind(['>', '<']).map_or(expr, |i| &expr[..i]);
            out.push(cut.trim().to_owned());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_rules_find_data_in_a_real_prometheus() {
    let g = grafana();
    promtool(&["check", "config", g.join("prometheus.yml").to_str().unwrap()]);
    promtool(&["check", "rules", g.join("alerts.yml").to_str().unwrap()]);

    let dir = std::env::temp_dir().join(format!("wr-prom-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (_gw, addr, backend) = start_all_in_one(&dir, None).await;
    let (port, prom) = (addr.port(), free_port());
    let mut http = Http::new(addr);
    // Some traffic of every kind: a gate, a queue, an admission, a refused token.
    let r = http
        .admin(
            Method::PUT,
            "/admin/v1/gates/book",
            Some(json!({"prefixes": ["/api/v1/payments"], "max_inflight": 8})),
        )
        .await;
    assert!(r.status.is_success(), "{}", r.text);
    let t = http.post("/api/v1/rooms/demo/tickets").await.json()["ticket"].as_str().unwrap().to_owned();
    http.admin(Method::POST, "/admin/v1/rooms/demo/admit", Some(json!({"count": 1}))).await;
    http.get(&format!("/api/v1/rooms/demo/tickets/{t}")).await;
    Http::new(addr).get("/book/").await;

    let config = std::fs::read_to_string(g.join("prometheus.yml"))
        .unwrap()
        .replace("scrape_interval: 5s", "scrape_interval: 1s")
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
        .replace("127.0.0.1:8081", &backend.to_string());
    std::fs::write(dir.join("prometheus.yml"), config).unwrap();
    std::fs::copy(g.join("alerts.yml"), dir.join("alerts.yml")).unwrap();
    let _prom = Proc(
        Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{prom}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus on the PATH (Debian package prometheus)"),
    );
    let query = |expr: String| async move {
        let url = format!("/api/v1/query?query={}", queue_gateway::api::page::encode_component(&expr));
        Http::new(format!("127.0.0.1:{prom}").parse().unwrap()).get(&url).await
    };
    // Wait for Prometheus, then for a few scrapes of both targets.
    let deadline = Instant::now() + Duration::from_secs(60);
    while tokio::net::TcpStream::connect(("127.0.0.1", prom)).await.is_err() {
        assert!(Instant::now() < deadline, "Prometheus did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    loop {
        let r = query("count(up == 1) >= 2".into()).await;
        if r.status == StatusCode::OK && !r.json()["data"]["result"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "Prometheus never scraped both targets: {}", r.text);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut empty = Vec::new();
    for expr in expressions() {
        let r = query(expr.clone()).await;
        assert_eq!(r.status, StatusCode::OK, "{expr}: {}", r.text);
        if r.json()["data"]["result"].as_array().unwrap().is_empty() {
            empty.push(expr);
        }
    }
    assert!(empty.is_empty(), "expressions without data: {empty:#?}");
    let _ = std::fs::remove_dir_all(&dir);
}

//! Search latency on N concerts, and concert detail with and without the cache.
//!
//! `cargo run --release -p ticketing-backend --example search_bench -- [N=100000]`

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use ticketing_backend::config::BackendConfig;
use ticketing_backend::search::{Doc, Search};
use tower::ServiceExt;

const KO: [&str; 12] = [
    "여름",
    "겨울",
    "봄날",
    "가을",
    "재즈",
    "클래식",
    "록",
    "발라드",
    "오케스트라",
    "페스티벌",
    "콘서트",
    "공연",
];
const EN: [&str; 12] = [
    "Summer",
    "Winter",
    "Spring",
    "Autumn",
    "Jazz",
    "Classic",
    "Rock",
    "Ballad",
    "Orchestra",
    "Festival",
    "Live",
    "Tour",
];

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

fn report(name: &str, mut d: Vec<Duration>) {
    d.sort();
    println!(
        "{name}: n={} p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        d.len(),
        percentile(&d, 0.5).as_secs_f64() * 1e3,
        percentile(&d, 0.99).as_secs_f64() * 1e3,
        d[d.len() - 1].as_secs_f64() * 1e3
    );
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(100_000);
    let search = Search::new().unwrap();
    let titles: Vec<(String, Vec<String>)> = (0..n)
        .map(|i| {
            let ko = format!("{} {} {}", KO[i % 12], KO[(i / 12) % 12], KO[(i / 144) % 12]);
            let en = format!("{} {} {}", EN[(i / 7) % 12], EN[(i / 84) % 12], i);
            let title = if i % 2 == 0 { ko } else { en };
            (title, vec![format!("Artist {}", i % 997)])
        })
        .collect();
    let docs: Vec<Doc<'_>> = titles
        .iter()
        .enumerate()
        .map(|(i, (t, a))| Doc {
            kind: "concert",
            id: i as i64 + 1,
            title: t,
            artists: a,
            starts_on: Some(i as i64 * 60_000),
        })
        .collect();
    let t = Instant::now();
    for chunk in docs.chunks(20_000) {
        search.upsert(chunk).unwrap();
    }
    println!("indexed {n} concerts in {:.1} s", t.elapsed().as_secs_f64());

    let queries = [
        "여름공연",
        "여름 페스티벌",
        "재즈 콘서트",
        "Summer Festival",
        "Festivl",
        "Orch",
        "Artist 42",
        "겨울봄날",
    ];
    let mut lat = Vec::new();
    for round in 0..250 {
        for q in queries {
            let t = Instant::now();
            let hits = search.search(q, None, None, None).unwrap();
            lat.push(t.elapsed());
            if round == 0 {
                println!("  {q:?}: {} hits", hits.len());
            }
        }
    }
    report(&format!("search over {n} concerts"), lat.clone());
    for (i, q) in queries.iter().enumerate() {
        let per: Vec<Duration> = lat.iter().skip(i).step_by(queries.len()).copied().collect();
        report(&format!("  {q:?}"), per);
    }

    // Detail: the demo catalog on SQLite, cached vs uncached (invalidated before each read).
    let dir = std::env::temp_dir().join(format!("tb-bench-{}", std::process::id()));
    let cfg = BackendConfig { data_dir: dir.clone(), ..BackendConfig::default() };
    let state = ticketing_backend::build(&cfg).await.unwrap();
    let router = ticketing_backend::router(state.clone());
    let get = |id: i64| {
        let r = router.clone();
        async move {
            let req = Request::get(format!("/api/v1/concerts/{id}")).body(Body::empty()).unwrap();
            let t = Instant::now();
            let resp = r.oneshot(req).await.unwrap();
            assert!(resp.status().is_success());
            t.elapsed()
        }
    };
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for i in 0..2000 {
        let id = (i % 50) + 1;
        state.cache.invalidate(Some(id)).await;
        cold.push(get(id).await);
        warm.push(get(id).await);
    }
    report("concert detail, uncached (SQLite)", cold);
    report("concert detail, cached (in process)", warm);
    let _ = std::fs::remove_dir_all(dir);
}

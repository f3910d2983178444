//! The ranking shared through Redis: two backend instances count into one window.

use queue_core::testkit::RedisServer;
use ticketing_backend::ranking::Views;

#[tokio::test]
async fn instances_share_counts_and_the_window_slides() {
    let redis = RedisServer::start();
    let a = Views::redis(&redis.url()).await.unwrap();
    let b = Views::redis(&redis.url()).await.unwrap();
    let day = 86_400_000;
    let now = 20_000 * day + 5;
    for _ in 0..3 {
        a.record(7, now).await.unwrap();
    }
    b.record(7, now - 2 * day).await.unwrap();
    b.record(9, now - day).await.unwrap();
    b.record(9, now - day).await.unwrap();
    a.record(11, now - 8 * day).await.unwrap();
    assert_eq!(a.top(now, 5).await.unwrap(), vec![(7, 4), (9, 2)]);
    assert_eq!(b.top(now, 1).await.unwrap(), vec![(7, 4)]);
    let ttl = redis.command(&format!("TTL tb:views:{}", now / day)).unwrap();
    assert!(ttl.trim_start_matches(':').trim().parse::<i64>().unwrap() > 7 * 86_400, "{ttl}");
}

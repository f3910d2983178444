//! Rate limits on the waiting-room API (governor token buckets), per client IP and per user.
//!
//! Keyed limiter state grows with distinct keys, so a background task calls `retain_recent`
//! and `shrink_to_fit` on a timer: memory stays bounded by the keys seen recently.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::{Rate, RateLimits};
use crate::error::GatewayError;

type Keyed<K> = Option<DefaultKeyedRateLimiter<K>>;

/// The gateway's limiters.
#[derive(Debug)]
pub struct Limiters {
    join_ip: Keyed<IpAddr>,
    status_ip: Keyed<IpAddr>,
    user: Keyed<String>,
    clock: DefaultClock,
}

fn keyed<K: std::hash::Hash + Eq + Clone>(r: Rate) -> Keyed<K> {
    let per_second = NonZeroU32::new(r.per_second)?;
    let burst = NonZeroU32::new(r.burst).unwrap_or(per_second);
    Some(RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)))
}

/// Which API a request uses.
#[derive(Clone, Copy, Debug)]
pub enum Api {
    /// Joining a queue.
    Join,
    /// Polling a ticket (status, SSE).
    Status,
}

impl Limiters {
    /// Limiters per the config.
    pub fn new(cfg: &RateLimits) -> Self {
        Limiters {
            join_ip: keyed(cfg.join_per_ip),
            status_ip: keyed(cfg.status_per_ip),
            user: keyed(cfg.per_user),
            clock: DefaultClock::default(),
        }
    }

    fn check<K: std::hash::Hash + Eq + Clone>(&self, l: &Keyed<K>, key: &K) -> Result<(), GatewayError> {
        let Some(l) = l else { return Ok(()) };
        l.check_key(key).map_err(|not_until| GatewayError::RateLimited {
            retry_after_s: not_until.wait_time_from(self.clock.now()).as_secs_f64().ceil() as u64,
        })
    }

    /// Checks one request from `ip` (and `user`, when known).
    pub fn check_request(&self, api: Api, ip: IpAddr, user: Option<&str>) -> Result<(), GatewayError> {
        match api {
            Api::Join => self.check(&self.join_ip, &ip)?,
            Api::Status => self.check(&self.status_ip, &ip)?,
        }
        if let Some(u) = user {
            self.check(&self.user, &u.to_owned())?;
        }
        Ok(())
    }

    /// Forgets keys whose buckets are full again and returns memory.
    pub fn compact(&self) {
        for l in [&self.join_ip, &self.status_ip].into_iter().flatten() {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.user {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Keys held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.join_ip.as_ref().map_or(0, |l| l.len())
            + self.status_ip.as_ref().map_or(0, |l| l.len())
            + self.user.as_ref().map_or(0, |l| l.len())
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Compacts the limiters every `every` until shutdown.
pub async fn compact_loop(
    limiters: Arc<Limiters>,
    every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => limiters.compact(),
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_ip_with_retry_after_and_compaction() {
        let l = Limiters::new(&RateLimits {
            join_per_ip: Rate { per_second: 1, burst: 2 },
            status_per_ip: Rate { per_second: 0, burst: 0 },
            per_user: Rate { per_second: 1, burst: 1 },
        });
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        assert!(l.check_request(Api::Join, ip, None).is_ok());
        assert!(l.check_request(Api::Join, ip, None).is_ok());
        match l.check_request(Api::Join, ip, None) {
            Err(GatewayError::RateLimited { retry_after_s }) => assert!(retry_after_s >= 1),
            other => panic!("expected a rate limit, got {other:?}"),
        }
        assert!(l.check_request(Api::Join, other, None).is_ok());
        for _ in 0..100 {
            assert!(l.check_request(Api::Status, ip, None).is_ok(), "a 0 rate means no limit");
        }
        assert!(l.check_request(Api::Status, ip, Some("u")).is_ok());
        assert!(l.check_request(Api::Status, other, Some("u")).is_err(), "per-user limit spans IPs");
        assert!(l.len() >= 3);
        std::thread::sleep(Duration::from_millis(3100));
        l.compact();
        assert_eq!(l.len(), 0, "refilled buckets are forgotten");
    }
}

//! Wait estimates from the admission rate actually observed.
//!
//! Stores keep `(time, admitted)` samples of ticks and manual admissions. The rate is their sum
//! over a sliding window (a minute, or three ticks if longer) divided by the span the samples
//! really cover, so the first tick already gives a sensible rate. Free passes are left out:
//! they do not drain the queue. With no sample yet the configured capacity stands in.

use std::collections::VecDeque;

use serde::Serialize;

use crate::config::RoomConfig;
use crate::model::RoomPhase;

/// Most samples kept per room.
pub const MAX_SAMPLES: usize = 1024;

/// The sliding window for a room, in ms.
pub fn window_ms(cfg: &RoomConfig) -> u64 {
    (cfg.tick_interval_ms * 3).max(60_000)
}

/// Admissions per minute from samples, newest first or in any order.
pub fn rate_per_minute(samples: impl IntoIterator<Item = (u64, u64)>, now_ms: u64, cfg: &RoomConfig) -> f64 {
    let window = window_ms(cfg);
    let since = now_ms.saturating_sub(window);
    let mut total = 0u64;
    let mut oldest = now_ms;
    for (at, n) in samples {
        if at > since {
            total += n;
            oldest = oldest.min(at);
        }
    }
    if total == 0 {
        return 0.0;
    }
    // A sample stands for the interval that ended with it.
    let span = (now_ms - oldest + cfg.tick_interval_ms).clamp(1, window);
    total as f64 * 60_000.0 / span as f64
}

/// A bounded sample log (the memory store's form of the Redis `rate` list).
#[derive(Debug, Default, Clone)]
pub struct RateLog {
    samples: VecDeque<(u64, u64)>,
}

impl RateLog {
    /// Records `n` admissions at `at_ms`.
    pub fn record(&mut self, at_ms: u64, n: u64) {
        if self.samples.len() == MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((at_ms, n));
    }

    /// The observed rate.
    pub fn per_minute(&self, now_ms: u64, cfg: &RoomConfig) -> f64 {
        rate_per_minute(self.samples.iter().copied(), now_ms, cfg)
    }
}

/// An estimated wait: a point and a range to show.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Eta {
    /// Best guess, in seconds.
    pub seconds: u64,
    /// Low end of the range shown to people.
    pub low_seconds: u64,
    /// High end of the range shown to people.
    pub high_seconds: u64,
}

/// Estimates the wait of the ticket at `position`; `None` when paused (nobody can say).
pub fn estimate(
    position: u64,
    observed_pm: f64,
    cfg: &RoomConfig,
    phase: RoomPhase,
    now_ms: u64,
) -> Option<Eta> {
    if phase == RoomPhase::Paused {
        return None;
    }
    let configured = cfg.batch_size as f64 * 60_000.0 / cfg.tick_interval_ms as f64;
    let per_minute = if observed_pm > 0.0 { observed_pm } else { configured };
    // Admission happens in whole ticks: the ticket goes with the tick that reaches it.
    let per_tick = (per_minute * cfg.tick_interval_ms as f64 / 60_000.0).max(1e-9);
    let ticks = (position as f64 / per_tick).ceil();
    let mut seconds = ticks * cfg.tick_interval_ms as f64 / 1000.0;
    let until_open = cfg.opens_at_ms().saturating_sub(now_ms) as f64 / 1000.0;
    seconds += until_open;
    let seconds = seconds.min(u32::MAX as f64);
    let spread = seconds - until_open;
    Some(Eta {
        seconds: seconds.ceil() as u64,
        low_seconds: (until_open + spread * 0.8).floor() as u64,
        high_seconds: (until_open + spread * 1.25).ceil() as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(batch: u32, interval: u64) -> RoomConfig {
        RoomConfig { batch_size: batch, tick_interval_ms: interval, ..RoomConfig::default() }
    }

    #[test]
    fn first_tick_gives_a_full_rate() {
        let c = cfg(3000, 10_000);
        let rate = rate_per_minute([(100_000, 3000)], 100_000, &c);
        assert!((rate - 18_000.0).abs() < 1.0, "{rate}");
    }

    #[test]
    fn steady_ticks_give_the_batch_rate() {
        let c = cfg(100, 1000);
        let samples: Vec<_> = (0..120).map(|i| (i * 1000, 100)).collect();
        let rate = rate_per_minute(samples, 119_000, &c);
        assert!((rate - 6000.0).abs() < 1.0, "{rate}");
    }

    #[test]
    fn eta_uses_observed_rate_and_ranges() {
        let c = cfg(100, 1000);
        let e = estimate(1000, 600.0, &c, RoomPhase::Open, 0).unwrap();
        assert_eq!(e.seconds, 100);
        assert!(e.low_seconds < e.seconds && e.seconds < e.high_seconds);
        let configured = estimate(1000, 0.0, &c, RoomPhase::Open, 0).unwrap();
        assert_eq!(configured.seconds, 10);
        assert!(estimate(1, 600.0, &c, RoomPhase::Paused, 0).is_none());
    }

    #[test]
    fn eta_never_rises_as_position_falls() {
        let c = cfg(7, 1300);
        let mut last = u64::MAX;
        for pos in (1..500).rev() {
            let e = estimate(pos, 123.0, &c, RoomPhase::Open, 0).unwrap().seconds;
            assert!(e <= last);
            last = e;
        }
    }
}

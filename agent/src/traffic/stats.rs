//! RED figures (rate, errors, duration) of one release on one route,
//! counted by the proxy as requests pass: responses by status class, a
//! duration histogram, requests in flight, connections pinned to it.
//!
//! Counters only grow; a [`Window`] is the difference of two snapshots, so
//! the agent can judge any period (a canary's, a status line's) without the
//! proxy keeping history.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the duration buckets, in microseconds (a 1-2.5-5
/// series from 100 µs to 30 s; the last bucket is everything slower).
pub const BUCKETS_US: [u64; 17] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000, 30_000_000,
];

/// The live counters of one backend.
#[derive(Debug)]
pub(super) struct BackendStats {
    pub release: String,
    pub addr: SocketAddr,
    /// `addr` as a URI authority, made once (every request names it).
    pub authority: http::uri::Authority,
    in_flight: AtomicU64,
    open: AtomicU64,
    /// 1xx, 2xx, 3xx, 4xx, 5xx (a 502 the proxy answers itself is a 5xx:
    /// it is what the client saw).
    classes: [AtomicU64; 5],
    /// One more than `BUCKETS_US`: the overflow bucket.
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

/// A snapshot of one backend's counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendFigures {
    pub release: String,
    pub addr: SocketAddr,
    /// Its share now; 0 for a release switched away from.
    pub weight: u32,
    pub in_flight: u64,
    /// Upgraded (WebSocket) and TCP-mode connections on it.
    pub open: u64,
    /// Responses by status class, 1xx to 5xx.
    pub responses: [u64; 5],
    /// Responses per duration bucket (see `BUCKETS_US`), not cumulative.
    pub duration_buckets: Vec<u64>,
    pub duration_sum_us: u64,
}

impl BackendStats {
    pub fn new(release: &str, addr: SocketAddr) -> Self {
        Self {
            release: release.to_string(),
            addr,
            authority: http::uri::Authority::try_from(addr.to_string().as_str())
                .expect("a socket address is an authority"),
            in_flight: AtomicU64::new(0),
            open: AtomicU64::new(0),
            classes: Default::default(),
            buckets: Default::default(),
            sum_us: AtomicU64::new(0),
        }
    }

    /// A request began; the guard records its end when dropped.
    pub fn begin(self: &std::sync::Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight {
            stats: self.clone(),
            started: std::time::Instant::now(),
            status: None,
        }
    }

    /// A connection pinned to this release opened; the guard closes it.
    pub fn pin(self: &std::sync::Arc<Self>) -> Pinned {
        self.open.fetch_add(1, Relaxed);
        Pinned(self.clone())
    }

    fn record(&self, status: u16, took: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.classes[class].fetch_add(1, Relaxed);
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKETS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(BUCKETS_US.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    pub fn figures(&self, weight: u32) -> BackendFigures {
        BackendFigures {
            release: self.release.clone(),
            addr: self.addr,
            weight,
            in_flight: self.in_flight.load(Relaxed),
            open: self.open.load(Relaxed),
            responses: std::array::from_fn(|i| self.classes[i].load(Relaxed)),
            duration_buckets: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            duration_sum_us: self.sum_us.load(Relaxed),
        }
    }

    /// Nothing in flight and nothing pinned: it can stop without cutting anyone.
    pub fn idle(&self) -> bool {
        self.in_flight.load(Relaxed) == 0 && self.open.load(Relaxed) == 0
    }
}

/// One request in flight; records its status and duration when dropped
/// (a client that went away mid-response is recorded with the status it
/// was being sent).
pub(super) struct InFlight {
    stats: std::sync::Arc<BackendStats>,
    started: std::time::Instant,
    status: Option<u16>,
}

impl InFlight {
    pub fn status(&mut self, status: u16) {
        self.status = Some(status);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Relaxed);
        if let Some(status) = self.status {
            self.stats.record(status, self.started.elapsed());
        }
    }
}

/// One connection pinned to a release.
pub(super) struct Pinned(std::sync::Arc<BackendStats>);

impl Drop for Pinned {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
    }
}

/// What one release did between two snapshots.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Window {
    pub requests: u64,
    /// 5xx responses.
    pub errors: u64,
    /// Responses per bucket of `BUCKETS_US` (+ overflow).
    pub buckets: [u64; BUCKETS_US.len() + 1],
}

impl Window {
    /// `later - earlier` for the same backend (`earlier` may be `None`: from zero).
    pub fn between(earlier: Option<&BackendFigures>, later: &BackendFigures) -> Self {
        let sub = |a: u64, b: Option<u64>| a.saturating_sub(b.unwrap_or(0));
        let requests = later.responses.iter().sum::<u64>();
        let before = earlier.map(|e| e.responses.iter().sum::<u64>());
        let mut buckets = [0; BUCKETS_US.len() + 1];
        for (i, b) in buckets.iter_mut().enumerate() {
            let now = later.duration_buckets.get(i).copied().unwrap_or(0);
            *b = sub(
                now,
                earlier.and_then(|e| e.duration_buckets.get(i).copied()),
            );
        }
        Self {
            requests: sub(requests, before),
            errors: sub(later.responses[4], earlier.map(|e| e.responses[4])),
            buckets,
        }
    }

    /// Add another window's counts (two releases over the same period).
    pub fn add(&mut self, other: &Window) {
        self.requests += other.requests;
        self.errors += other.errors;
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
    }

    pub fn error_ratio(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// The duration under which `q` (0..1) of the requests finished: the
    /// upper bound of the bucket holding that rank, so never an
    /// underestimate. `None` without requests; `Duration::MAX` if the rank
    /// falls in the overflow bucket (over 30 s).
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, count) in self.buckets.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(
                    BUCKETS_US
                        .get(i)
                        .map_or(Duration::MAX, |&us| Duration::from_micros(us)),
                );
            }
        }
        Some(Duration::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_window_counts_only_what_happened_in_it() {
        let stats = Arc::new(BackendStats::new("r1", "127.0.0.1:1".parse().unwrap()));
        stats.record(200, Duration::from_micros(80));
        let before = stats.figures(1);
        for _ in 0..98 {
            stats.record(200, Duration::from_micros(900));
        }
        stats.record(503, Duration::from_millis(40));
        stats.record(200, Duration::from_secs(2));
        let window = Window::between(Some(&before), &stats.figures(1));
        assert_eq!(window.requests, 100);
        assert_eq!(window.errors, 1);
        assert!((window.error_ratio() - 0.01).abs() < 1e-9);
        assert_eq!(window.quantile(0.5), Some(Duration::from_millis(1)));
        assert_eq!(window.quantile(0.99), Some(Duration::from_millis(50)));
        assert_eq!(window.quantile(1.0), Some(Duration::from_micros(2_500_000)));
        assert_eq!(Window::default().quantile(0.99), None);
    }

    #[test]
    fn guards_count_in_flight_and_pinned_until_dropped() {
        let stats = Arc::new(BackendStats::new("r1", "127.0.0.1:1".parse().unwrap()));
        let mut request = stats.begin();
        let pinned = stats.pin();
        assert!(!stats.idle());
        request.status(204);
        drop(request);
        assert_eq!(stats.figures(1).responses, [0, 1, 0, 0, 0]);
        assert!(!stats.idle());
        drop(pinned);
        assert!(stats.idle());
    }
}

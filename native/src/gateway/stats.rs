//! The gateway's counters, read by Python for the Prometheus export (today's metric names).
//! Atomics only on the request path; per-tenant request counts (for the load reports that
//! drive hot-tenant growth) under a short mutex.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use super::grpc::Code;
use crate::resolve::Via;

/// Upper bounds (seconds) of the latency histogram's buckets, as the Python router's.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.0, 5.0,
];

#[derive(Default)]
pub struct Stats {
    pub requests: [AtomicU64; 17],
    /// Per bucket (not cumulative), the last one is +Inf.
    latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_ns: AtomicU64,
    pub retries: AtomicU64,
    pub resolved: [AtomicU64; 4],
    pub shadow_sent: AtomicU64,
    pub shadow_dropped: AtomicU64,
    pub quota_queued: AtomicU64,
    pub quota_refused: AtomicU64,
    pub in_flight: AtomicI64,
    load: Mutex<HashMap<String, u64>>,
    /// Per model (`tenant/name`) and version, for ModelStatistics. Only models that resolved
    /// get an entry, so the map is bounded by the registered models.
    models: Mutex<HashMap<String, HashMap<u64, ModelStat>>>,
}

/// The gateway's counters of one model version (Triton's ModelStatistics, as the gateway
/// sees it: every request is one inference and one execution).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ModelStat {
    pub success: (u64, u64),
    pub fail: (u64, u64),
    /// Milliseconds since the epoch of the last request's end (0: never).
    pub last_ms: u64,
}

pub fn via_index(via: Via<'_>) -> usize {
    match via {
        Via::Pinned => 0,
        Via::Alias(_) => 1,
        Via::Traffic => 2,
        Via::Latest => 3,
    }
}

pub const VIA_NAMES: [&str; 4] = ["pinned", "alias", "traffic", "latest"];

/// A point-in-time copy of the counters.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub requests: Vec<(&'static str, u64)>,
    /// Cumulative counts per upper bound, the last for +Inf.
    pub latency_buckets: Vec<(f64, u64)>,
    pub latency_sum: f64,
    pub latency_count: u64,
    pub retries: u64,
    pub resolved: Vec<(&'static str, u64)>,
    pub shadow_sent: u64,
    pub shadow_dropped: u64,
    pub quota_queued: u64,
    pub quota_refused: u64,
    pub in_flight: i64,
}

impl Stats {
    pub fn request(&self, code: Code, seconds: f64) {
        self.requests[code as usize].fetch_add(1, Ordering::Relaxed);
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency[i].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_ns
            .fetch_add((seconds.max(0.0) * 1e9) as u64, Ordering::Relaxed);
    }

    pub fn resolved(&self, via: Via<'_>) {
        self.resolved[via_index(via)].fetch_add(1, Ordering::Relaxed);
    }

    /// One request to `model` (`tenant/name`) `version` ended, after `ns` nanoseconds.
    pub fn model_request(&self, model: &str, version: u64, ok: bool, ns: u64) {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut models = self.models.lock().unwrap_or_else(|p| p.into_inner());
        let versions = match models.get_mut(model) {
            Some(v) => v,
            None => models.entry(model.to_string()).or_default(),
        };
        let stat = versions.entry(version).or_default();
        let slot = if ok {
            &mut stat.success
        } else {
            &mut stat.fail
        };
        slot.0 += 1;
        slot.1 = slot.1.saturating_add(ns);
        stat.last_ms = now_ms;
    }

    /// The counters of `model` `version` (zero when it has had no request here).
    pub fn model_stat(&self, model: &str, version: u64) -> ModelStat {
        let models = self.models.lock().unwrap_or_else(|p| p.into_inner());
        models
            .get(model)
            .and_then(|v| v.get(&version))
            .copied()
            .unwrap_or_default()
    }

    pub fn count_tenant(&self, tenant: &str) {
        let mut load = self.load.lock().unwrap_or_else(|p| p.into_inner());
        match load.get_mut(tenant) {
            Some(n) => *n += 1,
            None => {
                load.insert(tenant.to_string(), 1);
            }
        }
    }

    /// Requests per tenant since the last call (the load reporter's window).
    pub fn take_load(&self) -> HashMap<String, u64> {
        std::mem::take(&mut *self.load.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn snapshot(&self) -> Snapshot {
        let mut cumulative = 0;
        let mut latency_buckets = Vec::with_capacity(self.latency.len());
        for (i, n) in self.latency.iter().enumerate() {
            cumulative += n.load(Ordering::Relaxed);
            let bound = LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY);
            latency_buckets.push((bound, cumulative));
        }
        Snapshot {
            requests: Code::ALL
                .iter()
                .map(|c| (c.name(), self.requests[*c as usize].load(Ordering::Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            latency_buckets,
            latency_sum: self.latency_sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            latency_count: cumulative,
            retries: self.retries.load(Ordering::Relaxed),
            resolved: VIA_NAMES
                .iter()
                .zip(&self.resolved)
                .map(|(n, c)| (*n, c.load(Ordering::Relaxed)))
                .filter(|(_, n)| *n > 0)
                .collect(),
            shadow_sent: self.shadow_sent.load(Ordering::Relaxed),
            shadow_dropped: self.shadow_dropped.load(Ordering::Relaxed),
            quota_queued: self.quota_queued.load(Ordering::Relaxed),
            quota_refused: self.quota_refused.load(Ordering::Relaxed),
            in_flight: self.in_flight.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_fall_in_cumulative_buckets() {
        let s = Stats::default();
        s.request(Code::Ok, 0.0003);
        s.request(Code::Ok, 0.003);
        s.request(Code::NotFound, 10.0);
        let snap = s.snapshot();
        assert_eq!(snap.requests, vec![("OK", 2), ("NOT_FOUND", 1)]);
        assert_eq!(snap.latency_buckets[0], (0.0005, 1));
        assert_eq!(snap.latency_buckets[3], (0.004, 2));
        assert_eq!(
            snap.latency_buckets.last().copied(),
            Some((f64::INFINITY, 3))
        );
        assert_eq!(snap.latency_count, 3);
        assert!((snap.latency_sum - 10.0033).abs() < 1e-6);
    }

    #[test]
    fn load_windows_are_taken() {
        let s = Stats::default();
        s.count_tenant("a");
        s.count_tenant("a");
        s.count_tenant("b");
        let w = s.take_load();
        assert_eq!((w["a"], w["b"]), (2, 1));
        assert!(s.take_load().is_empty());
    }
}

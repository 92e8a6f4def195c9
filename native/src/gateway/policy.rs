//! Member choice: which shard member gets a request, and in which order to retry.
//!
//! `WarmPrimary` (the Python router's `WarmPrimaryPolicy`):
//!
//! * the primary of a model version is shard member `primary_index("tenant/name:version", k)`:
//!   every gateway sends the model to the same worker, which therefore holds it warm;
//! * when the primary has `spill_at` or more requests in flight from this gateway, the shard's
//!   members are tried least loaded first (a stable sort, the primary still among them);
//! * members that are down (no live lease, or draining) or ejected after a failure go last;
//!   the members past k (the ranked fallbacks) follow the shard.
//!
//! `Members` keeps per-worker state (in flight, consecutive failures, ejected until) across
//! table updates; `Ejector` semantics: ejected for `eject_s` after a failure, a success clears.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::clock::Clock;
use crate::shard::primary_index;

/// Per-worker state shared by every request of this gateway.
#[derive(Debug, Default)]
pub struct MemberState {
    in_flight: AtomicU32,
    failures: AtomicU32,
    /// f64 seconds (clock time) as bits; 0: not ejected.
    ejected_until: AtomicU64,
}

impl MemberState {
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

/// Counts a request in flight at a member while alive.
pub struct InFlight(Arc<MemberState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The states of every worker this gateway has talked to, by worker id.
pub struct Members {
    map: ArcSwap<HashMap<String, Arc<MemberState>>>,
    insert: Mutex<()>,
    clock: Arc<dyn Clock>,
    eject_s: f64,
    threshold: u32,
}

impl Members {
    pub fn new(clock: Arc<dyn Clock>, eject_s: f64) -> Members {
        Members {
            map: ArcSwap::from_pointee(HashMap::new()),
            insert: Mutex::new(()),
            clock,
            eject_s,
            threshold: 1,
        }
    }

    pub fn get(&self, worker_id: &str) -> Arc<MemberState> {
        if let Some(s) = self.map.load().get(worker_id) {
            return s.clone();
        }
        let _g = self.insert.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.map.load();
        if let Some(s) = current.get(worker_id) {
            return s.clone();
        }
        let state = Arc::new(MemberState::default());
        let mut next = HashMap::clone(&current);
        next.insert(worker_id.to_string(), state.clone());
        self.map.store(Arc::new(next));
        state
    }

    pub fn in_flight(&self, worker_id: &str) -> u32 {
        self.map.load().get(worker_id).map_or(0, |s| s.in_flight())
    }

    pub fn start(&self, state: &Arc<MemberState>) -> InFlight {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(state.clone())
    }

    pub fn failure(&self, state: &MemberState) {
        let n = state.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.threshold {
            let until = self.clock.now() + self.eject_s;
            state
                .ejected_until
                .store(until.to_bits(), Ordering::Relaxed);
        }
    }

    pub fn success(&self, state: &MemberState) {
        state.failures.store(0, Ordering::Relaxed);
        state.ejected_until.store(0, Ordering::Relaxed);
    }

    pub fn ejected(&self, worker_id: &str) -> bool {
        let Some(s) = self.map.load().get(worker_id).cloned() else {
            return false;
        };
        let bits = s.ejected_until.load(Ordering::Relaxed);
        bits != 0 && self.clock.now() < f64::from_bits(bits)
    }
}

/// Candidates best first (indices into `ranked`'s member list), see the module doc.
///
/// `ranked` is the tenant's selection order (the first `k` are its shard); `in_flight` and
/// `unhealthy` describe members by their index in the pool.
pub fn choose(
    ranked: &[usize],
    k: usize,
    model_key: &str,
    spill_at: u32,
    in_flight: impl Fn(usize) -> u32,
    unhealthy: impl Fn(usize) -> bool,
) -> Vec<usize> {
    let k = k.min(ranked.len());
    if k == 0 {
        return Vec::new();
    }
    let p = primary_index(model_key, k).unwrap_or(0);
    let mut ordered: Vec<usize> = (0..k).map(|i| ranked[(p + i) % k]).collect();
    if in_flight(ordered[0]) >= spill_at {
        ordered.sort_by_key(|&m| in_flight(m));
    }
    ordered.extend_from_slice(&ranked[k..]);
    let (mut healthy, sick): (Vec<usize>, Vec<usize>) =
        ordered.into_iter().partition(|&m| !unhealthy(m));
    healthy.extend(sick);
    healthy
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::clock::TokioClock;

    #[test]
    fn the_primary_comes_first_and_fallbacks_follow_the_shard() {
        let ranked = [4, 2, 7, 1, 0];
        let c = choose(&ranked, 3, "acme/churn:1", 8, |_| 0, |_| false);
        let p = primary_index("acme/churn:1", 3).unwrap();
        assert_eq!(c[0], ranked[p]);
        assert_eq!(&c[3..], &[1, 0]);
        let mut shard = c[..3].to_vec();
        shard.sort();
        assert_eq!(shard, vec![2, 4, 7]);
    }

    #[test]
    fn a_loaded_primary_spills_to_the_least_loaded_member() {
        let ranked = [0, 1, 2];
        let p = ranked[primary_index("m:1", 3).unwrap()];
        let load = |m: usize| if m == p { 8 } else { m as u32 };
        let c = choose(&ranked, 3, "m:1", 8, load, |_| false);
        assert_ne!(c[0], p);
        assert_eq!(*c.last().unwrap(), p);
        let under = |m: usize| if m == p { 7 } else { 0 };
        assert_eq!(choose(&ranked, 3, "m:1", 8, under, |_| false)[0], p);
    }

    #[test]
    fn unhealthy_members_go_last_in_order() {
        let ranked = [0, 1, 2, 3];
        let c = choose(
            &ranked,
            2,
            "m:1",
            8,
            |_| 0,
            |m| m == 3 || m == ranked[primary_index("m:1", 2).unwrap()],
        );
        assert!(c[..2].iter().all(|&m| m != 3));
        assert_eq!(c.len(), 4);
        assert_eq!(c[3], 3);
    }

    #[test]
    fn no_shard_means_no_candidates() {
        assert!(choose(&[], 2, "m:1", 8, |_| 0, |_| false).is_empty());
        assert!(choose(&[0, 1], 0, "m:1", 8, |_| 0, |_| false).is_empty());
    }

    proptest::proptest! {
        /// Every member appears exactly once; with nobody loaded or sick the primary is the
        /// same whatever the fallbacks, and it is a shard member.
        #[test]
        fn choice_is_a_permutation_with_a_stable_primary(
            n in 1usize..40, k in 1usize..8, version in 1u64..50,
            load in proptest::collection::vec(0u32..12, 40),
            sick in proptest::collection::vec(proptest::bool::ANY, 40),
        ) {
            let ranked: Vec<usize> = (0..n).rev().collect();
            let key = format!("acme/churn:{version}");
            let c = choose(&ranked, k, &key, 8, |m| load[m], |m| sick[m]);
            let mut sorted = c.clone();
            sorted.sort_unstable();
            let want: Vec<usize> = (0..n).collect();
            proptest::prop_assert_eq!(sorted, if k.min(n) == 0 { vec![] } else { want });
            let idle = choose(&ranked, k, &key, 8, |_| 0, |_| false);
            let primary = ranked[primary_index(&key, k.min(n)).unwrap()];
            proptest::prop_assert_eq!(idle[0], primary);
            // Healthy members always come before sick ones.
            let first_sick = c.iter().position(|&m| sick[m]).unwrap_or(c.len());
            proptest::prop_assert!(c[first_sick..].iter().all(|&m| sick[m]));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_ejects_for_a_while_and_a_success_clears() {
        let members = Members::new(Arc::new(TokioClock::new()), 5.0);
        let w = members.get("w1");
        members.failure(&w);
        assert!(members.ejected("w1"));
        tokio::time::advance(std::time::Duration::from_secs(6)).await;
        assert!(!members.ejected("w1"));
        members.failure(&w);
        assert!(members.ejected("w1"));
        members.success(&w);
        assert!(!members.ejected("w1"));
        assert!(!members.ejected("never-seen"));
        let guard = members.start(&w);
        assert_eq!(members.in_flight("w1"), 1);
        drop(guard);
        assert_eq!(members.in_flight("w1"), 0);
    }
}

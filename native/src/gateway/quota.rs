//! Per-tenant quotas: a request-rate limit and an in-flight cap, with a short, bounded
//! admission queue (the semantics and messages of the Python router's `router/quota.py`).
//!
//! Rate: a token bucket per tenant (`rate` tokens/s, burst `max(rate * burst_s, 1)`), refilled
//! lazily from the injected clock. A request that finds the bucket empty reserves the next
//! token (the bucket goes negative) and waits until it is due, provided it is due within
//! `queue_s` and before the request's deadline; otherwise it is refused without reserving.
//!
//! In flight: a FIFO `Slots` per tenant; a request over the cap waits in line (at most
//! `max_queued`) for what is left of its `queue_s` and its deadline.
//!
//! Refusals that a patient caller could only have learned by waiting are held for their queue
//! time (jittered over [t/2, t], at most `max_queued` held per tenant), so a client resending
//! on every answer is paced at its quota instead of spinning the gateway. A request whose
//! deadline is shorter than `queue_s` is refused at once. Limits of 0 mean unlimited; tenant
//! settings take precedence over the defaults.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::oneshot;

use super::clock::Clock;

/// RESOURCE_EXHAUSTED, with the reason for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct QuotaExceeded(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Granted,
    /// The waiting line is full: refused without waiting.
    Full,
    /// Waited the whole time without a slot.
    Timeout,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

struct SlotsInner {
    limit: u32,
    held: u32,
    max_waiting: usize,
    waiters: VecDeque<(u64, oneshot::Sender<()>)>,
    next_id: u64,
}

/// `limit` slots handed out first come, first served, with a bounded waiting line.
pub struct Slots {
    inner: Mutex<SlotsInner>,
}

impl Slots {
    pub fn new(limit: u32, max_waiting: usize) -> Slots {
        Slots {
            inner: Mutex::new(SlotsInner {
                limit: limit.max(1),
                held: 0,
                max_waiting,
                waiters: VecDeque::new(),
                next_id: 0,
            }),
        }
    }

    pub fn set_limit(&self, limit: u32) {
        lock(&self.inner).limit = limit.max(1);
    }

    pub fn held(&self) -> u32 {
        lock(&self.inner).held
    }

    /// Callers waiting in line.
    pub fn waiting(&self) -> usize {
        lock(&self.inner).waiters.len()
    }

    pub fn idle(&self) -> bool {
        let s = lock(&self.inner);
        s.held == 0 && s.waiters.is_empty()
    }

    pub fn try_acquire(&self) -> bool {
        let mut s = lock(&self.inner);
        if s.held < s.limit && s.waiters.is_empty() {
            s.held += 1;
            return true;
        }
        false
    }

    /// A slot, or why not, waiting at most `timeout`. A waiter dropped while waiting leaves
    /// the line, and passes on a slot handed to it at that moment: no slot leaks.
    pub async fn acquire(&self, timeout: Duration) -> Admission {
        let (id, rx) = {
            let mut s = lock(&self.inner);
            if s.held < s.limit && s.waiters.is_empty() {
                s.held += 1;
                return Admission::Granted;
            }
            if s.waiters.len() >= s.max_waiting {
                return Admission::Full;
            }
            if timeout.is_zero() {
                return Admission::Timeout;
            }
            let (tx, rx) = oneshot::channel();
            let id = s.next_id;
            s.next_id += 1;
            s.waiters.push_back((id, tx));
            (id, rx)
        };
        let mut wait = Waiting {
            slots: self,
            id,
            rx: Some(rx),
        };
        let granted = match wait.rx.as_mut() {
            Some(rx) => matches!(tokio::time::timeout(timeout, rx).await, Ok(Ok(()))),
            None => false,
        };
        if granted {
            wait.rx = None;
            return Admission::Granted;
        }
        if wait.leave() {
            Admission::Granted // handed over just as the wait ran out
        } else {
            Admission::Timeout
        }
    }

    /// Free a slot: hand it to the oldest live waiter, or return it.
    pub fn release(&self) {
        let mut s = lock(&self.inner);
        Self::release_locked(&mut s);
    }

    fn release_locked(s: &mut SlotsInner) {
        while let Some((_, tx)) = s.waiters.pop_front() {
            if tx.send(()).is_ok() {
                return;
            }
        }
        s.held = s.held.saturating_sub(1);
    }
}

/// A place in the line; leaving it (or being dropped) never loses a slot.
struct Waiting<'a> {
    slots: &'a Slots,
    id: u64,
    rx: Option<oneshot::Receiver<()>>,
}

impl Waiting<'_> {
    /// Leave the line; true when a slot had already been handed over (it is now ours).
    fn leave(&mut self) -> bool {
        let Some(mut rx) = self.rx.take() else {
            return false;
        };
        let mut s = lock(&self.slots.inner);
        if rx.try_recv().is_ok() {
            return true;
        }
        let id = self.id;
        s.waiters.retain(|(w, _)| *w != id);
        false
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.rx.is_some() && self.leave() {
            // Cancelled after a slot was handed to us: pass it on.
            self.slots.release();
        }
    }
}

struct Bucket {
    tokens: f64,
    updated: f64,
}

#[derive(Default)]
struct TenantState {
    bucket: Option<Bucket>,
    slots: Option<Arc<Slots>>,
    holding: usize,
}

/// Defaults of the quotas (the router's `tenant_*` settings).
#[derive(Debug, Clone, Copy)]
pub struct QuotaSettings {
    pub default_rate: f64,
    pub default_in_flight: u32,
    pub burst_s: f64,
    pub queue_s: f64,
    pub max_queued: usize,
}

pub struct Quotas {
    clock: Arc<dyn Clock>,
    settings: QuotaSettings,
    tenants: Mutex<HashMap<String, TenantState>>,
    rng: Mutex<SmallRng>,
}

/// An admitted request; its in-flight slot (if it took one) is given back when dropped.
pub struct Admitted<'a> {
    quotas: &'a Quotas,
    tenant: String,
    slots: Option<Arc<Slots>>,
    /// It waited in the admission queue.
    pub queued: bool,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if let Some(slots) = self.slots.take() {
            slots.release();
            if slots.idle() {
                self.quotas.forget_idle(&self.tenant, &slots);
            }
        }
    }
}

/// Gives the reserved token back if the waiting request is dropped (its caller went away).
struct Refund<'a> {
    quotas: &'a Quotas,
    tenant: &'a str,
    armed: bool,
}

impl Drop for Refund<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Some(b) = lock(&self.quotas.tenants)
                .get_mut(self.tenant)
                .and_then(|t| t.bucket.as_mut())
            {
                b.tokens += 1.0;
            }
        }
    }
}

struct Holding<'a> {
    quotas: &'a Quotas,
    tenant: &'a str,
}

impl Drop for Holding<'_> {
    fn drop(&mut self) {
        let mut tenants = lock(&self.quotas.tenants);
        if let Some(t) = tenants.get_mut(self.tenant) {
            t.holding = t.holding.saturating_sub(1);
        }
    }
}

impl Quotas {
    pub fn new(clock: Arc<dyn Clock>, settings: QuotaSettings, seed: u64) -> Quotas {
        let rng = if seed == 0 {
            SmallRng::from_os_rng()
        } else {
            SmallRng::seed_from_u64(seed)
        };
        Quotas {
            clock,
            settings: QuotaSettings {
                queue_s: settings.queue_s.max(0.0),
                ..settings
            },
            tenants: Mutex::new(HashMap::new()),
            rng: Mutex::new(rng),
        }
    }

    /// Admit one request of `tenant`, waiting at most `queue_s` and never past `timeout`
    /// seconds, or refuse it. `rate` / `max_in_flight` are the tenant's own (0: defaults).
    pub async fn admit(
        &self,
        tenant: &str,
        rate: f64,
        max_in_flight: u32,
        timeout: Option<f64>,
    ) -> Result<Admitted<'_>, QuotaExceeded> {
        let s = self.settings;
        let rate = if rate > 0.0 { rate } else { s.default_rate };
        let cap = if max_in_flight > 0 {
            max_in_flight
        } else {
            s.default_in_flight
        };
        let mut admitted = Admitted {
            quotas: self,
            tenant: tenant.to_string(),
            slots: None,
            queued: false,
        };
        if rate <= 0.0 && cap == 0 {
            return Ok(admitted);
        }
        let budget = match timeout {
            None => s.queue_s,
            Some(t) => s.queue_s.min(t.max(0.0)),
        };
        let patient = budget >= s.queue_s && s.queue_s > 0.0;
        let slots = if cap > 0 {
            let slots = {
                let mut tenants = lock(&self.tenants);
                let t = tenants.entry(tenant.to_string()).or_default();
                t.slots
                    .get_or_insert_with(|| Arc::new(Slots::new(cap, s.max_queued)))
                    .clone()
            };
            slots.set_limit(cap);
            if budget <= 0.0 && slots.held() >= cap {
                return Err(QuotaExceeded(in_flight_message(tenant, cap, None)));
            }
            Some(slots)
        } else {
            None
        };
        let mut waited = 0.0;
        if rate > 0.0 {
            match self.take_token(tenant, rate, budget) {
                Ok(w) => waited = w,
                Err(message) => {
                    if let Some(sl) = &slots {
                        if sl.idle() {
                            self.forget_idle(tenant, sl);
                        }
                    }
                    return Err(self
                        .refuse(tenant, message, if patient { budget } else { 0.0 })
                        .await);
                }
            }
            if waited > 0.0 {
                let mut refund = Refund {
                    quotas: self,
                    tenant,
                    armed: true,
                };
                tokio::time::sleep(Duration::from_secs_f64(waited)).await;
                refund.armed = false;
                admitted.queued = true;
            }
        }
        if let Some(sl) = slots {
            if !sl.try_acquire() {
                let left = budget - waited;
                let outcome = if left > 0.0 {
                    sl.acquire(Duration::from_secs_f64(left)).await
                } else {
                    Admission::Timeout
                };
                if outcome != Admission::Granted {
                    if sl.idle() {
                        self.forget_idle(tenant, &sl);
                    }
                    let hold = if patient && outcome == Admission::Full {
                        left
                    } else {
                        0.0
                    };
                    let message = in_flight_message(tenant, cap, Some(outcome));
                    return Err(self.refuse(tenant, message, hold).await);
                }
                admitted.queued = true;
            }
            admitted.slots = Some(sl);
        }
        Ok(admitted)
    }

    /// Take (or reserve) one token: seconds until it is due, or the refusal's message.
    fn take_token(&self, tenant: &str, rate: f64, budget: f64) -> Result<f64, String> {
        let burst = (rate * self.settings.burst_s).max(1.0);
        let now = self.clock.now();
        let mut tenants = lock(&self.tenants);
        let t = tenants.entry(tenant.to_string()).or_default();
        let b = t.bucket.get_or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        b.tokens = burst.min(b.tokens + (now - b.updated) * rate);
        b.updated = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(0.0);
        }
        let wait = (1.0 - b.tokens) / rate;
        if wait > budget {
            return Err(format!(
                "tenant {tenant} is over its rate limit of {} requests/s (the next slot is {:.0} \
                 ms away, beyond the {:.0} ms this request may wait)",
                crate::pyfmt::g(rate),
                wait * 1000.0,
                budget * 1000.0
            ));
        }
        b.tokens -= 1.0;
        Ok(wait)
    }

    /// The refusal, held first for up to `hold` seconds (jittered) unless the tenant already
    /// has `max_queued` refusals held.
    async fn refuse(&self, tenant: &str, mut message: String, hold: f64) -> QuotaExceeded {
        let take = {
            let mut tenants = lock(&self.tenants);
            let t = tenants.entry(tenant.to_string()).or_default();
            if hold > 0.0 && t.holding < self.settings.max_queued {
                t.holding += 1;
                true
            } else {
                false
            }
        };
        if take {
            let _holding = Holding {
                quotas: self,
                tenant,
            };
            // Spread over [hold/2, hold]: refusals released together would come back as one
            // burst, every round.
            let hold = hold * (0.5 + 0.5 * lock(&self.rng).random::<f64>());
            tokio::time::sleep(Duration::from_secs_f64(hold)).await;
            message.push_str(&format!("; refused after waiting {:.0} ms", hold * 1000.0));
        }
        QuotaExceeded(message)
    }

    fn forget_idle(&self, tenant: &str, slots: &Arc<Slots>) {
        let mut tenants = lock(&self.tenants);
        if let Some(t) = tenants.get_mut(tenant) {
            if t.slots.as_ref().is_some_and(|s| Arc::ptr_eq(s, slots)) && slots.idle() {
                t.slots = None;
            }
        }
    }

    /// Tenants with quota state (tests: idle tenants cost nothing).
    pub fn tracked_slots(&self) -> usize {
        lock(&self.tenants)
            .values()
            .filter(|t| t.slots.is_some())
            .count()
    }
}

fn in_flight_message(tenant: &str, cap: u32, outcome: Option<Admission>) -> String {
    let why = match outcome {
        Some(Admission::Full) => "; its admission queue is full",
        Some(Admission::Timeout) => "; none finished within the time this request may wait",
        _ => "",
    };
    format!("tenant {tenant} has {cap} requests in flight (its limit){why}")
}

#[cfg(test)]
#[path = "quota_tests.rs"]
mod tests;

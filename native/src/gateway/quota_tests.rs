//! Quota tests on tokio's paused clock (the Python router's tests/router/test_quota.py, ported).
use super::*;
use crate::gateway::clock::TokioClock;
use std::sync::Mutex;

fn with(settings: QuotaSettings) -> Quotas {
    Quotas::new(Arc::new(TokioClock::new()), settings, 1)
}

fn defaults() -> QuotaSettings {
    QuotaSettings {
        default_rate: 0.0,
        default_in_flight: 0,
        burst_s: 1.0,
        queue_s: 0.0,
        max_queued: 256,
    }
}

fn quotas(queue_s: f64, max_queued: usize) -> Quotas {
    Quotas::new(
        Arc::new(TokioClock::new()),
        QuotaSettings {
            default_rate: 0.0,
            default_in_flight: 0,
            burst_s: 1.0,
            queue_s,
            max_queued,
        },
        1,
    )
}

#[tokio::test(start_paused = true)]
async fn unlimited_tenants_pass_and_leave_no_state() {
    let q = quotas(0.5, 8);
    let a = q.admit("acme", 0.0, 0, Some(1.0)).await.unwrap();
    assert!(!a.queued);
    drop(a);
    assert_eq!(q.tracked_slots(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_rate_limit_refuses_impatient_callers_at_once_naming_the_limit() {
    let q = quotas(0.0, 8);
    for _ in 0..2 {
        q.admit("acme", 2.0, 0, Some(5.0)).await.unwrap();
    }
    let start = tokio::time::Instant::now();
    let err = q.admit("acme", 2.0, 0, Some(5.0)).await.err().unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(
        err.0,
        "tenant acme is over its rate limit of 2 requests/s (the next slot is 500 ms away, \
         beyond the 0 ms this request may wait)"
    );
    // Another tenant is not affected.
    q.admit("globex", 2.0, 0, Some(5.0)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn patient_requests_are_paced_at_the_rate() {
    let q = quotas(1.0, 8);
    let start = tokio::time::Instant::now();
    let mut at = Vec::new();
    for _ in 0..4 {
        let a = q.admit("acme", 4.0, 0, Some(10.0)).await.unwrap();
        at.push((start.elapsed().as_secs_f64(), a.queued));
    }
    // Burst of 4 (rate x 1 s), then one token every 250 ms.
    assert!(at.iter().all(|(t, queued)| *t == 0.0 && !queued), "{at:?}");
    let a = q.admit("acme", 4.0, 0, Some(10.0)).await.unwrap();
    assert!(a.queued);
    assert!((start.elapsed().as_secs_f64() - 0.25).abs() < 1e-6);
    q.admit("acme", 4.0, 0, Some(10.0)).await.unwrap();
    assert!((start.elapsed().as_secs_f64() - 0.5).abs() < 1e-6);
}

#[tokio::test(start_paused = true)]
async fn a_certain_refusal_is_held_for_a_patient_caller() {
    let q = quotas(0.5, 8);
    q.admit("acme", 1.0, 0, Some(10.0)).await.unwrap(); // the burst of 1
    q.admit("acme", 1.0, 0, Some(10.0)).await.err().unwrap(); // 1 s away > 0.5 s
    let start = tokio::time::Instant::now();
    let err = q.admit("acme", 1.0, 0, Some(10.0)).await.err().unwrap();
    let held = start.elapsed().as_secs_f64();
    assert!((0.25..=0.5).contains(&held), "held {held}");
    assert!(err.0.contains("; refused after waiting"), "{}", err.0);
    // A caller in a hurry (deadline below the queue time) is refused at once.
    let start = tokio::time::Instant::now();
    q.admit("acme", 1.0, 0, Some(0.1)).await.err().unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn in_flight_cap_queues_fifo_then_refuses() {
    let q = Arc::new(quotas(0.5, 1));
    let first = q.admit("acme", 0.0, 1, Some(10.0)).await.unwrap();
    // The second waits in line; the third finds the line full.
    let q2 = q.clone();
    let second = tokio::spawn(async move {
        let a = q2.admit("acme", 0.0, 1, Some(10.0)).await.map(|a| a.queued);
        tokio::time::sleep(Duration::from_millis(1)).await;
        a
    });
    tokio::task::yield_now().await;
    let full = q.admit("acme", 0.0, 1, Some(10.0)).await.err().unwrap();
    assert!(
        full.0.starts_with(
            "tenant acme has 1 requests in flight (its limit); its admission queue is full"
        ),
        "{}",
        full.0
    );
    drop(first);
    assert_eq!(second.await.unwrap(), Ok(true));
    // Nobody in flight any more: the tenant's state is gone.
    tokio::task::yield_now().await;
    assert_eq!(q.tracked_slots(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_wait_that_runs_out_times_out_and_leaks_nothing() {
    let q = quotas(0.2, 4);
    let first = q.admit("acme", 0.0, 1, Some(10.0)).await.unwrap();
    let start = tokio::time::Instant::now();
    let err = q.admit("acme", 0.0, 1, Some(10.0)).await.err().unwrap();
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert!(err
        .0
        .contains("none finished within the time this request may wait"));
    drop(first);
    assert_eq!(q.tracked_slots(), 0);
    // With nothing held, the next request goes at once.
    q.admit("acme", 0.0, 1, Some(10.0)).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_waiter_passes_its_slot_on() {
    let slots = Arc::new(Slots::new(1, 8));
    assert!(slots.try_acquire());
    let s2 = slots.clone();
    let waiter = tokio::spawn(async move { s2.acquire(Duration::from_secs(5)).await });
    tokio::task::yield_now().await;
    waiter.abort();
    let _ = waiter.await;
    slots.release();
    assert!(slots.idle());
    assert!(slots.try_acquire());
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_rate_wait_gives_its_token_back() {
    let q = Arc::new(quotas(1.0, 8));
    q.admit("acme", 2.0, 0, Some(10.0)).await.unwrap();
    q.admit("acme", 2.0, 0, Some(10.0)).await.unwrap();
    let q2 = q.clone();
    let waiter = tokio::spawn(async move { q2.admit("acme", 2.0, 0, Some(10.0)).await.is_ok() });
    tokio::task::yield_now().await;
    waiter.abort();
    let _ = waiter.await;
    // The reserved token came back: the next one is due in 500 ms, not 1 s.
    let start = tokio::time::Instant::now();
    q.admit("acme", 2.0, 0, Some(10.0)).await.unwrap();
    assert!((start.elapsed().as_secs_f64() - 0.5).abs() < 1e-6);
}

#[tokio::test(start_paused = true)]
async fn the_rate_limit_refills_with_time_and_isolates_tenants() {
    let q = with(QuotaSettings {
        default_rate: 10.0,
        ..defaults()
    });
    for _ in 0..10 {
        q.admit("flood", 0.0, 0, None).await.unwrap(); // a burst of one second's worth
    }
    let err = q.admit("flood", 0.0, 0, None).await.err().unwrap();
    assert!(err.0.contains("rate limit of 10 requests/s"), "{}", err.0);
    q.admit("steady", 0.0, 0, None).await.unwrap(); // another tenant is untouched
    tokio::time::advance(Duration::from_millis(500)).await; // half a second refills five
    for _ in 0..5 {
        q.admit("flood", 0.0, 0, None).await.unwrap();
    }
    assert!(q.admit("flood", 0.0, 0, None).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn the_in_flight_cap_and_a_tenants_own_limit() {
    let q = with(QuotaSettings {
        default_in_flight: 2,
        ..defaults()
    });
    let a = q.admit("t", 0.0, 0, None).await.unwrap();
    let _b = q.admit("t", 0.0, 0, None).await.unwrap();
    let err = q.admit("t", 0.0, 0, None).await.err().unwrap();
    assert!(err.0.contains("2 requests in flight"), "{}", err.0);
    drop(a);
    let _c = q.admit("t", 0.0, 0, None).await.unwrap();
    let mut vip = Vec::new();
    for _ in 0..3 {
        // Its own limit is above the default.
        vip.push(q.admit("vip", 0.0, 5, None).await.unwrap());
    }
}

#[tokio::test(start_paused = true)]
async fn over_rate_requests_reserve_their_turn_within_the_queue_time() {
    let q = Arc::new(with(QuotaSettings {
        default_rate: 10.0,
        queue_s: 0.5,
        ..defaults()
    }));
    for _ in 0..10 {
        q.admit("t", 0.0, 0, None).await.unwrap();
    }
    let mut waiters = Vec::new();
    for _ in 0..5 {
        let q = q.clone();
        waiters.push(tokio::spawn(async move {
            q.admit("t", 0.0, 0, None).await.map(|a| a.queued)
        }));
    }
    tokio::task::yield_now().await; // each has reserved its token (due in 0.1 .. 0.5 s)
    let err = q.admit("t", 0.0, 0, Some(0.5)).await.err().unwrap();
    assert!(
        err.0.contains("600 ms away, beyond the 500 ms"),
        "{}",
        err.0
    );
    for w in waiters {
        assert_eq!(w.await.unwrap(), Ok(true)); // every queued request was admitted
    }
}

#[tokio::test(start_paused = true)]
async fn a_deadline_shorter_than_the_wait_is_refused_at_once_reserving_nothing() {
    let q = with(QuotaSettings {
        default_rate: 1.0,
        queue_s: 10.0,
        ..defaults()
    });
    q.admit("t", 0.0, 0, None).await.unwrap();
    let err = q.admit("t", 0.0, 0, Some(0.05)).await.err().unwrap();
    assert!(
        err.0.contains("beyond the 50 ms this request may wait"),
        "{}",
        err.0
    );
    // Nothing was reserved for the refused request: a later caller waits one token, not two.
    let err = q.admit("t", 0.0, 0, Some(0.5)).await.err().unwrap();
    assert!(err.0.contains("1000 ms away"), "{}", err.0);
}

#[tokio::test(start_paused = true)]
async fn in_flight_waiters_get_freed_slots_in_order_and_the_line_is_bounded() {
    let q = Arc::new(with(QuotaSettings {
        default_in_flight: 1,
        queue_s: 5.0,
        max_queued: 2,
        ..defaults()
    }));
    let held = q.admit("t", 0.0, 0, None).await.unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for n in 0..2 {
        let (q, order) = (q.clone(), order.clone());
        waiters.push(tokio::spawn(async move {
            let a = q.admit("t", 0.0, 0, None).await;
            order.lock().unwrap().push(n);
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(a);
        }));
        tokio::task::yield_now().await;
    }
    // A deadline shorter than the queue time: refused at once, the line being full.
    let err = q.admit("t", 0.0, 0, Some(1.0)).await.err().unwrap();
    assert!(err.0.contains("admission queue is full"), "{}", err.0);
    q.admit("other", 0.0, 0, None).await.unwrap(); // another tenant is not held up
    drop(held);
    for w in waiters {
        w.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1]); // the oldest waiter went first
}

#[tokio::test(start_paused = true)]
async fn certain_refusals_are_held_up_to_max_queued_at_a_time() {
    let q = Arc::new(with(QuotaSettings {
        default_rate: 10.0,
        queue_s: 0.2,
        max_queued: 1,
        ..defaults()
    }));
    for _ in 0..10 {
        q.admit("t", 0.0, 0, None).await.unwrap();
    }
    let mut queued = Vec::new();
    for _ in 0..2 {
        let q = q.clone();
        queued.push(tokio::spawn(async move {
            q.admit("t", 0.0, 0, None).await.is_ok()
        }));
    }
    tokio::task::yield_now().await;
    let q2 = q.clone();
    // Due in 0.3 s, beyond 0.2: held (jittered 100-200 ms), then refused.
    let held = tokio::spawn(async move { q2.admit("t", 0.0, 0, None).await.err() });
    tokio::task::yield_now().await;
    let start = tokio::time::Instant::now();
    let now = q.admit("t", 0.0, 0, None).await.err().unwrap();
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "one answer is already held: this one is not"
    );
    assert!(
        now.0.ends_with("200 ms this request may wait)"),
        "{}",
        now.0
    );
    let held = held.await.unwrap().unwrap();
    assert!(
        held.0.contains("; refused after waiting 1")
            || held.0.contains("; refused after waiting 200 ms"),
        "{}",
        held.0
    );
    for w in queued {
        assert!(w.await.unwrap());
    }
}

#[tokio::test(start_paused = true)]
async fn a_refusal_on_the_cap_spends_no_token() {
    // Two tokens (rate 1, burst 2 s), one slot, no queue.
    let q = with(QuotaSettings {
        default_rate: 1.0,
        default_in_flight: 1,
        burst_s: 2.0,
        ..defaults()
    });
    let a = q.admit("t", 0.0, 0, None).await.unwrap();
    let err = q.admit("t", 0.0, 0, None).await.err().unwrap();
    assert!(err.0.contains("in flight"), "{}", err.0);
    drop(a);
    drop(q.admit("t", 0.0, 0, None).await.unwrap()); // the second token is still there
    let err = q.admit("t", 0.0, 0, None).await.err().unwrap();
    assert!(err.0.contains("rate limit"), "{}", err.0);
}

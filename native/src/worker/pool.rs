//! Prediction threads: runtime calls leave the async runtime for threads of their own,
//! bounded as the Python worker bounds them (`worker/calls.py`):
//!
//! * **Gate.** At most `capacity` calls run at once; more wait in FIFO order. The pool has
//!   `capacity + headroom` threads: a call abandoned as stuck keeps its thread (a thread in a
//!   C library cannot be stopped) and a spare one takes its place, so up to `headroom` hung
//!   calls cost the healthy ones nothing. When no thread is free at all, a call that cannot
//!   start within the timeout is withdrawn: UNAVAILABLE (the router tries another worker).
//! * **Deadline.** A call whose caller's deadline has passed when it would start (waiting at
//!   the gate, or queued for a thread) is not run: DEADLINE_EXCEEDED.
//! * **Timeout.** Once submitted, the caller waits at most `timeout`; then the call is
//!   abandoned: the caller is told (its model is quarantined by the owner), the gate slot is
//!   freed, and the call counts as stuck until its thread returns.
//! * **Cancellation.** A caller that goes away withdraws a call not yet started; a call already
//!   running finishes on its thread and holds its gate slot until then.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::gateway::quota::{Admission, Slots};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why a call did not give its result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// Not run: the deadline passed first (the message says where it waited).
    #[error("{0}")]
    Expired(String),
    /// Not run: no thread became free within the timeout.
    #[error("{0}")]
    NoThread(String),
    /// Started, and still running after the timeout: left on its thread.
    #[error("{0}")]
    Abandoned(String),
    /// The call panicked (a bug: reported, the thread lives on).
    #[error("{0}")]
    Panicked(String),
    /// The pool is shut down.
    #[error("the prediction pool is shut down")]
    Closed,
}

const QUEUED: u8 = 0;
const STARTED: u8 = 1;
const WITHDRAWN: u8 = 2;
const ABANDONED: u8 = 3;

type Job = Box<dyn FnOnce() + Send + 'static>;

struct Queue {
    jobs: VecDeque<Job>,
    closed: bool,
}

struct Inner {
    queue: Mutex<Queue>,
    ready: Condvar,
    gate: Slots,
    stuck: Mutex<HashMap<String, u32>>,
    stuck_total: AtomicU64,
    abandoned_total: AtomicU64,
}

/// Threads for runtime calls (see the module docstring).
pub struct Pool {
    inner: Arc<Inner>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    pub capacity: usize,
    pub timeout: Duration,
    kind: &'static str,
}

impl Pool {
    /// `capacity` calls at once on `capacity + headroom` threads named `name-N`.
    pub fn new(
        kind: &'static str,
        capacity: usize,
        headroom: usize,
        timeout: Duration,
    ) -> std::io::Result<Pool> {
        let capacity = capacity.max(1);
        let inner = Arc::new(Inner {
            queue: Mutex::new(Queue {
                jobs: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
            gate: Slots::new(capacity as u32, usize::MAX),
            stuck: Mutex::new(HashMap::new()),
            stuck_total: AtomicU64::new(0),
            abandoned_total: AtomicU64::new(0),
        });
        let mut threads = Vec::new();
        for i in 0..capacity + headroom {
            let inner = inner.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("shoal-{kind}-{i}"))
                    .spawn(move || work(&inner))?,
            );
        }
        Ok(Pool {
            inner,
            threads: Mutex::new(threads),
            capacity,
            timeout,
            kind,
        })
    }

    /// Calls holding the gate (running or about to; abandoned ones excluded).
    pub fn running(&self) -> u32 {
        self.inner.gate.held()
    }

    /// Abandoned calls whose threads have not returned.
    pub fn stuck_total(&self) -> u64 {
        self.inner.stuck_total.load(Ordering::Acquire)
    }

    pub fn abandoned_total(&self) -> u64 {
        self.inner.abandoned_total.load(Ordering::Acquire)
    }

    /// Abandoned calls of `key` still on their threads.
    pub fn stuck(&self, key: &str) -> u32 {
        lock(&self.inner.stuck).get(key).copied().unwrap_or(0)
    }

    /// `f()` on a pool thread, bounded as the module docstring says. `deadline` is the
    /// caller's (None: none).
    pub async fn run<T, F>(&self, key: &str, f: F, deadline: Option<Instant>) -> Result<T, RunError>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let kind = self.kind;
        let inner = &self.inner;
        if !inner.gate.try_acquire() {
            let wait = deadline.map_or(Duration::MAX, |d| {
                d.saturating_duration_since(Instant::now())
            });
            if inner.gate.acquire(wait).await != Admission::Granted {
                return Err(RunError::Expired(format!(
                    "deadline passed while {key} waited for a {kind} thread; not run"
                )));
            }
        }
        // From here the gate slot is ours until the job says otherwise (`Slot`).
        let slot = Slot {
            inner: inner.clone(),
            armed: true,
        };
        let state = Arc::new(AtomicU8::new(QUEUED));
        let (tx, rx) = oneshot::channel::<Result<T, RunError>>();
        let submitted = Instant::now();
        let job_state = state.clone();
        let job_inner = inner.clone();
        let job_key = key.to_string();
        let job: Job = Box::new(move || {
            if job_state
                .compare_exchange(QUEUED, STARTED, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                return; // withdrawn before it started: its owner freed the gate slot
            }
            if deadline.is_some_and(|d| Instant::now() > d) {
                let waited = submitted.elapsed().as_millis();
                // The slot first: whoever is told may call again at once.
                job_inner.gate.release();
                let _ = tx.send(Err(RunError::Expired(format!(
                    "deadline passed while {job_key} was queued for a {kind} thread \
                     ({waited} ms); not run"
                ))));
                return;
            }
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
                let what = p
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| p.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                RunError::Panicked(format!("{kind} of {job_key} panicked: {what}"))
            });
            // Abandoned (the caller stopped waiting after the timeout): the slot was freed
            // then; only the stuck count is ours to settle.
            if job_state.swap(WITHDRAWN, Ordering::AcqRel) == STARTED {
                job_inner.gate.release();
                let _ = tx.send(out);
            } else {
                unstick(&job_inner, &job_key);
            }
        });
        {
            let mut q = lock(&inner.queue);
            if q.closed {
                return Err(RunError::Closed);
            }
            q.jobs.push_back(job);
        }
        inner.ready.notify_one();
        let mut slot = slot;
        slot.armed = false; // the job (or the paths below) release it
        let mut guard = Withdraw {
            state: state.clone(),
            inner: inner.clone(),
            armed: true,
        };
        match tokio::time::timeout(self.timeout, rx).await {
            Ok(Ok(result)) => {
                guard.armed = false;
                result
            }
            Ok(Err(_)) => {
                guard.armed = false;
                Err(RunError::Closed)
            }
            Err(_elapsed) => {
                guard.armed = false;
                match state.compare_exchange(QUEUED, WITHDRAWN, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => {
                        inner.gate.release();
                        Err(RunError::NoThread(format!(
                            "no {kind} thread became free within {}s ({} calls stuck on this \
                             worker)",
                            crate::pyfmt::g(self.timeout.as_secs_f64()),
                            self.stuck_total()
                        )))
                    }
                    Err(_) => {
                        // Running: abandon it, unless it finished this very moment.
                        if state
                            .compare_exchange(
                                STARTED,
                                ABANDONED,
                                Ordering::AcqRel,
                                Ordering::Acquire,
                            )
                            .is_ok()
                        {
                            *lock(&inner.stuck).entry(key.to_string()).or_insert(0) += 1;
                            inner.stuck_total.fetch_add(1, Ordering::AcqRel);
                            inner.abandoned_total.fetch_add(1, Ordering::AcqRel);
                            inner.gate.release();
                            Err(RunError::Abandoned(format!(
                                "{kind} of {key} ran longer than {}s",
                                crate::pyfmt::g(self.timeout.as_secs_f64())
                            )))
                        } else {
                            Err(RunError::Abandoned(format!(
                                "{kind} of {key} finished as it timed out"
                            )))
                        }
                    }
                }
            }
        }
    }

    /// Stop taking calls; idle threads exit. Threads stuck in a runtime are not joined.
    pub fn close(&self) {
        lock(&self.inner.queue).closed = true;
        self.inner.ready.notify_all();
        let threads: Vec<_> = lock(&self.threads).drain(..).collect();
        for t in threads {
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.close();
    }
}

fn unstick(inner: &Inner, key: &str) {
    let mut stuck = lock(&inner.stuck);
    if let Some(n) = stuck.get_mut(key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            stuck.remove(key);
        }
    }
    inner.stuck_total.fetch_sub(1, Ordering::AcqRel);
}

/// A gate slot held across an early return.
struct Slot {
    inner: Arc<Inner>,
    armed: bool,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if self.armed {
            self.inner.gate.release();
        }
    }
}

/// The caller went away (its future was dropped) while the call waited: a call not yet
/// started is withdrawn and its slot freed; a running one finishes on its thread.
struct Withdraw {
    state: Arc<AtomicU8>,
    inner: Arc<Inner>,
    armed: bool,
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        if self.armed
            && self
                .state
                .compare_exchange(QUEUED, WITHDRAWN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.inner.gate.release();
        }
    }
}

fn work(inner: &Inner) {
    loop {
        let job = {
            let mut q = lock(&inner.queue);
            loop {
                if let Some(job) = q.jobs.pop_front() {
                    break job;
                }
                if q.closed {
                    return;
                }
                q = inner.ready.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        // Jobs catch their calls' panics themselves (their callers are told); this is the
        // last line, so that nothing can take a pool thread down.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_call_runs_on_a_pool_thread_and_returns() {
        let pool = Pool::new("predict", 2, 1, Duration::from_secs(5)).unwrap();
        let name = rt().block_on(pool.run(
            "m",
            || std::thread::current().name().map(str::to_string),
            None,
        ));
        assert!(name.unwrap().unwrap().starts_with("shoal-predict-"));
        assert_eq!(pool.running(), 0);
    }

    #[test]
    fn a_passed_deadline_is_not_run() {
        let pool = Pool::new("predict", 1, 0, Duration::from_secs(5)).unwrap();
        let ran = Arc::new(AtomicBool::new(false));
        let r = ran.clone();
        let past = Instant::now() - Duration::from_millis(1);
        let out = rt().block_on(pool.run("m", move || r.store(true, Ordering::SeqCst), Some(past)));
        assert!(
            matches!(out, Err(RunError::Expired(m)) if m.contains("queued for a predict thread"))
        );
        assert!(!ran.load(Ordering::SeqCst));
        assert_eq!(pool.running(), 0);
    }

    #[test]
    fn a_hung_call_is_abandoned_and_its_spare_thread_serves_the_next() {
        let pool = Pool::new("predict", 1, 1, Duration::from_millis(100)).unwrap();
        let release = Arc::new(AtomicBool::new(false));
        let r = release.clone();
        let rt = rt();
        let out = rt.block_on(pool.run(
            "acme/slow:1",
            move || {
                while !r.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            },
            None,
        ));
        assert!(
            matches!(&out, Err(RunError::Abandoned(m)) if m == "predict of acme/slow:1 ran longer than 0.1s"),
            "{out:?}"
        );
        assert_eq!(pool.stuck("acme/slow:1"), 1);
        assert_eq!(pool.running(), 0);
        // The spare thread answers while the first is stuck.
        assert_eq!(rt.block_on(pool.run("acme/fast:1", || 7, None)), Ok(7));
        release.store(true, Ordering::SeqCst);
        for _ in 0..200 {
            if pool.stuck_total() == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(pool.stuck_total(), 0);
        assert_eq!(pool.stuck("acme/slow:1"), 0);
    }

    #[test]
    fn with_every_thread_stuck_a_call_is_withdrawn_as_unavailable() {
        let pool = Pool::new("predict", 1, 0, Duration::from_millis(50)).unwrap();
        let release = Arc::new(AtomicBool::new(false));
        let r = release.clone();
        let rt = rt();
        let _ = rt.block_on(pool.run(
            "a",
            move || {
                while !r.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(5));
                }
            },
            None,
        ));
        let ran = Arc::new(AtomicBool::new(false));
        let r2 = ran.clone();
        let out = rt.block_on(pool.run("b", move || r2.store(true, Ordering::SeqCst), None));
        assert!(
            matches!(&out, Err(RunError::NoThread(m)) if m.contains("(1 calls stuck on this worker)")),
            "{out:?}"
        );
        release.store(true, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        assert!(!ran.load(Ordering::SeqCst), "a withdrawn call never runs");
        assert_eq!(pool.running(), 0);
    }

    #[test]
    fn a_panicking_call_fails_its_caller_and_the_thread_lives_on() {
        let pool = Pool::new("predict", 1, 0, Duration::from_secs(5)).unwrap();
        let rt = rt();
        let out: Result<(), RunError> = rt.block_on(pool.run("m", || panic!("boom"), None));
        assert_eq!(
            out,
            Err(RunError::Panicked("predict of m panicked: boom".into()))
        );
        assert_eq!(rt.block_on(pool.run("m", || 1, None)), Ok(1));
    }
}

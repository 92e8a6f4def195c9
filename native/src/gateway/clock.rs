//! The gateway's clock, injected so quotas and ejection are tested without sleeping.
//!
//! `TokioClock` reads tokio's clock, which tests pause and advance (`start_paused`), so the
//! same code path serves production and tests; waits use `tokio::time::sleep` on that clock.

/// Seconds on a monotonic clock.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> f64;
}

/// Tokio's monotonic clock, as seconds since the clock was made.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    origin: tokio::time::Instant,
}

impl TokioClock {
    pub fn new() -> TokioClock {
        TokioClock {
            origin: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> f64 {
        self.origin.elapsed().as_secs_f64()
    }
}

//! Shadow traffic: copies of a share of requests sent to a shadow version, off the hot path.
//!
//! `offer` never blocks and never fails the request: the copy goes on a bounded queue, or is
//! dropped (the caller counts it) when the queue is full. One task sends the copies in order
//! (pinned to the shadow version, on the tenant's shard, with the default deadline) and keeps
//! each outcome for Python, which compares the outputs, counts agreement per model and writes
//! the JSONL log (`router/shadow.py`). Outcomes wait in a bounded buffer (the oldest dropped
//! when Python falls behind) and are taken with `take`.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::grpc::{self, Code, Status};
use super::oip;
use super::table::Model;
use super::Shared;

/// Outcomes kept for Python at most; beyond that the oldest go.
const MAX_OUTCOMES: usize = 4096;

pub struct ShadowJob {
    pub model: Arc<Model>,
    pub primary_version: u64,
    pub shadow_version: u64,
    /// The client's request message, version not yet overridden.
    pub request: Bytes,
    /// The primary's answer as received (framed).
    pub primary: Bytes,
}

/// One shadow copy's result, for Python.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Unix time when the copy was sent.
    pub ts: f64,
    pub model: String,
    pub primary_version: u64,
    pub shadow_version: u64,
    /// The primary's response message (unframed).
    pub primary: Bytes,
    /// The shadow's response message, or why there is none (`CODE: message`).
    pub shadow: Result<Bytes, String>,
}

pub struct ShadowQueue {
    tx: mpsc::Sender<ShadowJob>,
    rx: Mutex<Option<mpsc::Receiver<ShadowJob>>>,
    outcomes: Mutex<VecDeque<Outcome>>,
    ready: Condvar,
}

impl ShadowQueue {
    pub fn new(size: usize) -> ShadowQueue {
        let (tx, rx) = mpsc::channel(size.max(1));
        ShadowQueue {
            tx,
            rx: Mutex::new(Some(rx)),
            outcomes: Mutex::new(VecDeque::new()),
            ready: Condvar::new(),
        }
    }

    /// Queue a copy; false when the queue is full (the copy is dropped).
    pub fn offer(&self, job: ShadowJob) -> bool {
        self.tx.try_send(job).is_ok()
    }

    /// Up to `max` outcomes, waiting at most `timeout` for the first one. Blocking.
    pub fn take(&self, max: usize, timeout: Duration) -> Vec<Outcome> {
        let guard = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        let (mut guard, _) = self
            .ready
            .wait_timeout_while(guard, timeout, |q| q.is_empty())
            .unwrap_or_else(|p| p.into_inner());
        let n = max.min(guard.len());
        guard.drain(..n).collect()
    }

    fn push(&self, outcome: Outcome) {
        let mut q = self.outcomes.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= MAX_OUTCOMES {
            q.pop_front();
        }
        q.push_back(outcome);
        self.ready.notify_all();
    }
}

fn unframe(body: &Bytes) -> Bytes {
    if body.len() >= 5 {
        body.slice(5..)
    } else {
        Bytes::new()
    }
}

/// The sender task: runs until the gateway stops.
pub async fn run(shared: Arc<Shared>) {
    let rx = shared
        .shadow
        .rx
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let Some(mut rx) = rx else {
        return;
    };
    while let Some(job) = rx.recv().await {
        shared.stats.shadow_sent.fetch_add(1, Ordering::Relaxed);
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let shadow = send(&shared, &job)
            .await
            .map(|b| unframe(&b))
            .map_err(|s| format!("{}: {}", s.code.name(), s.message));
        shared.shadow.push(Outcome {
            ts,
            model: job.model.full_name.clone(),
            primary_version: job.primary_version,
            shadow_version: job.shadow_version,
            primary: unframe(&job.primary),
            shadow,
        });
    }
}

async fn send(shared: &Shared, job: &ShadowJob) -> Result<Bytes, Status> {
    // The record as it is now: the shadow version may have been removed meanwhile.
    let model = shared
        .table
        .model(&job.model.full_name)
        .unwrap_or_else(|| job.model.clone());
    let Some(spec) = model.routes.versions.get(&job.shadow_version) else {
        return Err(Status::new(
            Code::NotFound,
            format!("shadow version {} gone", job.shadow_version),
        ));
    };
    let (pool, candidates) = shared.candidates(&model, job.shadow_version, spec)?;
    let field = Bytes::from(oip::version_field(job.shadow_version));
    let payload = [
        grpc::frame_header(job.request.len() + field.len()),
        job.request.clone(),
        field,
    ];
    let deadline = Instant::now() + shared.config.default_timeout;
    let reply = shared
        .forward(&pool, &candidates, &payload, deadline)
        .await?;
    Ok(reply.body)
}

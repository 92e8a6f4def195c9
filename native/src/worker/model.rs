//! A resident model as the front runs it: its runner (a native tree booster or ONNX session),
//! its signature, its concurrency bound, and its batch queue.
//!
//! Batching (`worker/batching.py`'s policy, per model): a request for a model with no call
//! running goes at once, alone; while a call runs, arrivals queue, and the queue goes out as
//! one merged call when the running call ends, when it reaches `max_rows`, or when its oldest
//! request has waited `max_delay` (with `when_idle` off, only the last two: Triton's way).
//! Only models with one input whose first dimension is the batch, and outputs batched the
//! same way, are merged, and only requests whose rows have one shape; rows are concatenated
//! and every output is cut back by the same row counts. Requests whose deadline passed while queued
//! are answered DEADLINE_EXCEEDED and not run; a merged call carries the latest deadline of
//! its requests. A runtime error fails every request of its call.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::codec::{Datatype, Signature};
use crate::gateway::quota::{Admission, Slots};
use crate::runtime::{Booster, Values};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A tensor of a runtime call (input or output): V2 datatype, shape, little-endian
/// row-major bytes.
pub use crate::runtime::onnx::Data as Output;

/// What runs a model's prediction without Python.
pub trait Runner: Send + Sync + 'static {
    /// One call on `inputs` (in signature order; in a merged call the first dimension is
    /// the batch): the outputs in signature order.
    fn predict(&self, inputs: &[Output]) -> Result<Vec<Output>, String>;
}

impl Runner for Booster {
    fn predict(&self, inputs: &[Output]) -> Result<Vec<Output>, String> {
        // Tree models: one FP32 input [rows, features] (checked against the signature).
        let input = inputs
            .first()
            .ok_or_else(|| "a tree model takes one input".to_string())?;
        let nrows = input.shape.first().copied().unwrap_or(1).max(0) as usize;
        let rows: Vec<f32> = input
            .data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let ncols = rows.len().checked_div(nrows).unwrap_or(0);
        let p = Booster::predict(self, &rows, nrows, ncols)
            .map_err(|e| format!("{}: {e}", self.framework().error_name()))?;
        let (datatype, data) = match p.values {
            Values::F32(v) => (
                Datatype::Fp32,
                v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
            ),
            Values::F64(v) => (
                Datatype::Fp64,
                v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(),
            ),
        };
        Ok(vec![Output {
            datatype,
            shape: p.shape.iter().map(|&d| d as i64).collect(),
            data: Bytes::from(data),
        }])
    }
}

impl Runner for crate::runtime::onnx::Session {
    fn predict(&self, inputs: &[Output]) -> Result<Vec<Output>, String> {
        // The name of the exception the Python path raises for the same failure.
        self.run(inputs).map_err(|e| format!("OnnxError: {e}"))
    }
}

/// How a prediction failed, for the caller and for the owner's bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Not the model's fault: the deadline passed, the model was busy, no thread was free.
    NotRun(crate::rpc::grpc::Code, String, bool),
    /// The runtime raised: INTERNAL, counts against the version.
    Runtime(String),
    /// The call hung and was abandoned: the version is quarantined at once.
    Hung(String),
}

pub type Outs = Result<Vec<Output>, Failure>;

struct Item {
    inputs: Vec<Output>,
    nrows: usize,
    deadline: Option<Instant>,
    queued: Instant,
    tx: oneshot::Sender<Outs>,
}

#[derive(Default)]
struct Queue {
    items: Vec<Item>,
    rows: usize,
    running: usize,
    timer: bool,
}

/// A resident model version.
pub struct Resident {
    /// `tenant/name:version`, as messages name it.
    pub label: String,
    /// `tenant/name`: the concurrency bound's name.
    pub name: String,
    pub version: u64,
    pub runner: Arc<dyn Runner>,
    pub sig: Signature,
    pub limiter: Slots,
    queue: Mutex<Queue>,
    /// Consecutive runtime failures (reset by a success): the owner quarantines on these.
    pub failures: AtomicU64,
    /// Served natively since the owner last looked (its cache's recency).
    pub touched: std::sync::atomic::AtomicBool,
    /// How long its calls take (`worker/inline.py`'s policy): short ones run inline.
    speed: Mutex<Speed>,
    /// Whether a call's running time is bounded by its input's size (tree ensembles, ONNX
    /// graphs without loops): only such models may run inline.
    pub bounded: bool,
    /// Successful runtime calls (a merged batch is one), the rows they predicted, and their
    /// cumulative running time: Triton's execution_count, inference_count and compute_infer.
    pub executions: AtomicU64,
    pub rows: AtomicU64,
    pub compute_ns: AtomicU64,
}

/// Calls measured and their moving average, seconds.
#[derive(Default, Clone, Copy)]
struct Speed {
    samples: u32,
    avg_s: f64,
}

/// When a call may run on the front's own thread instead of a prediction thread
/// (`worker/inline.py`): the model has proven fast (at least two calls measured, or a 1-row
/// prediction at load, averaging at most `max_s`) and the request is small. A thread
/// hand-off and back costs more than a short tree prediction; what inline gives up is that
/// such a call cannot be abandoned, so only bounded models (tree ensembles) qualify, and one
/// slow call (over `JUMP` x `max_s`) sends the model back to the threads at once.
#[derive(Debug, Clone, Copy)]
pub struct InlinePolicy {
    pub max_s: f64,
    pub max_bytes: usize,
}

const ALPHA: f64 = 0.2;
const JUMP: f64 = 4.0;
const MIN_SAMPLES: u32 = 2;

impl Resident {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        name: String,
        version: u64,
        runner: Arc<dyn Runner>,
        sig: Signature,
        concurrency: u32,
        max_waiting: usize,
    ) -> Resident {
        Resident {
            label: format!("{name}:{version}"),
            name,
            version,
            runner,
            sig,
            limiter: Slots::new(concurrency, max_waiting),
            queue: Mutex::new(Queue::default()),
            failures: AtomicU64::new(0),
            executions: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            compute_ns: AtomicU64::new(0),
            touched: std::sync::atomic::AtomicBool::new(false),
            speed: Mutex::new(Speed::default()),
            bounded: true,
        }
    }

    /// A 1-row prediction at load took `seconds`: it stands for the proof of speed.
    pub fn seed(&self, seconds: f64) {
        let mut s = lock(&self.speed);
        if s.samples == 0 {
            *s = Speed {
                samples: MIN_SAMPLES,
                avg_s: seconds,
            };
        }
    }

    /// A call predicted `rows` rows in `seconds` (the statistics' counters).
    pub fn count(&self, rows: usize, seconds: f64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.executions.fetch_add(1, Relaxed);
        self.rows.fetch_add(rows as u64, Relaxed);
        self.compute_ns.fetch_add((seconds * 1e9) as u64, Relaxed);
    }

    /// A call succeeded in `seconds`.
    pub fn observe(&self, seconds: f64, policy: &InlinePolicy) {
        let mut s = lock(&self.speed);
        s.samples = s.samples.saturating_add(1);
        if s.samples == 1 || seconds > JUMP * policy.max_s {
            s.avg_s = seconds;
        } else {
            s.avg_s += ALPHA * (seconds - s.avg_s);
        }
    }

    /// A call failed or hung: back to the threads until proven again.
    pub fn forget(&self) {
        *lock(&self.speed) = Speed::default();
    }

    /// Whether a call on `bytes` of input may run inline.
    pub fn inline(&self, bytes: usize, policy: &InlinePolicy) -> bool {
        if !self.bounded || policy.max_s <= 0.0 || bytes > policy.max_bytes {
            return false;
        }
        let s = *lock(&self.speed);
        s.samples >= MIN_SAMPLES && s.avg_s <= policy.max_s
    }

    /// Whether requests may be merged: one input whose first dimension is the batch, and
    /// outputs batched the same way (`worker/dataplane.py::_batchable`).
    pub fn batchable(&self) -> bool {
        let sig = &self.sig;
        sig.inputs.len() == 1
            && sig.inputs[0].shape.first() == Some(&-1)
            && sig.outputs.iter().all(|o| o.shape.first() == Some(&-1))
    }
}

/// Batching settings.
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    pub enabled: bool,
    pub max_rows: usize,
    pub max_delay: Duration,
    pub when_idle: bool,
}

/// How one merged call is run (the front's guarded prediction: limiter, pool, timeout).
pub trait Execute: Send + Sync + 'static {
    fn execute(
        self: Arc<Self>,
        model: Arc<Resident>,
        inputs: Vec<Output>,
        nrows: usize,
        deadline: Option<Instant>,
    ) -> impl std::future::Future<Output = Outs> + Send;
    /// A queued request expired before it was run (counted).
    fn expired(&self);
}

/// Predict `inputs` (`nrows` rows) for `model`, merged with concurrent requests when
/// batching allows.
pub async fn predict<E: Execute>(
    exec: Arc<E>,
    batching: BatchSettings,
    model: Arc<Resident>,
    inputs: Vec<Output>,
    nrows: usize,
    deadline: Option<Instant>,
) -> Outs {
    if !batching.enabled || !model.batchable() {
        return exec.execute(model, inputs, nrows, deadline).await;
    }
    let (tx, rx) = oneshot::channel();
    // Decide under the lock; run (an await) only once it is released.
    let alone = {
        let mut q = lock(&model.queue);
        if q.running == 0 && q.items.is_empty() && batching.when_idle && nrows <= batching.max_rows
        {
            q.running += 1;
            Some((inputs, tx))
        } else {
            q.items.push(Item {
                inputs,
                nrows,
                deadline,
                queued: Instant::now(),
                tx,
            });
            q.rows += nrows;
            let go = q.rows >= batching.max_rows || (batching.when_idle && q.running == 0);
            if go {
                dispatch(&exec, batching, &model, &mut q);
            } else if !q.timer {
                q.timer = true;
                let (exec, model) = (exec.clone(), model.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(batching.max_delay).await;
                    let mut q = lock(&model.queue);
                    q.timer = false;
                    dispatch(&exec, batching, &model, &mut q);
                });
            }
            None
        }
    };
    if let Some((inputs, _tx)) = alone {
        // Alone: run in the caller's own task; arrivals meanwhile queue behind it. The guard
        // ends the call even if the caller goes away mid-way (its future dropped).
        let _done = Finished {
            exec: Some(exec.clone()),
            batching,
            model: model.clone(),
        };
        return exec.execute(model, inputs, nrows, deadline).await;
    }
    rx.await.unwrap_or_else(|_| {
        Err(Failure::Runtime(
            "the batch holding this request was dropped".into(),
        ))
    })
}

/// Ends a call when dropped (see `finished`).
struct Finished<E: Execute> {
    exec: Option<Arc<E>>,
    batching: BatchSettings,
    model: Arc<Resident>,
}

impl<E: Execute> Drop for Finished<E> {
    fn drop(&mut self) {
        if let Some(exec) = self.exec.take() {
            finished(exec, self.batching, self.model.clone());
        }
    }
}

/// A call of `model` ended: send what queued meanwhile.
fn finished<E: Execute>(exec: Arc<E>, batching: BatchSettings, model: Arc<Resident>) {
    let mut q = lock(&model.queue);
    q.running = q.running.saturating_sub(1);
    if q.running == 0 && !q.items.is_empty() && batching.when_idle {
        dispatch(&exec, batching, &model, &mut q);
    }
}

/// Take batches off the queue (each at most `max_rows`, or one larger request, of requests
/// whose rows have one shape) and run each in a task of its own.
fn dispatch<E: Execute>(
    exec: &Arc<E>,
    batching: BatchSettings,
    model: &Arc<Resident>,
    q: &mut MutexGuard<'_, Queue>,
) {
    while !q.items.is_empty() {
        let mut n = 0;
        let mut take = 0;
        let row_shape = |it: &Item| {
            it.inputs
                .first()
                .map(|t| t.shape.get(1..).map(<[i64]>::to_vec))
        };
        let first = q.items.first().map(row_shape);
        for it in &q.items {
            if take > 0 && (n + it.nrows > batching.max_rows || Some(row_shape(it)) != first) {
                break;
            }
            n += it.nrows;
            take += 1;
        }
        let batch: Vec<Item> = q.items.drain(..take).collect();
        q.rows -= n;
        q.running += 1;
        let (exec, model) = (exec.clone(), model.clone());
        tokio::spawn(run_batch(exec, batching, model, batch));
        if q.rows < batching.max_rows {
            break;
        }
    }
}

async fn run_batch<E: Execute>(
    exec: Arc<E>,
    batching: BatchSettings,
    model: Arc<Resident>,
    batch: Vec<Item>,
) {
    let _done = Finished {
        exec: Some(exec.clone()),
        batching,
        model: model.clone(),
    };
    let now = Instant::now();
    let mut live = Vec::with_capacity(batch.len());
    for it in batch {
        // Deadline first: counted even when the caller already went away at its deadline.
        if it.deadline.is_some_and(|d| now > d) {
            exec.expired();
            let waited = now.duration_since(it.queued).as_millis();
            let _ = it.tx.send(Err(Failure::NotRun(
                crate::rpc::grpc::Code::DeadlineExceeded,
                format!(
                    "deadline passed after {waited} ms waiting to be batched; the prediction \
                     was not run"
                ),
                false,
            )));
            continue;
        }
        if it.tx.is_closed() {
            continue; // the caller went away
        }
        live.push(it);
    }
    if !live.is_empty() {
        let deadline = if live.iter().any(|it| it.deadline.is_none()) {
            None
        } else {
            live.iter().filter_map(|it| it.deadline).max()
        };
        if live.len() == 1 {
            let it = live.pop();
            if let Some(it) = it {
                let out = exec
                    .clone()
                    .execute(model.clone(), it.inputs, it.nrows, deadline)
                    .await;
                let _ = it.tx.send(out);
            }
        } else {
            let total: usize = live.iter().map(|it| it.nrows).sum();
            let counts: Vec<usize> = live.iter().map(|it| it.nrows).collect();
            let merged = merge(&live, total);
            match exec
                .clone()
                .execute(model.clone(), merged, total, deadline)
                .await
            {
                Ok(outs) => match split(&outs, &counts) {
                    Ok(parts) => {
                        for (it, part) in live.into_iter().zip(parts) {
                            let _ = it.tx.send(Ok(part));
                        }
                    }
                    Err(why) => {
                        for it in live {
                            let _ = it.tx.send(Err(Failure::Runtime(why.clone())));
                        }
                    }
                },
                Err(f) => {
                    for it in live {
                        let _ = it.tx.send(Err(f.clone()));
                    }
                }
            }
        }
    }
}

/// The one input of a batch's requests (rows of one shape), concatenated along the first
/// dimension.
fn merge(items: &[Item], total: usize) -> Vec<Output> {
    let Some(first) = items.first().and_then(|it| it.inputs.first()) else {
        return Vec::new();
    };
    let mut data = Vec::with_capacity(items.iter().map(|it| it.inputs[0].data.len()).sum());
    for it in items {
        if let Some(t) = it.inputs.first() {
            data.extend_from_slice(&t.data);
        }
    }
    let mut shape = first.shape.clone();
    if let Some(d) = shape.first_mut() {
        *d = total as i64;
    }
    vec![Output {
        datatype: first.datatype,
        shape,
        data: Bytes::from(data),
    }]
}

/// Each output cut along its first dimension by `counts` (the callers' rows, in order).
pub fn split(outs: &[Output], counts: &[usize]) -> Result<Vec<Vec<Output>>, String> {
    let total: usize = counts.iter().sum();
    let mut per_caller: Vec<Vec<Output>> = counts.iter().map(|_| Vec::new()).collect();
    for o in outs {
        let first = o.shape.first().copied().unwrap_or(0);
        if first < 0 || first as usize != total {
            return Err(format!(
                "a merged call of {total} rows gave an output of shape {:?}",
                o.shape
            ));
        }
        let per_row = o.data.len().checked_div(total).unwrap_or(0);
        let mut at = 0;
        for (i, &n) in counts.iter().enumerate() {
            let mut shape = o.shape.clone();
            shape[0] = n as i64;
            per_caller[i].push(Output {
                datatype: o.datatype,
                shape,
                data: o.data.slice(at..at + n * per_row),
            });
            at += n * per_row;
        }
    }
    Ok(per_caller)
}

/// The model's concurrency bound (`worker/limits.py::ModelLimiter`): a slot, or why not.
pub async fn acquire(
    model: &Resident,
    deadline: Option<Instant>,
    wait: Duration,
    limit: u32,
) -> Result<(), Failure> {
    if model.limiter.try_acquire() {
        return Ok(());
    }
    let mut timeout = wait;
    let mut by_deadline = false;
    if let Some(d) = deadline {
        let left = d.saturating_duration_since(Instant::now());
        if left < wait {
            timeout = left;
            by_deadline = true;
        }
    }
    let name = &model.name;
    match model.limiter.acquire(timeout).await {
        Admission::Granted => Ok(()),
        Admission::Timeout if by_deadline => Err(Failure::NotRun(
            crate::rpc::grpc::Code::DeadlineExceeded,
            format!(
                "deadline passed while waiting for {name} (busy: {limit} calls running); the \
                 prediction was not run"
            ),
            false,
        )),
        outcome => {
            let detail = if outcome == Admission::Full {
                format!("{} requests already waiting", model.limiter.waiting())
            } else {
                format!(
                    "no slot freed within {}s",
                    crate::pyfmt::g(wait.as_secs_f64())
                )
            };
            Err(Failure::NotRun(
                crate::rpc::grpc::Code::ResourceExhausted,
                format!(
                    "model {name} is at its concurrency limit on this worker ({limit} calls \
                     running, {detail}; SHOAL_MODEL_MAX_CONCURRENCY, SHOAL_MODEL_MAX_QUEUE): \
                     retry later"
                ),
                true,
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::codec::TensorSpec;
    use std::sync::atomic::Ordering;

    /// Doubles every value; one output per row.
    struct Double;

    impl Runner for Double {
        fn predict(&self, inputs: &[Output]) -> Result<Vec<Output>, String> {
            let data: Vec<u8> = f32s(&inputs[0])
                .iter()
                .flat_map(|v| (v * 2.0).to_le_bytes())
                .collect();
            Ok(vec![Output {
                datatype: Datatype::Fp32,
                shape: vec![inputs[0].shape[0]],
                data: Bytes::from(data),
            }])
        }
    }

    /// One row of `values` ([1, n] FP32).
    fn row(values: &[f32]) -> Vec<Output> {
        vec![Output {
            datatype: Datatype::Fp32,
            shape: vec![1, values.len() as i64],
            data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }]
    }

    /// Runs each merged call after `delay`, recording its row count.
    struct Recorder {
        calls: Mutex<Vec<usize>>,
        delay: Duration,
        expired: AtomicU64,
    }

    impl Execute for Recorder {
        async fn execute(
            self: Arc<Self>,
            model: Arc<Resident>,
            inputs: Vec<Output>,
            nrows: usize,
            _deadline: Option<Instant>,
        ) -> Outs {
            lock(&self.calls).push(nrows);
            tokio::time::sleep(self.delay).await;
            model.runner.predict(&inputs).map_err(Failure::Runtime)
        }

        fn expired(&self) {
            self.expired.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn resident() -> Arc<Resident> {
        let spec = |n: &str| TensorSpec {
            name: n.into(),
            datatype: "FP32".into(),
            shape: vec![-1, 1],
        };
        let sig = Signature {
            inputs: vec![spec("input__0")],
            outputs: vec![TensorSpec {
                shape: vec![-1],
                ..spec("output__0")
            }],
        };
        Arc::new(Resident::new("t/m".into(), 1, Arc::new(Double), sig, 4, 8))
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    fn f32s(o: &Output) -> Vec<f32> {
        o.data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    #[test]
    fn a_lone_request_goes_at_once_and_arrivals_meanwhile_merge() {
        let exec = Arc::new(Recorder {
            calls: Mutex::new(Vec::new()),
            delay: Duration::from_millis(50),
            expired: AtomicU64::new(0),
        });
        let batching = BatchSettings {
            enabled: true,
            max_rows: 64,
            max_delay: Duration::from_secs(10),
            when_idle: true,
        };
        let model = resident();
        let outs = rt().block_on(async {
            let mut tasks = Vec::new();
            for i in 0..5 {
                let (exec, model) = (exec.clone(), model.clone());
                tasks.push(tokio::spawn(async move {
                    predict(exec, batching, model, row(&[i as f32]), 1, None).await
                }));
                tokio::task::yield_now().await;
            }
            let mut outs = Vec::new();
            for t in tasks {
                outs.push(t.await.unwrap().unwrap());
            }
            outs
        });
        // The first went alone; the four that came while it ran went out as one call.
        assert_eq!(*lock(&exec.calls), vec![1, 4]);
        for (i, o) in outs.iter().enumerate() {
            assert_eq!(o[0].shape, vec![1]);
            assert_eq!(f32s(&o[0]), vec![2.0 * i as f32]);
        }
    }

    #[test]
    fn only_rows_of_one_shape_are_merged() {
        let exec = Arc::new(Recorder {
            calls: Mutex::new(Vec::new()),
            delay: Duration::from_millis(50),
            expired: AtomicU64::new(0),
        });
        let batching = BatchSettings {
            enabled: true,
            max_rows: 64,
            max_delay: Duration::from_secs(10),
            when_idle: true,
        };
        let model = resident();
        let widths = [1usize, 1, 1, 2, 2];
        let outs = rt().block_on(async {
            let mut tasks = Vec::new();
            for (i, &w) in widths.iter().enumerate() {
                let (exec, model) = (exec.clone(), model.clone());
                let values = vec![i as f32; w];
                tasks.push(tokio::spawn(async move {
                    predict(exec, batching, model, row(&values), 1, None).await
                }));
                tokio::task::yield_now().await;
            }
            let mut outs = Vec::new();
            for t in tasks {
                outs.push(t.await.unwrap());
            }
            outs
        });
        // The first went alone; of those queued meanwhile, the two 1-wide rows went as one
        // call, then the two 2-wide rows as another.
        assert_eq!(*lock(&exec.calls), vec![1, 2, 2]);
        for (i, o) in outs.iter().enumerate() {
            let o = o.as_ref().unwrap();
            assert_eq!(f32s(&o[0]), vec![2.0 * i as f32; widths[i]]);
        }
    }

    #[test]
    fn a_request_whose_deadline_passed_in_the_queue_is_not_run() {
        let exec = Arc::new(Recorder {
            calls: Mutex::new(Vec::new()),
            delay: Duration::ZERO,
            expired: AtomicU64::new(0),
        });
        // Triton's way: a lone request waits for max_delay.
        let batching = BatchSettings {
            enabled: true,
            max_rows: 64,
            max_delay: Duration::from_millis(50),
            when_idle: false,
        };
        let model = resident();
        let soon = Instant::now() + Duration::from_millis(5);
        let out = rt().block_on(predict(
            exec.clone(),
            batching,
            model,
            row(&[1.0]),
            1,
            Some(soon),
        ));
        assert!(
            matches!(&out, Err(Failure::NotRun(crate::rpc::grpc::Code::DeadlineExceeded, m, false))
                if m.contains("waiting to be batched; the prediction was not run")),
            "{out:?}"
        );
        assert!(lock(&exec.calls).is_empty());
        assert_eq!(exec.expired.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_busy_model_refuses_with_retry_elsewhere_naming_the_settings() {
        let model = resident();
        let rt = rt();
        let mut held = 0;
        while model.limiter.try_acquire() {
            held += 1;
        }
        assert_eq!(held, 4);
        let out = rt.block_on(acquire(&model, None, Duration::from_millis(10), 4));
        assert!(
            matches!(&out, Err(Failure::NotRun(crate::rpc::grpc::Code::ResourceExhausted, m, true))
                if m == "model t/m is at its concurrency limit on this worker (4 calls running, \
                         no slot freed within 0.01s; SHOAL_MODEL_MAX_CONCURRENCY, \
                         SHOAL_MODEL_MAX_QUEUE): retry later"),
            "{out:?}"
        );
        let soon = Instant::now() + Duration::from_millis(5);
        let out = rt.block_on(acquire(&model, Some(soon), Duration::from_secs(1), 4));
        assert!(
            matches!(&out, Err(Failure::NotRun(crate::rpc::grpc::Code::DeadlineExceeded, m, false))
                if m.starts_with("deadline passed while waiting for t/m (busy: 4 calls running)")),
            "{out:?}"
        );
    }

    #[test]
    fn outputs_are_cut_back_by_rows() {
        let out = Output {
            datatype: Datatype::Fp32,
            shape: vec![3, 2],
            data: (0u8..24).collect(),
        };
        let parts = split(&[out], &[1, 2]).unwrap();
        assert_eq!(parts[0][0].shape, vec![1, 2]);
        assert_eq!(parts[0][0].data, (0u8..8).collect::<Vec<_>>());
        assert_eq!(parts[1][0].shape, vec![2, 2]);
        assert_eq!(parts[1][0].data, (8u8..24).collect::<Vec<_>>());
        let bad = Output {
            datatype: Datatype::Fp32,
            shape: vec![2],
            data: Bytes::from(vec![0u8; 8]),
        };
        assert!(split(&[bad], &[1, 2]).is_err());
    }
}

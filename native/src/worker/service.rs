//! What the worker front answers. Statuses and messages are the Python worker's
//! (`worker/servicer.py`, `worker/dataplane.py`), word for word.
//!
//! ModelInfer for a resident version named by number: decode, row limit, validation against
//! the signature, the model's concurrency bound, batching, a prediction thread, the encoded
//! answer. Any other ModelInfer goes to Python whole (it resolves, loads and answers); the
//! first request of a miss does, the others for the same version wait for it and then run
//! here. ServerLive/Ready/Metadata and grpc.health.v1 Check and Watch are answered here; ModelReady,
//! ModelMetadata and `shoal.v1.WorkerAdmin` by Python.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderMap, Request};
use prost::Message;

use super::codec;
use super::delegate::Reply;
use super::model::{self, Execute, Failure, Outs, Resident};
use super::pool::RunError;
use super::table::Lookup;
use super::Shared;
use crate::gateway::oip::{self, HealthCheckRequest, HealthCheckResponse};
use crate::rpc::grpc::{self, names, Code, Status};
use crate::rpc::unary::{encode, read_message, reset, send, Answer};

const ADMIN: &str = "/shoal.v1.WorkerAdmin/";
const SERVER_NAME: &str = "shoal-worker";
const SERVER_VERSION: &str = "0.1.0";

/// The caller's deadline from `grpc-timeout`.
fn deadline(headers: &HeaderMap) -> Option<Instant> {
    let t = headers
        .get(names::GRPC_TIMEOUT)
        .and_then(|v| v.to_str().ok())
        .and_then(grpc::parse_timeout)?;
    Instant::now().checked_add(t)
}

/// `"3"` as Python's `str.isdigit` + `int` read it (ASCII digits; anything else is for
/// Python: aliases, the empty version, unusual digits and errors).
fn numeric_version(v: &str) -> Option<u64> {
    let v = v.trim_matches(|c: char| c.is_ascii_whitespace());
    if v.is_empty() || v.len() > 19 || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok().filter(|&n| n > 0)
}

fn answer_of(reply: Reply) -> Answer {
    let extra = reply.retry.map(|v| (names::SHOAL_RETRY, v));
    if reply.code == Code::Ok {
        Answer::Message(grpc::frame(&reply.body), extra)
    } else if let Some(extra) = extra {
        Answer::FailureWith(Status::new(reply.code, reply.message), extra)
    } else {
        Answer::Failure(Status::new(reply.code, reply.message))
    }
}

fn failure_answer(f: Failure) -> (Answer, Code, bool) {
    match f {
        Failure::NotRun(code, message, retry) => {
            let status = Status::new(code, message);
            if retry {
                (
                    Answer::FailureWith(status, (names::SHOAL_RETRY, "elsewhere")),
                    code,
                    true,
                )
            } else {
                (Answer::Failure(status), code, true)
            }
        }
        Failure::Runtime(m) => (
            Answer::Failure(Status::new(Code::Internal, m)),
            Code::Internal,
            true,
        ),
        Failure::Hung(m) => (
            Answer::Failure(Status::new(Code::DeadlineExceeded, m)),
            Code::DeadlineExceeded,
            true,
        ),
    }
}

impl Execute for Shared {
    async fn execute(
        self: Arc<Self>,
        model: Arc<Resident>,
        inputs: Vec<model::Output>,
        nrows: usize,
        deadline: Option<Instant>,
    ) -> Outs {
        let cfg = &self.config;
        if let Err(f) = model::acquire(
            &model,
            deadline,
            cfg.model_queue_wait,
            cfg.model_concurrency,
        )
        .await
        {
            match &f {
                Failure::NotRun(Code::DeadlineExceeded, ..) => {
                    self.stats.expired_queue.fetch_add(1, Ordering::Relaxed)
                }
                _ => self.stats.rejected_busy.fetch_add(1, Ordering::Relaxed),
            };
            return Err(f);
        }
        let _slot = Release(&model);
        self.stats.batch_rows.observe(nrows as f64);
        let runner = model.runner.clone();
        let policy = cfg.inline;
        let bytes = inputs.iter().map(|t| t.data.len()).sum();
        if model.inline(bytes, &policy) {
            if deadline.is_some_and(|d| Instant::now() > d) {
                self.stats.expired_pool.fetch_add(1, Ordering::Relaxed);
                return Err(Failure::NotRun(
                    Code::DeadlineExceeded,
                    format!("deadline passed before {} was run; not run", model.label),
                    false,
                ));
            }
            self.stats.inline.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let out = runner.predict(&inputs);
            let took = started.elapsed().as_secs_f64();
            return match out {
                Ok(outs) => {
                    model.failures.store(0, Ordering::Release);
                    model.observe(took, &policy);
                    model.count(nrows, took);
                    Ok(outs)
                }
                Err(why) => Err(self.failed(&model, why)),
            };
        }
        let timed = {
            let runner = runner.clone();
            move || {
                let started = Instant::now();
                let out = runner.predict(&inputs);
                (out, started.elapsed().as_secs_f64())
            }
        };
        let out = self
            .pool
            .run(&model.label, timed, deadline)
            .await
            .map(|(out, took)| {
                if out.is_ok() {
                    model.observe(took, &policy);
                    model.count(nrows, took);
                }
                out
            });
        match out {
            Ok(Ok(outs)) => {
                model.failures.store(0, Ordering::Release);
                Ok(outs)
            }
            Ok(Err(why)) => Err(self.failed(&model, why)),
            Err(RunError::Panicked(why)) => Err(self.failed(&model, why)),
            Err(RunError::Expired(m)) => {
                self.stats.expired_pool.fetch_add(1, Ordering::Relaxed);
                Err(Failure::NotRun(Code::DeadlineExceeded, m, false))
            }
            Err(RunError::NoThread(m)) => Err(Failure::NotRun(Code::Unavailable, m, false)),
            Err(RunError::Closed) => Err(Failure::NotRun(
                Code::Unavailable,
                "this worker is shutting down".into(),
                false,
            )),
            Err(RunError::Abandoned(m)) => {
                model.forget();
                // Quarantined at once (Python decides for how long): from now on Python
                // answers this version's requests.
                self.table.remove(&model.name, model.version);
                self.outcome(&model, "hung", &m, 1);
                Err(Failure::Hung(format!(
                    "{m} (SHOAL_PREDICT_TIMEOUT_S) and was abandoned; {} is quarantined",
                    model.label
                )))
            }
        }
    }

    fn expired(&self) {
        self.stats.expired_batch.fetch_add(1, Ordering::Relaxed);
    }
}

/// Frees a model's concurrency slot when the call ends (or is dropped).
struct Release<'a>(&'a Resident);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.limiter.release();
    }
}

impl Shared {
    /// A runtime error: counts towards quarantine (Python keeps the books); INTERNAL.
    fn failed(&self, model: &Resident, why: String) -> Failure {
        model.forget();
        let n = model.failures.fetch_add(1, Ordering::AcqRel) + 1;
        self.outcome(model, "failed", &why, n);
        Failure::Runtime(format!("prediction of {} failed: {why}", model.label))
    }

    /// Tell Python how a prediction of `model` ended badly (JSON: it is rare).
    fn outcome(&self, model: &Resident, kind: &str, message: &str, consecutive: u64) {
        let doc = serde_json::json!({
            "model": model.name,
            "version": model.version,
            "kind": kind,
            "message": message,
            "consecutive": consecutive,
        });
        self.delegate
            .notify("outcome", Bytes::from(doc.to_string().into_bytes()));
    }

    /// ModelInfer; the answer, its code, and whether it was answered here (not by Python).
    async fn infer(
        self: &Arc<Self>,
        headers: &HeaderMap,
        msg: Bytes,
        delegated: &AtomicBool,
    ) -> (Answer, Code, bool) {
        let deadline = deadline(headers);
        let req = match codec::decode_infer_request(msg.clone()) {
            Ok(r) => r,
            Err(e) => return failure(e.status()),
        };
        let max_rows = i64::try_from(self.config.max_rows).unwrap_or(i64::MAX);
        if let Err(e) = codec::check_rows(&req.inputs, max_rows) {
            self.stats.rejected_rows.fetch_add(1, Ordering::Relaxed);
            return failure(e.status());
        }
        let version = match numeric_version(&req.version) {
            Some(v) => v,
            // An alias or the empty version: resolved here from a fresh record, by the one
            // rule; anything else (no fresh record, an error to word) is Python's.
            None => match self.resolve(&req.model, &req.version) {
                Some(v) => v,
                None => return self.ask(msg, deadline, delegated).await,
            },
        };
        let mut waited = false;
        let model = loop {
            match self.table.lookup(&req.model, version) {
                Lookup::Resident(m) => break m,
                Lookup::Ask(miss) => {
                    let out = self.ask(msg, deadline, delegated).await;
                    if out.1 == Code::Ok {
                        self.table.served_by_python(&req.model, version);
                    }
                    drop(miss);
                    return out;
                }
                Lookup::Python => return self.ask(msg, deadline, delegated).await,
                Lookup::Wait(mut rx) if !waited => {
                    waited = true;
                    let done = rx.wait_for(|d| *d);
                    match deadline {
                        Some(d) => {
                            let _ = tokio::time::timeout_at(d.into(), done).await;
                        }
                        None => {
                            let _ = done.await;
                        }
                    }
                    self.stats.miss_waits.fetch_add(1, Ordering::Relaxed);
                }
                Lookup::Wait(_) => return self.ask(msg, deadline, delegated).await,
            }
        };
        model.touched.store(true, Ordering::Relaxed);
        let order = match codec::check_inputs(&model.label, &model.sig, &req.inputs) {
            Ok(o) => o,
            Err(e) => return failure(e.status()),
        };
        let wanted = match codec::select_outputs(&model.sig, req.outputs()) {
            Ok(w) => w,
            Err(e) => return failure(e.status()),
        };
        // The inputs in signature order (checked against it above); the first dimension of
        // the first is the batch.
        let nrows = order
            .first()
            .and_then(|&i| req.inputs.get(i))
            .and_then(|t| t.shape.first().copied())
            .unwrap_or(1)
            .max(0) as usize;
        let inputs: Vec<model::Output> = order
            .iter()
            .filter_map(|&i| req.inputs.get(i))
            .map(|t| model::Output {
                datatype: t.datatype,
                shape: t.shape.clone(),
                data: t.data.clone(),
            })
            .collect();
        let outs = model::predict(
            self.clone(),
            self.config.batching,
            model.clone(),
            inputs,
            nrows,
            deadline,
        )
        .await;
        match outs {
            Ok(outs) => {
                let tensors: Vec<codec::OutputTensor> = wanted
                    .iter()
                    .filter_map(|&i| {
                        let o = outs.get(i)?;
                        let spec = model.sig.outputs.get(i)?;
                        Some(codec::OutputTensor {
                            name: spec.name.clone(),
                            datatype: o.datatype,
                            shape: o.shape.clone(),
                            data: o.data.clone(),
                        })
                    })
                    .collect();
                let body =
                    codec::encode_infer_response(&req.model, model.version, &req.id, &tensors);
                (Answer::Message(grpc::frame(&body), None), Code::Ok, true)
            }
            Err(f) => failure_answer(f),
        }
    }

    /// The version `requested` names for `model`, from a fresh record; None: ask Python.
    fn resolve(&self, model: &str, requested: &str) -> Option<u64> {
        let record = self.table.record(model)?;
        let draw = || {
            use rand::Rng;
            self.rng
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .random::<f64>()
        };
        crate::resolve::resolve(&record.routes, &record.full_name, requested, draw)
            .ok()
            .map(|(v, _, _)| v)
    }

    /// Hand the request to Python.
    async fn ask(
        &self,
        msg: Bytes,
        deadline: Option<Instant>,
        delegated: &AtomicBool,
    ) -> (Answer, Code, bool) {
        delegated.store(true, Ordering::Release);
        self.stats.delegated.fetch_add(1, Ordering::Relaxed);
        let reply = self.delegate.call("ModelInfer", msg, deadline).await;
        let code = reply.code;
        (answer_of(reply), code, false)
    }

    fn serving(&self) -> oip::Serving {
        if self.ready.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire) {
            oip::Serving::Serving
        } else {
            oip::Serving::NotServing
        }
    }
}

impl crate::rpc::health::Health for Shared {
    fn status(&self, service: &str) -> oip::Serving {
        if service.is_empty() || service == oip::SERVICE.trim_matches('/') {
            self.serving()
        } else {
            oip::Serving::ServiceUnknown
        }
    }

    fn watchers(&self) -> &tokio::sync::watch::Sender<bool> {
        &self.health
    }

    fn who(&self) -> &'static str {
        "this worker"
    }
}

fn failure(status: Status) -> (Answer, Code, bool) {
    let code = status.code;
    (Answer::Failure(status), code, true)
}

/// Answer one HTTP/2 stream. Work stops when the client resets the stream (it went away, or
/// its deadline passed: a ModelInfer the front was answering itself is then counted as
/// DEADLINE_EXCEEDED or CANCELLED, as the Python worker counted it).
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let path = req.uri().path().to_string();
    if path == format!("{}Watch", oip::HEALTH) {
        return crate::rpc::health::watch(shared, req, respond).await;
    }
    let infer = path.strip_prefix(oip::SERVICE) == Some("ModelInfer");
    let until = deadline(req.headers());
    let started = Instant::now();
    let delegated = AtomicBool::new(false);
    let work = answer(&shared, &path, req, &delegated);
    tokio::pin!(work);
    let answer = tokio::select! {
        a = &mut work => a,
        _ = reset(&mut respond) => {
            if infer && !delegated.load(Ordering::Acquire) {
                let expired = until.is_some_and(|d| Instant::now() >= d);
                let code = if expired { Code::DeadlineExceeded } else { Code::Cancelled };
                let s = &shared.stats;
                s.infer_codes[code as usize].fetch_add(1, Ordering::Relaxed);
                s.infer_seconds.observe(started.elapsed().as_secs_f64());
            }
            return;
        }
    };
    send(respond, answer);
}

async fn answer(
    shared: &Arc<Shared>,
    path: &str,
    req: Request<RecvStream>,
    delegated: &AtomicBool,
) -> Answer {
    let (headers, msg) = match read_message(req, shared.config.max_message_bytes).await {
        Ok(x) => x,
        Err(s) => return Answer::Failure(s),
    };
    shared.stats.in_flight.fetch_add(1, Ordering::Relaxed);
    shared.stats.total.fetch_add(1, Ordering::Relaxed);
    let _done = InFlight(&shared.stats);
    route(shared, path, &headers, msg, delegated).await
}

/// Counts a request out when it ends or is dropped.
struct InFlight<'a>(&'a super::Stats);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn route(
    shared: &Arc<Shared>,
    path: &str,
    headers: &HeaderMap,
    msg: Bytes,
    delegated: &AtomicBool,
) -> Answer {
    if let Some(m) = path.strip_prefix(oip::SERVICE) {
        return match m {
            "ModelInfer" => {
                let started = Instant::now();
                let (answer, code, native) = shared.infer(headers, msg, delegated).await;
                if native {
                    let s = &shared.stats;
                    s.infer_codes[code as usize].fetch_add(1, Ordering::Relaxed);
                    s.infer_seconds.observe(started.elapsed().as_secs_f64());
                }
                answer
            }
            "ServerLive" => Answer::Message(encode(&oip::ServerLiveResponse { live: true }), None),
            "ServerReady" => Answer::Message(
                encode(&oip::ServerReadyResponse {
                    ready: shared.ready.load(Ordering::Acquire)
                        && !shared.draining.load(Ordering::Acquire),
                }),
                None,
            ),
            "ServerMetadata" => Answer::Message(
                encode(&oip::ServerMetadataResponse {
                    name: SERVER_NAME.into(),
                    version: SERVER_VERSION.into(),
                    extensions: Vec::new(),
                }),
                None,
            ),
            "ModelStatistics" => statistics(&shared.table, &msg).into(),
            "ModelReady" | "ModelMetadata" => {
                let reply = shared.delegate.call(m, msg, deadline(headers)).await;
                answer_of(reply)
            }
            _ => Answer::Failure(Status::new(
                Code::Unimplemented,
                format!("Method not found: {path}"),
            )),
        };
    }
    if let Some(m) = path.strip_prefix(ADMIN) {
        let method = format!("WorkerAdmin/{m}");
        let reply = shared.delegate.call(&method, msg, deadline(headers)).await;
        return answer_of(reply);
    }
    if path == format!("{}Check", oip::HEALTH) {
        return match HealthCheckRequest::decode(&msg[..]) {
            Ok(r) if r.service.is_empty() || r.service == oip::SERVICE.trim_matches('/') => {
                Answer::Message(encode(&HealthCheckResponse::of(shared.serving())), None)
            }
            Ok(r) => Answer::Failure(Status::new(
                Code::NotFound,
                format!("unknown service {}", r.service),
            )),
            Err(_) => Answer::Failure(Status::new(
                Code::InvalidArgument,
                "malformed HealthCheckRequest",
            )),
        };
    }
    Answer::Failure(Status::new(
        Code::Unimplemented,
        format!("Method not found: {path}"),
    ))
}

/// ModelStatistics as this worker counts it: the resident versions of the model asked for
/// (every resident version when no name is given; a version, when given, must be a number),
/// with their executions, rows and compute time. The gateway sums these over the workers.
fn statistics(table: &super::table::Table, msg: &[u8]) -> Result<Bytes, Status> {
    use crate::gateway::repository::{
        InferStatistics, ModelStatistics, ModelStatisticsResponse, StatisticDuration,
    };
    let req = oip::ModelRequest::decode(msg)
        .map_err(|_| Status::new(Code::InvalidArgument, "malformed ModelStatisticsRequest"))?;
    let version = if req.version.is_empty() {
        None
    } else {
        Some(req.version.parse::<u64>().map_err(|_| {
            Status::new(
                Code::InvalidArgument,
                format!("a worker counts numbered versions, not {:?}", req.version),
            )
        })?)
    };
    let model_stats = table
        .residents(&req.name, version)
        .iter()
        .map(|r| {
            let executions = r.executions.load(Ordering::Relaxed);
            ModelStatistics {
                name: r.name.clone(),
                version: r.version.to_string(),
                last_inference: 0,
                inference_count: r.rows.load(Ordering::Relaxed),
                execution_count: executions,
                inference_stats: Some(InferStatistics {
                    compute_infer: Some(StatisticDuration {
                        count: executions,
                        ns: r.compute_ns.load(Ordering::Relaxed),
                    }),
                    ..Default::default()
                }),
            }
        })
        .collect();
    Ok(encode(&ModelStatisticsResponse { model_stats }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_positive_numbers_are_served_natively() {
        assert_eq!(numeric_version("3"), Some(3));
        assert_eq!(numeric_version(" 12 "), Some(12));
        assert_eq!(numeric_version("0"), None);
        assert_eq!(numeric_version(""), None);
        assert_eq!(numeric_version("stable"), None);
        assert_eq!(numeric_version("٣"), None);
        assert_eq!(numeric_version("99999999999999999999"), None);
    }
}

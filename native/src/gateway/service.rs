//! What the gateway answers: the Open Inference Protocol (ModelInfer forwarded, the rest
//! answered from the table) and grpc.health.v1. Statuses and messages are the Python
//! router's, word for word (`router/core.py`, `router/server.py`).
//!
//! ModelInfer: key check, routing fields, version resolution, quota admission, shard and
//! member choice, then the original request bytes with the resolved version appended are
//! sent to the first candidate that answers. Another member is tried (at most `retries`
//! more, never past the caller's deadline) after UNAVAILABLE or a broken connection (that
//! member is ejected for `eject_s`) and after a busy refusal carrying `shoal-retry:
//! elsewhere` (not ejected); every other status is the client's answer as the worker gave it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderMap, Request};
use prost::Message;
use rand::Rng;

use super::auth::{bearer, Principal};
use super::forward::{self, CallError, Reply, Retry};
use super::grpc::{self, Code, Status};
use super::oip::{self, RoutingHeader};
use super::policy::choose;
use super::shadow::ShadowJob;
use super::table::{Model, PoolView, Version};
use super::Shared;
use crate::pyfmt::repr;
use crate::resolve::{resolve, ResolveError};
use crate::rpc::reflection;
use crate::rpc::unary::{encode, read_message, reset, send, Answer};

/// NOT_FOUND for what does not exist (the Python router's answers); a version string Python
/// could not read as a number (`²`, 4,300+ digits) is the caller's mistake: INVALID_ARGUMENT.
fn resolve_status(e: ResolveError) -> Status {
    let code = match e {
        _ if e.is_not_found() => Code::NotFound,
        ResolveError::ZeroWeights => Code::Internal,
        _ => Code::InvalidArgument,
    };
    Status::new(code, e.to_string())
}

/// A resolved request: the model, the version that answers, and how it was chosen.
pub struct Route {
    pub model: Arc<Model>,
    pub version: u64,
}

impl Route {
    pub fn spec(&self) -> Option<&Version> {
        self.model.routes.versions.get(&self.version)
    }
}

/// `name` must read `tenant/name`, each part a valid identifier (`shoal/records.py`).
pub fn split_model_name(model: &str) -> Result<(&str, &str), String> {
    let Some((tenant, name)) = model.split_once('/') else {
        return Err(format!("model name {} must be 'tenant/name'", repr(model)));
    };
    check_ident("tenant", tenant)?;
    check_ident("model name", name)?;
    Ok((tenant, name))
}

/// Python's `^[a-z0-9][a-z0-9_.-]{0,62}$` (whose `$` also matches before a final newline).
fn check_ident(kind: &str, value: &str) -> Result<(), String> {
    let body = value.strip_suffix('\n').unwrap_or(value);
    let b = body.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b[1..].iter().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b'-')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid {kind} {}: expected [a-z0-9][a-z0-9_.-]{{0,62}}",
            repr(value)
        ))
    }
}

impl Shared {
    /// The caller, when keys are required (None when they are not).
    pub fn principal(&self, headers: &HeaderMap) -> Result<Option<Principal>, Status> {
        if !self.config.auth {
            return Ok(None);
        }
        let token = headers
            .get_all(http::header::AUTHORIZATION)
            .iter()
            .find_map(|v| bearer(Some(v.as_bytes())));
        self.keys
            .check(&self.table, token)
            .map(Some)
            .map_err(|e| Status::new(Code::Unauthenticated, e.to_string()))
    }

    /// The model `tenant/name` as the caller may see it: another tenant's model answers
    /// exactly like one that does not exist.
    pub fn visible(
        &self,
        model_name: &str,
        principal: Option<&Principal>,
    ) -> Result<Arc<Model>, Status> {
        let (tenant, name) =
            split_model_name(model_name).map_err(|m| Status::new(Code::InvalidArgument, m))?;
        let full = format!("{tenant}/{name}");
        let foreign = principal.is_some_and(|p| !p.admin() && p.tenant != tenant);
        match self.table.model(&full) {
            Some(m) if !foreign => Ok(m),
            _ => Err(Status::new(
                Code::NotFound,
                format!("unknown model {model_name}"),
            )),
        }
    }

    /// Resolve the model and version; with a principal, only the caller's own tenant (another
    /// tenant's model answers exactly like one that does not exist).
    pub fn route(
        &self,
        model_name: &str,
        model_version: &str,
        principal: Option<&Principal>,
    ) -> Result<Route, Status> {
        let model = self.visible(model_name, principal)?;
        let (version, _, via) = resolve(&model.routes, &model.full_name, model_version, || {
            self.random()
        })
        .map_err(resolve_status)?;
        self.stats.resolved(via);
        Ok(Route {
            model: model.clone(),
            version,
        })
    }

    pub fn random(&self) -> f64 {
        self.rng
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .random::<f64>()
    }

    /// Members to try for `version` of `model`, best first, with their pool.
    pub fn candidates(
        &self,
        model: &Model,
        version: u64,
        spec: &Version,
    ) -> Result<(Arc<PoolView>, Vec<usize>), Status> {
        let Some(pool) = self.table.pool(&spec.pool) else {
            return Err(Status::new(
                Code::Unavailable,
                format!("no workers in pool {} yet", repr(&spec.pool)),
            ));
        };
        let cfg = self.table.tenant(&model.tenant);
        let (ranked, k) = pool.ranked(&model.tenant, cfg.as_deref());
        let key = format!("{}:{version}", model.full_name);
        let members = &self.members;
        let order = choose(
            &ranked,
            k,
            &key,
            self.config.spill_at,
            |m| members.in_flight(&pool.members[m].worker_id),
            |m| !pool.live[m] || members.ejected(&pool.members[m].worker_id),
        );
        Ok((pool, order))
    }

    /// Send `payload` (a framed request) to the first candidate that answers (module doc).
    pub async fn forward(
        &self,
        pool: &PoolView,
        candidates: &[usize],
        payload: &[Bytes; 3],
        deadline: Instant,
    ) -> Result<Reply, Status> {
        let attempts = candidates.len().min(1 + self.config.retries);
        let mut last: Option<Status> = None;
        for (i, &m) in candidates[..attempts].iter().enumerate() {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                break;
            }
            if i > 0 {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
            }
            let member = &pool.members[m];
            let state = self.members.get(&member.worker_id);
            let _in_flight = self.members.start(&state);
            let body = forward::payload(payload);
            match self.upstreams.infer(&member.address, body, remaining).await {
                Ok(reply) if reply.status.code == Code::Ok => {
                    self.members.success(&state);
                    return Ok(reply);
                }
                Ok(reply) => {
                    if reply.retry == Retry::Nowhere {
                        return Err(reply.status); // every member would say the same
                    }
                    if reply.status.code == Code::Unavailable {
                        self.members.failure(&state);
                    } else if reply.retry != Retry::Elsewhere || i + 1 == attempts {
                        return Err(reply.status);
                    }
                    last = Some(reply.status);
                }
                Err(CallError::Unreachable(why)) => {
                    self.members.failure(&state);
                    last = Some(Status::new(Code::Unavailable, why));
                }
                Err(CallError::Deadline) => {
                    return Err(Status::new(Code::DeadlineExceeded, "Deadline Exceeded"));
                }
            }
        }
        match last {
            None => Err(Status::new(
                Code::DeadlineExceeded,
                "deadline passed before a worker answered",
            )),
            Some(s) => Err(Status::new(
                Code::Unavailable,
                format!(
                    "no worker answered after {attempts} attempt(s): {}",
                    s.message
                ),
            )),
        }
    }

    /// The deadline a call runs to: the caller's `grpc-timeout`, else the default.
    fn timeout(&self, headers: &HeaderMap) -> Duration {
        headers
            .get(grpc::names::GRPC_TIMEOUT)
            .and_then(|v| v.to_str().ok())
            .and_then(grpc::parse_timeout)
            .unwrap_or(self.config.default_timeout)
    }

    pub async fn infer(&self, headers: &HeaderMap, msg: Bytes) -> Result<Bytes, Status> {
        let principal = self.principal(headers)?;
        let header = RoutingHeader::decode(&msg[..])
            .map_err(|_| Status::new(Code::InvalidArgument, "malformed ModelInferRequest"))?;
        let route = self.route(
            &header.model_name,
            &header.model_version,
            principal.as_ref(),
        )?;
        let (model, version, start) = (route.model.clone(), route.version, Instant::now());
        let result = self.infer_routed(headers, msg, route).await;
        let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.stats
            .model_request(&model.full_name, version, result.is_ok(), ns);
        result
    }

    async fn infer_routed(
        &self,
        headers: &HeaderMap,
        msg: Bytes,
        route: Route,
    ) -> Result<Bytes, Status> {
        let Some(spec) = route.spec() else {
            return Err(Status::new(Code::NotFound, "version vanished"));
        };
        let model = &route.model;
        let cfg = self.table.tenant(&model.tenant);
        let timeout = self.timeout(headers);
        let deadline = Instant::now() + timeout;
        let (rate, cap) = cfg
            .as_ref()
            .map_or((0.0, 0), |c| (c.rate_limit, c.max_in_flight));
        let admitted = match self
            .quotas
            .admit(&model.tenant, rate, cap, Some(timeout.as_secs_f64()))
            .await
        {
            Ok(a) => a,
            Err(e) => {
                self.stats.quota_refused.fetch_add(1, Ordering::Relaxed);
                return Err(Status::new(Code::ResourceExhausted, e.0));
            }
        };
        if admitted.queued {
            self.stats.quota_queued.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.count_tenant(&model.tenant);
        let (pool, candidates) = self.candidates(model, route.version, spec)?;
        let field = Bytes::from(oip::version_field(route.version));
        let payload = [
            grpc::frame_header(msg.len() + field.len()),
            msg.clone(),
            field,
        ];
        let reply = self.forward(&pool, &candidates, &payload, deadline).await?;
        drop(admitted);
        self.maybe_shadow(&route, &msg, &reply.body);
        Ok(reply.body)
    }

    fn maybe_shadow(&self, route: &Route, request: &Bytes, response: &Bytes) {
        let Some(shadow) = route.model.shadow else {
            return;
        };
        if shadow.version == route.version || self.random() * 100.0 >= shadow.percent {
            return;
        }
        let job = ShadowJob {
            model: route.model.clone(),
            primary_version: route.version,
            shadow_version: shadow.version,
            request: request.clone(),
            primary: response.clone(),
        };
        if !self.shadow.offer(job) {
            self.stats.shadow_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn model_ready(&self, headers: &HeaderMap, msg: &[u8]) -> Result<Bytes, Status> {
        let principal = self.principal(headers)?;
        let req = oip::ModelRequest::decode(msg)
            .map_err(|_| Status::new(Code::InvalidArgument, "malformed ModelReadyRequest"))?;
        let ready = self.is_ready(&req.name, &req.version, principal.as_ref());
        Ok(encode(&oip::ModelReadyResponse { ready }))
    }

    /// A live member of the shard can serve the version `version` resolves to (false for
    /// what the caller may not see).
    pub fn is_ready(&self, name: &str, version: &str, principal: Option<&Principal>) -> bool {
        self.route(name, version, principal)
            .ok()
            .and_then(|r| {
                let spec = r.spec()?;
                let (pool, order) = self.candidates(&r.model, r.version, spec).ok()?;
                Some(order.iter().any(|&m| pool.live[m]))
            })
            .unwrap_or(false)
    }

    fn model_metadata(&self, headers: &HeaderMap, msg: &[u8]) -> Result<Bytes, Status> {
        let principal = self.principal(headers)?;
        let req = oip::ModelRequest::decode(msg)
            .map_err(|_| Status::new(Code::InvalidArgument, "malformed ModelMetadataRequest"))?;
        let route = self.route(&req.name, &req.version, principal.as_ref())?;
        let Some(v) = route.spec() else {
            return Err(Status::new(Code::NotFound, "version vanished"));
        };
        let tensors = |list: &[super::table::Tensor]| {
            list.iter()
                .map(|t| oip::TensorMetadata {
                    name: t.0.clone(),
                    datatype: t.1.clone(),
                    shape: t.2.clone(),
                })
                .collect()
        };
        Ok(encode(&oip::ModelMetadataResponse {
            name: req.name,
            versions: route
                .model
                .routes
                .versions
                .keys()
                .map(u64::to_string)
                .collect(),
            platform: oip::platform(&v.framework).to_string(),
            inputs: tensors(&v.signature.inputs),
            outputs: tensors(&v.signature.outputs),
        }))
    }

    fn health(&self, msg: &[u8]) -> Result<Bytes, Status> {
        let req = oip::HealthCheckRequest::decode(msg)
            .map_err(|_| Status::new(Code::InvalidArgument, "malformed HealthCheckRequest"))?;
        match self.serving(&req.service) {
            oip::Serving::ServiceUnknown => Err(Status::new(
                Code::NotFound,
                format!("unknown service {}", req.service),
            )),
            s => Ok(encode(&oip::HealthCheckResponse::of(s))),
        }
    }

    /// The health of `service` ("" is the whole server).
    pub fn serving(&self, service: &str) -> oip::Serving {
        if !matches!(service, "" | "inference.GRPCInferenceService") {
            return oip::Serving::ServiceUnknown;
        }
        if self.view.ready.load(Ordering::Acquire) && !self.draining.load(Ordering::Acquire) {
            oip::Serving::Serving
        } else {
            oip::Serving::NotServing
        }
    }
}

/// Answer one HTTP/2 stream. Work stops when the client resets the stream.
pub async fn handle(
    shared: Arc<Shared>,
    req: Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let path = req.uri().path();
    if let Some(m) = path
        .strip_prefix(reflection::V1)
        .or_else(|| path.strip_prefix(reflection::V1ALPHA))
    {
        if m == "ServerReflectionInfo" {
            let max = shared.config.max_message_bytes;
            return reflection::serve(req, respond, max).await;
        }
    }
    let method = if let Some(m) = path.strip_prefix(oip::SERVICE) {
        (false, m.to_string())
    } else if let Some(m) = path.strip_prefix(oip::HEALTH) {
        (true, m.to_string())
    } else {
        let status = Status::new(Code::Unimplemented, format!("Method not found: {path}"));
        return send(respond, Answer::Failure(status));
    };
    if method.0 && method.1 == "Watch" {
        return crate::rpc::health::watch(shared, req, respond).await;
    }
    if !method.0 && method.1 == "ModelStreamInfer" {
        return super::stream::stream_infer(shared, req, respond).await;
    }
    let work = answer(&shared, method, req);
    tokio::pin!(work);
    let answer = tokio::select! {
        a = &mut work => a,
        _ = reset(&mut respond) => return,
    };
    send(respond, answer);
}

async fn answer(shared: &Shared, method: (bool, String), req: Request<RecvStream>) -> Answer {
    let (headers, msg) = match read_message(req, shared.config.max_message_bytes).await {
        Ok(x) => x,
        Err(s) => return Answer::Failure(s),
    };
    match (method.0, method.1.as_str()) {
        (false, "ModelInfer") => {
            let start = Instant::now();
            shared.stats.in_flight.fetch_add(1, Ordering::Relaxed);
            let result = shared.infer(&headers, msg).await;
            shared.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
            let code = result.as_ref().map_or_else(|s| s.code, |_| Code::Ok);
            shared.stats.request(code, start.elapsed().as_secs_f64());
            result.into()
        }
        (false, "ServerLive") => {
            Answer::Message(encode(&oip::ServerLiveResponse { live: true }), None)
        }
        (false, "ServerReady") => {
            let ready = shared.view.ready.load(Ordering::Acquire);
            let stale = shared.view.stale.load(Ordering::Acquire);
            let view = if stale { "stale" } else { "current" };
            Answer::Message(
                encode(&oip::ServerReadyResponse { ready }),
                Some((grpc::names::SHOAL_VIEW, view)),
            )
        }
        (false, "ServerMetadata") => Answer::Message(
            encode(&oip::ServerMetadataResponse {
                name: shared.config.name.clone(),
                version: shared.config.version.clone(),
                // Triton's names for what the gateway serves beyond the core protocol.
                extensions: ["model_configuration", "statistics"]
                    .map(String::from)
                    .to_vec(),
            }),
            None,
        ),
        (false, "ModelReady") => shared.model_ready(&headers, &msg).into(),
        (false, "ModelMetadata") => shared.model_metadata(&headers, &msg).into(),
        (false, "ModelConfig") => shared.model_config(&headers, &msg).into(),
        (false, "ModelStatistics") => shared.model_statistics(&headers, &msg).await.into(),
        (false, "RepositoryIndex") => match shared.repository_index(&headers, &msg) {
            Ok((framed, trailers)) => Answer::MessageWithTrailers(framed, trailers),
            Err(s) => Answer::Failure(s),
        },
        (true, "Check") => shared.health(&msg).into(),
        (_, m) => Answer::Failure(Status::new(
            Code::Unimplemented,
            format!("Method not found: {m}"),
        )),
    }
}

impl crate::rpc::health::Health for Shared {
    fn status(&self, service: &str) -> oip::Serving {
        self.serving(service)
    }

    fn watchers(&self) -> &tokio::sync::watch::Sender<bool> {
        &self.health
    }

    fn who(&self) -> &'static str {
        "the gateway"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_are_checked_like_python() {
        assert_eq!(split_model_name("acme/churn"), Ok(("acme", "churn")));
        assert_eq!(
            split_model_name("acme"),
            Err("model name 'acme' must be 'tenant/name'".to_string())
        );
        assert_eq!(
            split_model_name("Acme/churn"),
            Err("invalid tenant 'Acme': expected [a-z0-9][a-z0-9_.-]{0,62}".to_string())
        );
        assert_eq!(
            split_model_name("acme/a/b"),
            Err("invalid model name 'a/b': expected [a-z0-9][a-z0-9_.-]{0,62}".to_string())
        );
        assert_eq!(
            split_model_name("acme/"),
            Err("invalid model name '': expected [a-z0-9][a-z0-9_.-]{0,62}".to_string())
        );
        assert!(split_model_name(&format!("acme/{}", "a".repeat(63))).is_ok());
        assert!(split_model_name(&format!("acme/{}", "a".repeat(64))).is_err());
        // Python's `$` matches before a final newline.
        assert!(split_model_name("acme/churn\n").is_ok());
    }
}

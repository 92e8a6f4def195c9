//! Triton's model-repository calls, answered from the gateway's table and counters:
//! `ModelConfig` (derived from the signature), `ModelStatistics` (per model version, the
//! gateway's success and failure counts and cumulative durations) and `RepositoryIndex` (the
//! caller's own models; admin keys, or no keys, see every tenant's). Another tenant's model
//! answers exactly like a missing one, on every call.
//!
//! The index is paged: at most `shoal-page-size` models (default `DEFAULT_PAGE`) from after
//! `shoal-page-token` (request metadata); when more remain, the answer's trailers carry
//! `shoal-next-page-token`. Field numbers are Triton's (grpc_service.proto, model_config.proto).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use prost::Message;

use super::auth::Principal;
use super::forward;
use super::oip::{self, ModelRequest};
use super::table::{Model, Tensor, Version};
use super::Shared;
use crate::rpc::grpc::{self, Code, Status};
use crate::rpc::unary::encode;

pub const PAGE_SIZE: HeaderName = HeaderName::from_static("shoal-page-size");
pub const PAGE_TOKEN: HeaderName = HeaderName::from_static("shoal-page-token");
pub const NEXT_PAGE_TOKEN: HeaderName = HeaderName::from_static("shoal-next-page-token");
pub const DEFAULT_PAGE: usize = 10_000;
/// How long ModelStatistics waits for each worker's counters.
pub const WORKER_WAIT: Duration = Duration::from_secs(1);

#[derive(Clone, PartialEq, Message)]
pub struct ModelInput {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(int64, repeated, tag = "4")]
    pub dims: Vec<i64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ModelOutput {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(int64, repeated, tag = "3")]
    pub dims: Vec<i64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ModelConfig {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub platform: String,
    #[prost(int32, tag = "4")]
    pub max_batch_size: i32,
    #[prost(message, repeated, tag = "5")]
    pub input: Vec<ModelInput>,
    #[prost(message, repeated, tag = "6")]
    pub output: Vec<ModelOutput>,
    #[prost(string, tag = "17")]
    pub backend: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct ModelConfigResponse {
    #[prost(message, optional, tag = "1")]
    pub config: Option<ModelConfig>,
}

#[derive(Clone, Copy, PartialEq, Message)]
pub struct StatisticDuration {
    #[prost(uint64, tag = "1")]
    pub count: u64,
    #[prost(uint64, tag = "2")]
    pub ns: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct InferStatistics {
    #[prost(message, optional, tag = "1")]
    pub success: Option<StatisticDuration>,
    #[prost(message, optional, tag = "2")]
    pub fail: Option<StatisticDuration>,
    /// The workers' runtime calls and their time (summed over the shard's workers).
    #[prost(message, optional, tag = "5")]
    pub compute_infer: Option<StatisticDuration>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ModelStatistics {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
    #[prost(uint64, tag = "3")]
    pub last_inference: u64,
    #[prost(uint64, tag = "4")]
    pub inference_count: u64,
    #[prost(uint64, tag = "5")]
    pub execution_count: u64,
    #[prost(message, optional, tag = "6")]
    pub inference_stats: Option<InferStatistics>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ModelStatisticsResponse {
    #[prost(message, repeated, tag = "1")]
    pub model_stats: Vec<ModelStatistics>,
}

#[derive(Clone, PartialEq, Message)]
pub struct RepositoryIndexRequest {
    #[prost(string, tag = "1")]
    pub repository_name: String,
    #[prost(bool, tag = "2")]
    pub ready: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct ModelIndex {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
    #[prost(string, tag = "3")]
    pub state: String,
    #[prost(string, tag = "4")]
    pub reason: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct RepositoryIndexResponse {
    #[prost(message, repeated, tag = "1")]
    pub models: Vec<ModelIndex>,
}

/// model_config.proto's DataType for a protocol datatype name (TYPE_INVALID when unknown).
pub fn data_type(datatype: &str) -> i32 {
    match datatype {
        "BOOL" => 1,
        "UINT8" => 2,
        "UINT16" => 3,
        "UINT32" => 4,
        "UINT64" => 5,
        "INT8" => 6,
        "INT16" => 7,
        "INT32" => 8,
        "INT64" => 9,
        "FP16" => 10,
        "FP32" => 11,
        "FP64" => 12,
        "BYTES" => 13,
        "BF16" => 14,
        _ => 0,
    }
}

/// Triton's backend name for a framework.
fn backend(framework: &str) -> &str {
    match framework {
        "onnx" => "onnxruntime",
        other => other,
    }
}

/// The config of one version: its signature's tensors with their full shapes (the batch
/// dimension is -1 in `dims`, so `max_batch_size` is 0, as Triton states such models).
pub fn config_of(name: &str, v: &Version) -> ModelConfig {
    let input = |t: &Tensor| ModelInput {
        name: t.0.clone(),
        data_type: data_type(&t.1),
        dims: t.2.clone(),
    };
    let output = |t: &Tensor| ModelOutput {
        name: t.0.clone(),
        data_type: data_type(&t.1),
        dims: t.2.clone(),
    };
    ModelConfig {
        name: name.to_string(),
        platform: oip::platform(&v.framework).to_string(),
        max_batch_size: 0,
        input: v.signature.inputs.iter().map(input).collect(),
        output: v.signature.outputs.iter().map(output).collect(),
        backend: backend(&v.framework).to_string(),
    }
}

fn decode<M: Message + Default>(msg: &[u8], what: &str) -> Result<M, Status> {
    M::decode(msg).map_err(|_| Status::new(Code::InvalidArgument, format!("malformed {what}")))
}

impl Shared {
    /// The config of `name` `version` as the caller may see it.
    pub fn config(
        &self,
        principal: Option<&Principal>,
        name: &str,
        version: &str,
    ) -> Result<ModelConfig, Status> {
        let route = self.route(name, version, principal)?;
        let Some(v) = route.spec() else {
            return Err(Status::new(Code::NotFound, "version vanished"));
        };
        Ok(config_of(name, v))
    }

    pub fn model_config(&self, headers: &HeaderMap, msg: &[u8]) -> Result<Bytes, Status> {
        let principal = self.principal(headers)?;
        let req: ModelRequest = decode(msg, "ModelConfigRequest")?;
        let config = self.config(principal.as_ref(), &req.name, &req.version)?;
        Ok(encode(&ModelConfigResponse {
            config: Some(config),
        }))
    }

    fn statistics_of(&self, model: &Model, version: u64) -> ModelStatistics {
        let s = self.stats.model_stat(&model.full_name, version);
        // The counts of rows and executions are the workers' (`statistics` fills them in).
        ModelStatistics {
            name: model.full_name.clone(),
            version: version.to_string(),
            last_inference: s.last_ms,
            inference_count: 0,
            execution_count: 0,
            inference_stats: Some(InferStatistics {
                success: Some(StatisticDuration {
                    count: s.success.0,
                    ns: s.success.1,
                }),
                fail: Some(StatisticDuration {
                    count: s.fail.0,
                    ns: s.fail.1,
                }),
                compute_infer: None,
            }),
        }
    }

    /// Every model the caller may see (sorted by name).
    pub fn visible_models(&self, principal: Option<&Principal>) -> Vec<Arc<Model>> {
        let tenant = principal.filter(|p| !p.admin()).map(|p| p.tenant.as_str());
        let mut models = self.table.models(tenant);
        models.sort_by(|a, b| a.full_name.cmp(&b.full_name));
        models
    }

    /// Statistics of every version of every model the caller may see (`name` empty), of every
    /// version of `name` (`version` empty), or of the version `version` resolves to: the
    /// gateway's request counts and durations, with the workers' executions, rows and
    /// compute time summed over every live worker (each asked once, `WORKER_WAIT` at most;
    /// one that does not answer adds nothing).
    pub async fn statistics(
        &self,
        principal: Option<&Principal>,
        name: &str,
        version: &str,
    ) -> Result<Vec<ModelStatistics>, Status> {
        let mut out = Vec::new();
        let mut ask = ModelRequest::default();
        if name.is_empty() {
            for model in self.visible_models(principal) {
                for &version in model.routes.versions.keys() {
                    out.push(self.statistics_of(&model, version));
                }
            }
        } else if version.is_empty() {
            let model = self.visible(name, principal)?;
            for &version in model.routes.versions.keys() {
                out.push(self.statistics_of(&model, version));
            }
            ask.name = model.full_name.clone();
        } else {
            let route = self.route(name, version, principal)?;
            out.push(self.statistics_of(&route.model, route.version));
            ask.name = route.model.full_name.clone();
            ask.version = route.version.to_string();
        }
        let counted = self.worker_counts(&ask).await;
        for s in &mut out {
            let key = (s.name.clone(), s.version.clone());
            let (rows, executions, ns) = counted.get(&key).copied().unwrap_or_default();
            s.inference_count = rows;
            s.execution_count = executions;
            if let Some(st) = s.inference_stats.as_mut() {
                st.compute_infer = Some(StatisticDuration {
                    count: executions,
                    ns,
                });
            }
        }
        Ok(out)
    }

    /// (model, version) -> (rows, executions, compute ns), summed over the live workers.
    async fn worker_counts(
        &self,
        ask: &ModelRequest,
    ) -> HashMap<(String, String), (u64, u64, u64)> {
        let msg = Bytes::from(ask.encode_to_vec());
        let mut addresses = BTreeSet::new();
        for pool in self.table.pools() {
            for (m, live) in pool.members.iter().zip(&pool.live) {
                if *live {
                    addresses.insert(m.address.clone());
                }
            }
        }
        let calls = addresses.iter().map(|address| {
            let payload =
                forward::payload(&[grpc::frame_header(msg.len()), msg.clone(), Bytes::new()]);
            self.upstreams
                .call(address, forward::Call::Statistics, payload, WORKER_WAIT)
        });
        let mut sums: HashMap<(String, String), (u64, u64, u64)> = HashMap::new();
        for reply in futures_util::future::join_all(calls).await {
            let Ok(reply) = reply else { continue };
            if reply.status.code != Code::Ok {
                continue;
            }
            let Ok(inner) = grpc::unary_message(&reply.body, None, 64 << 20) else {
                continue;
            };
            let Ok(resp) = ModelStatisticsResponse::decode(&inner[..]) else {
                continue;
            };
            for s in resp.model_stats {
                let compute = s
                    .inference_stats
                    .and_then(|st| st.compute_infer)
                    .unwrap_or_default();
                let e = sums.entry((s.name, s.version)).or_default();
                e.0 = e.0.saturating_add(s.inference_count);
                e.1 = e.1.saturating_add(s.execution_count);
                e.2 = e.2.saturating_add(compute.ns);
            }
        }
        sums
    }

    pub async fn model_statistics(&self, headers: &HeaderMap, msg: &[u8]) -> Result<Bytes, Status> {
        let principal = self.principal(headers)?;
        let req: ModelRequest = decode(msg, "ModelStatisticsRequest")?;
        let model_stats = self
            .statistics(principal.as_ref(), &req.name, &req.version)
            .await?;
        Ok(encode(&ModelStatisticsResponse { model_stats }))
    }

    /// READY when a live member of its shard can serve the version, else why not.
    fn state_of(&self, model: &Model, version: u64, v: &Version) -> (bool, String) {
        match self.candidates(model, version, v) {
            Ok((pool, order)) if order.iter().any(|&m| pool.live[m]) => (true, String::new()),
            Ok(_) => (false, "no live worker in its shard".to_string()),
            Err(s) => (false, s.message),
        }
    }

    /// One page of the index: at most `size` models after `after` (by name), and the token of
    /// the next page when more remain.
    pub fn index(
        &self,
        principal: Option<&Principal>,
        ready_only: bool,
        size: usize,
        after: &str,
    ) -> (Vec<ModelIndex>, Option<String>) {
        let models = self.visible_models(principal);
        let start = models.partition_point(|m| m.full_name.as_str() <= after);
        let page = &models[start..models.len().min(start.saturating_add(size))];
        let mut out = Vec::new();
        for model in page {
            for (&version, v) in &model.routes.versions {
                let (ready, reason) = self.state_of(model, version, v);
                if ready_only && !ready {
                    continue;
                }
                out.push(ModelIndex {
                    name: model.full_name.clone(),
                    version: version.to_string(),
                    state: if ready { "READY" } else { "UNAVAILABLE" }.to_string(),
                    reason,
                });
            }
        }
        let next = (start + page.len() < models.len())
            .then(|| page.last().map(|m| m.full_name.clone()))
            .flatten();
        (out, next)
    }

    pub fn repository_index(
        &self,
        headers: &HeaderMap,
        msg: &[u8],
    ) -> Result<(Bytes, HeaderMap), Status> {
        let principal = self.principal(headers)?;
        let req: RepositoryIndexRequest = decode(msg, "RepositoryIndexRequest")?;
        let text = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
        let size = page_size(text(&PAGE_SIZE))?;
        let after = text(&PAGE_TOKEN).unwrap_or("");
        let (models, next) = self.index(principal.as_ref(), req.ready, size, after);
        let mut trailers = HeaderMap::new();
        // Model names are checked identifiers: always a valid header value.
        if let Some(v) = next.and_then(|n| HeaderValue::from_str(&n).ok()) {
            trailers.insert(NEXT_PAGE_TOKEN, v);
        }
        Ok((encode(&RepositoryIndexResponse { models }), trailers))
    }
}

/// A page size as asked for (`DEFAULT_PAGE` when not).
pub fn page_size(asked: Option<&str>) -> Result<usize, Status> {
    match asked {
        None => Ok(DEFAULT_PAGE),
        // A bound, not a count: a size past what fits is as good as "all".
        Some(s) if !s.trim().is_empty() && s.trim().bytes().all(|b| b.is_ascii_digit()) => {
            match s.trim().parse::<usize>() {
                Ok(0) => Err(Status::new(
                    Code::InvalidArgument,
                    format!("the page size must be a positive integer, not {s:?}"),
                )),
                Ok(n) => Ok(n),
                Err(_) => Ok(usize::MAX),
            }
        }
        Some(s) => match s.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(Status::new(
                Code::InvalidArgument,
                format!("the page size must be a positive integer, not {s:?}"),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datatypes_map_to_model_config_enum_numbers() {
        let names = [
            "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
            "FP16", "FP32", "FP64", "BYTES", "BF16",
        ];
        for (i, n) in names.iter().enumerate() {
            assert_eq!(data_type(n), i as i32 + 1, "{n}");
        }
        assert_eq!(data_type("COMPLEX"), 0);
    }
}

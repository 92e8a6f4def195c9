//! The REST routes (KServe V2 and Triton's extensions), each answered like its gRPC twin.
//!
//! | route | answer |
//! |---|---|
//! | `GET /v2/health/live`, `/v2/health/ready` | 200, or 503 when not ready (KServe's) |
//! | `GET /v2` | server metadata |
//! | `GET /v2/models/{tenant}/{name}[/versions/{v}]` | model metadata |
//! | `GET .../ready` | 200 when a live worker can serve it, else 503 |
//! | `POST .../infer` | inference (JSON, or JSON + binary tensors) |
//! | `GET .../config` | the model config |
//! | `GET .../stats`, `GET /v2/models/stats` | statistics |
//! | `POST /v2/repository/index` | the caller's models (`?page_size=&page_token=`) |
//! | `GET /v2/openapi.json` | the OpenAPI document of this surface |

use std::io::Read;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::{json, Value};

use super::reply;
use super::tensors::{self, BadRequest};
use crate::gateway::auth::Principal;
use crate::gateway::repository::{self, ModelConfig, ModelStatistics};
use crate::gateway::{oip, Shared};
use crate::rpc::grpc::{percent_decode, Code, Status};

pub const OPENAPI: &str = include_str!("../../../shoal/openapi.json");
const JSON: &str = "application/json";
const HEADER_LENGTH: &str = "inference-header-content-length";

/// Triton's HTTP status for a gRPC code.
pub fn http_status(code: Code) -> u16 {
    match code {
        Code::Ok => 200,
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => 400,
        Code::Unauthenticated => 401,
        Code::PermissionDenied => 403,
        Code::NotFound => 404,
        Code::AlreadyExists | Code::Aborted => 409,
        Code::ResourceExhausted => 429,
        Code::Cancelled => 499,
        Code::Unimplemented => 501,
        Code::Unavailable => 503,
        Code::DeadlineExceeded => 504,
        Code::Unknown | Code::Internal | Code::DataLoss => 500,
    }
}

fn error(status: u16, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::to_vec(&json!({ "error": message })).unwrap_or_default();
    let mut resp = reply(status, JSON, Bytes::from(body));
    if status == 401 {
        resp.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
    }
    resp
}

fn failure(s: &Status) -> Response<Full<Bytes>> {
    let mut resp = error(http_status(s.code), &s.message);
    if let Ok(v) = HeaderValue::from_str(s.code.name()) {
        resp.headers_mut().insert("shoal-status", v);
    }
    resp
}

fn ok_json(v: &Value) -> Response<Full<Bytes>> {
    reply(
        200,
        JSON,
        Bytes::from(serde_json::to_vec(v).unwrap_or_default()),
    )
}

/// What a path names.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    Live,
    Ready,
    Server,
    OpenApi,
    AllStats,
    Index,
    Model {
        name: String,
        version: String,
        what: Tail,
    },
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Tail {
    Metadata,
    Ready,
    Infer,
    Config,
    Stats,
}

fn parse(path: &str) -> Option<Route> {
    let segments: Vec<String> = path
        .trim_start_matches('/')
        .split('/')
        .map(|s| percent_decode(s.as_bytes()))
        .collect();
    let s: Vec<&str> = segments.iter().map(String::as_str).collect();
    Some(match s.as_slice() {
        ["v2", "health", "live"] => Route::Live,
        ["v2", "health", "ready"] => Route::Ready,
        ["v2"] | ["v2", ""] => Route::Server,
        ["v2", "openapi.json"] => Route::OpenApi,
        ["v2", "models", "stats"] => Route::AllStats,
        ["v2", "repository", "index"] => Route::Index,
        ["v2", "models", rest @ ..] => {
            // `tenant/name` as two segments (what tritonclient sends), or one with %2F.
            let (name, rest) = match rest {
                [one, rest @ ..] if one.contains('/') => ((*one).to_string(), rest),
                [tenant, model, rest @ ..] => (format!("{tenant}/{model}"), rest),
                _ => return None,
            };
            let (version, tail) = match rest {
                ["versions", v, tail @ ..] => ((*v).to_string(), tail),
                tail => (String::new(), tail),
            };
            let what = match tail {
                [] => Tail::Metadata,
                ["ready"] => Tail::Ready,
                ["infer"] => Tail::Infer,
                ["config"] => Tail::Config,
                ["stats"] => Tail::Stats,
                _ => return None,
            };
            Route::Model {
                name,
                version,
                what,
            }
        }
        _ => return None,
    })
}

fn allowed(route: &Route) -> Method {
    match route {
        Route::Index
        | Route::Model {
            what: Tail::Infer, ..
        } => Method::POST,
        _ => Method::GET,
    }
}

/// The body, decompressed when `Content-Encoding` says so, within `max` bytes.
async fn body(req: Request<Incoming>, max: usize) -> Result<(HeaderMap, Bytes), Status> {
    let (parts, incoming) = req.into_parts();
    let too_large = || {
        Status::new(
            Code::ResourceExhausted,
            format!("request body larger than max ({max} bytes)"),
        )
    };
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(too_large());
    }
    let raw = Limited::new(incoming, max)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                too_large()
            } else {
                Status::new(Code::Cancelled, format!("request body broke off: {e}"))
            }
        })?
        .to_bytes();
    let encoding = parts
        .headers
        .get(http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let mut out = Vec::new();
    let limit = (max as u64).saturating_add(1);
    let read = match encoding {
        None | Some("identity") | Some("") => return Ok((parts.headers, raw)),
        Some("gzip") => flate2::read::GzDecoder::new(&raw[..])
            .take(limit)
            .read_to_end(&mut out),
        Some("deflate") => flate2::read::ZlibDecoder::new(&raw[..])
            .take(limit)
            .read_to_end(&mut out),
        Some(other) => {
            return Err(Status::new(
                Code::Unimplemented,
                format!("unsupported Content-Encoding {other}"),
            ))
        }
    };
    read.map_err(|e| {
        Status::new(
            Code::InvalidArgument,
            format!("body does not decompress: {e}"),
        )
    })?;
    if out.len() > max {
        return Err(too_large());
    }
    Ok((parts.headers, Bytes::from(out)))
}

pub async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let Some(route) = parse(req.uri().path()) else {
        return error(404, &format!("no route for {}", req.uri().path()));
    };
    if req.method() != allowed(&route) {
        let mut resp = error(405, &format!("{} is not allowed here", req.method()));
        if let Ok(v) = HeaderValue::from_str(allowed(&route).as_str()) {
            resp.headers_mut().insert(http::header::ALLOW, v);
        }
        return resp;
    }
    let query = req.uri().query().unwrap_or("").to_string();
    let accept_gzip = req
        .headers()
        .get(http::header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|e| e.trim().starts_with("gzip")));
    let (headers, body) = match body(req, shared.config.max_message_bytes).await {
        Ok(x) => x,
        Err(s) if s.code == Code::ResourceExhausted => return error(413, &s.message),
        Err(s) => return failure(&s),
    };
    let resp = match answer(&shared, route, &headers, body, &query).await {
        Ok(r) => r,
        Err(s) => failure(&s),
    };
    if accept_gzip {
        compress(resp)
    } else {
        resp
    }
}

fn compress(resp: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    use std::io::Write;
    let (mut parts, body) = resp.into_parts();
    // `Full` holds the whole body: one frame, collected without waiting.
    let Some(bytes) = futures_util::FutureExt::now_or_never(body.collect()) else {
        return Response::from_parts(parts, Full::new(Bytes::new()));
    };
    let bytes = match bytes {
        Ok(c) => c.to_bytes(),
        Err(never) => match never {},
    };
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    if enc.write_all(&bytes).is_err() {
        return Response::from_parts(parts, Full::new(bytes));
    }
    let Ok(gz) = enc.finish() else {
        return Response::from_parts(parts, Full::new(bytes));
    };
    parts.headers.insert(
        http::header::CONTENT_ENCODING,
        HeaderValue::from_static("gzip"),
    );
    Response::from_parts(parts, Full::new(Bytes::from(gz)))
}

fn query_param<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn principal(shared: &Shared, headers: &HeaderMap) -> Result<Option<Principal>, Status> {
    shared.principal(headers)
}

async fn answer(
    shared: &Arc<Shared>,
    route: Route,
    headers: &HeaderMap,
    body: Bytes,
    query: &str,
) -> Result<Response<Full<Bytes>>, Status> {
    match route {
        Route::Live => Ok(ok_json(&json!({ "live": true }))),
        Route::Ready => {
            let ready = matches!(shared.serving(""), oip::Serving::Serving);
            let mut resp = ok_json(&json!({ "ready": ready }));
            if !ready {
                *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            }
            Ok(resp)
        }
        Route::Server => Ok(ok_json(&json!({
            "name": shared.config.name,
            "version": shared.config.version,
            "extensions": ["model_configuration", "statistics", "binary_tensor_data"],
        }))),
        Route::OpenApi => Ok(reply(200, JSON, Bytes::from_static(OPENAPI.as_bytes()))),
        Route::AllStats => {
            let p = principal(shared, headers)?;
            let stats = shared.statistics(p.as_ref(), "", "").await?;
            Ok(ok_json(
                &json!({ "model_stats": stats.iter().map(stats_json).collect::<Vec<_>>() }),
            ))
        }
        Route::Index => {
            let p = principal(shared, headers)?;
            let ready = if body.is_empty() {
                false
            } else {
                let v: Value = serde_json::from_slice(&body).map_err(|e| {
                    Status::new(
                        Code::InvalidArgument,
                        format!("malformed index request: {e}"),
                    )
                })?;
                v.get("ready").and_then(Value::as_bool).unwrap_or(false)
            };
            let size = repository::page_size(query_param(query, "page_size"))?;
            let after = query_param(query, "page_token")
                .map(|t| percent_decode(t.as_bytes()))
                .unwrap_or_default();
            let (models, next) = shared.index(p.as_ref(), ready, size, &after);
            let list: Vec<Value> = models
                .iter()
                .map(|m| {
                    json!({"name": m.name, "version": m.version, "state": m.state,
                           "reason": m.reason})
                })
                .collect();
            let mut resp = ok_json(&Value::Array(list));
            if let Some(v) = next.and_then(|n| HeaderValue::from_str(&n).ok()) {
                resp.headers_mut().insert("shoal-next-page-token", v);
            }
            Ok(resp)
        }
        Route::Model {
            name,
            version,
            what,
        } => model(shared, &name, &version, what, headers, body).await,
    }
}

fn tensors_json(list: &[crate::gateway::table::Tensor]) -> Vec<Value> {
    list.iter()
        .map(|t| json!({"name": t.0, "datatype": t.1, "shape": t.2}))
        .collect()
}

fn stats_json(s: &ModelStatistics) -> Value {
    let d = |x: Option<repository::StatisticDuration>| {
        let x = x.unwrap_or_default();
        json!({"count": x.count, "ns": x.ns})
    };
    let st = s.inference_stats.clone().unwrap_or_default();
    json!({
        "name": s.name, "version": s.version, "last_inference": s.last_inference,
        "inference_count": s.inference_count, "execution_count": s.execution_count,
        "inference_stats": {"success": d(st.success), "fail": d(st.fail),
                            "compute_infer": d(st.compute_infer)},
    })
}

fn config_json(c: &ModelConfig) -> Value {
    let ty = |t: i32| {
        let names = [
            "TYPE_INVALID",
            "TYPE_BOOL",
            "TYPE_UINT8",
            "TYPE_UINT16",
            "TYPE_UINT32",
            "TYPE_UINT64",
            "TYPE_INT8",
            "TYPE_INT16",
            "TYPE_INT32",
            "TYPE_INT64",
            "TYPE_FP16",
            "TYPE_FP32",
            "TYPE_FP64",
            "TYPE_STRING",
            "TYPE_BF16",
        ];
        usize::try_from(t)
            .ok()
            .and_then(|i| names.get(i))
            .copied()
            .unwrap_or("TYPE_INVALID")
    };
    json!({
        "name": c.name, "platform": c.platform, "backend": c.backend,
        "max_batch_size": c.max_batch_size,
        "input": c.input.iter().map(|i| json!({"name": i.name, "data_type": ty(i.data_type),
                                                 "dims": i.dims})).collect::<Vec<_>>(),
        "output": c.output.iter().map(|o| json!({"name": o.name, "data_type": ty(o.data_type),
                                                  "dims": o.dims})).collect::<Vec<_>>(),
    })
}

async fn model(
    shared: &Arc<Shared>,
    name: &str,
    version: &str,
    what: Tail,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response<Full<Bytes>>, Status> {
    match what {
        Tail::Infer => return infer(shared, name, version, headers, body).await,
        Tail::Ready => {
            let p = principal(shared, headers)?;
            let ready = shared.is_ready(name, version, p.as_ref());
            let mut resp = ok_json(&json!({"name": name, "ready": ready}));
            if !ready {
                *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
            }
            return Ok(resp);
        }
        _ => {}
    }
    let p = principal(shared, headers)?;
    match what {
        Tail::Config => Ok(ok_json(&config_json(&shared.config(
            p.as_ref(),
            name,
            version,
        )?))),
        Tail::Stats => {
            let stats = shared.statistics(p.as_ref(), name, version).await?;
            Ok(ok_json(
                &json!({ "model_stats": stats.iter().map(stats_json).collect::<Vec<_>>() }),
            ))
        }
        _ => {
            let route = shared.route(name, version, p.as_ref())?;
            let Some(v) = route.spec() else {
                return Err(Status::new(Code::NotFound, "version vanished"));
            };
            let versions: Vec<String> = route
                .model
                .routes
                .versions
                .keys()
                .map(u64::to_string)
                .collect();
            Ok(ok_json(&json!({
                "name": name, "versions": versions,
                "platform": oip::platform(&v.framework),
                "inputs": tensors_json(&v.signature.inputs),
                "outputs": tensors_json(&v.signature.outputs),
            })))
        }
    }
}

async fn infer(
    shared: &Arc<Shared>,
    name: &str,
    version: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response<Full<Bytes>>, Status> {
    // The key first: an unauthenticated caller learns nothing from the body's errors; then
    // the model, so a missing one answers 404 whatever the body (as over gRPC).
    let p = principal(shared, headers)?;
    shared.visible(name, p.as_ref())?;
    let json_len = match headers.get(HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    Status::new(Code::InvalidArgument, "bad Inference-Header-Content-Length")
                })?,
        ),
    };
    let converted = tensors::request(name, version, &body, json_len)
        .map_err(|BadRequest(m)| Status::new(Code::InvalidArgument, m))?;
    let msg = Bytes::from(prost::Message::encode_to_vec(&converted.message));
    let start = Instant::now();
    shared.stats.in_flight.fetch_add(1, Ordering::Relaxed);
    let result = shared.infer(headers, msg).await;
    shared.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    let code = result.as_ref().map_or_else(|s| s.code, |_| Code::Ok);
    shared.stats.request(code, start.elapsed().as_secs_f64());
    let framed = result?;
    let inner = framed.get(5..).unwrap_or_default();
    let answer =
        tensors::response(inner, &converted.binary).map_err(|m| Status::new(Code::Internal, m))?;
    Ok(match answer.json_len {
        None => reply(200, JSON, answer.body),
        Some(n) => {
            let mut resp = reply(200, "application/octet-stream", answer.body);
            resp.headers_mut()
                .insert(HEADER_LENGTH, HeaderValue::from(n as u64));
            resp
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_routes() {
        let m = |name: &str, version: &str, what| Route::Model {
            name: name.into(),
            version: version.into(),
            what,
        };
        assert_eq!(parse("/v2/health/live"), Some(Route::Live));
        assert_eq!(parse("/v2"), Some(Route::Server));
        assert_eq!(parse("/v2/models/stats"), Some(Route::AllStats));
        assert_eq!(
            parse("/v2/models/acme/churn"),
            Some(m("acme/churn", "", Tail::Metadata))
        );
        assert_eq!(
            parse("/v2/models/acme%2Fchurn/infer"),
            Some(m("acme/churn", "", Tail::Infer))
        );
        assert_eq!(
            parse("/v2/models/acme/churn/versions/3/ready"),
            Some(m("acme/churn", "3", Tail::Ready))
        );
        assert_eq!(
            parse("/v2/models/acme/churn/stats"),
            Some(m("acme/churn", "", Tail::Stats))
        );
        assert_eq!(parse("/v2/models/acme"), None);
        assert_eq!(parse("/v2/models/acme/churn/bogus"), None);
        assert_eq!(parse("/v3"), None);
    }

    #[test]
    fn codes_map_to_tritons_statuses() {
        assert_eq!(http_status(Code::NotFound), 404);
        assert_eq!(http_status(Code::InvalidArgument), 400);
        assert_eq!(http_status(Code::Unavailable), 503);
        assert_eq!(http_status(Code::Unauthenticated), 401);
        assert_eq!(http_status(Code::ResourceExhausted), 429);
    }

    #[test]
    fn the_openapi_document_is_json() {
        let v: Value = serde_json::from_str(OPENAPI).expect("valid JSON");
        assert!(v["paths"]["/v2/models/{tenant}/{model}/infer"].is_object());
    }
}

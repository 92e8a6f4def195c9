//! The Open Inference Protocol (KServe V2 / Triton) messages the gateway reads or writes
//! itself, and grpc.health.v1. Field numbers are the protocol's (proto/shoal_inference.proto);
//! tensors are never decoded here: a ModelInferRequest is read through `RoutingHeader`, which
//! skips every other field.

use prost::Message;

pub const SERVICE: &str = "/inference.GRPCInferenceService/";
pub const HEALTH: &str = "/grpc.health.v1.Health/";

/// The routing fields of a ModelInferRequest (1: model_name, 2: model_version, 3: id).
#[derive(Clone, PartialEq, Message)]
pub struct RoutingHeader {
    #[prost(string, tag = "1")]
    pub model_name: String,
    #[prost(string, tag = "2")]
    pub model_version: String,
    #[prost(string, tag = "3")]
    pub id: String,
}

/// `model_version = <version>` as a field to append to a request: protobuf keeps the last
/// value of a scalar field, so the worker reads the pinned version and nothing is re-encoded.
pub fn version_field(version: u64) -> Vec<u8> {
    RoutingHeader {
        model_version: version.to_string(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// A ModelStreamInferResponse (1: error_message, 2: infer_response). The response is read
/// through `RoutingHeader` (its fields 1-3 are ModelInferResponse's model_name, model_version
/// and id): the gateway writes errors with this message and wraps successes by hand.
#[derive(Clone, PartialEq, Message)]
pub struct StreamError {
    #[prost(string, tag = "1")]
    pub error_message: String,
    #[prost(message, optional, tag = "2")]
    pub infer_response: Option<RoutingHeader>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ServerLiveResponse {
    #[prost(bool, tag = "1")]
    pub live: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct ServerReadyResponse {
    #[prost(bool, tag = "1")]
    pub ready: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct ServerMetadataResponse {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
    #[prost(string, repeated, tag = "3")]
    pub extensions: Vec<String>,
}

/// ModelReadyRequest and ModelMetadataRequest have the same fields.
#[derive(Clone, PartialEq, Message)]
pub struct ModelRequest {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub version: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct ModelReadyResponse {
    #[prost(bool, tag = "1")]
    pub ready: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorMetadata {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub datatype: String,
    #[prost(int64, repeated, tag = "3")]
    pub shape: Vec<i64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ModelMetadataResponse {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, repeated, tag = "2")]
    pub versions: Vec<String>,
    #[prost(string, tag = "3")]
    pub platform: String,
    #[prost(message, repeated, tag = "4")]
    pub inputs: Vec<TensorMetadata>,
    #[prost(message, repeated, tag = "5")]
    pub outputs: Vec<TensorMetadata>,
}

#[derive(Clone, PartialEq, Message)]
pub struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    pub service: String,
}

/// grpc.health.v1 serving status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serving {
    Unknown = 0,
    Serving = 1,
    NotServing = 2,
    ServiceUnknown = 3,
}

#[derive(Clone, PartialEq, Message)]
pub struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    pub status: i32,
}

impl HealthCheckResponse {
    pub fn of(status: Serving) -> HealthCheckResponse {
        HealthCheckResponse {
            status: status as i32,
        }
    }
}

/// The V2 platform name of a framework, as the Python router reported it.
pub fn platform(framework: &str) -> &str {
    match framework {
        "xgboost" => "xgboost",
        "lightgbm" => "lightgbm",
        "onnx" => "onnxruntime_onnx",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_appended_version_wins() {
        let mut req = RoutingHeader {
            model_name: "acme/churn".into(),
            model_version: "canary".into(),
            id: "r1".into(),
        }
        .encode_to_vec();
        // An unknown field (raw_input_contents, 7) is skipped, not decoded.
        req.extend_from_slice(&[0x3a, 3, 1, 2, 3]);
        req.extend_from_slice(&version_field(7));
        let h = RoutingHeader::decode(&req[..]).unwrap();
        assert_eq!(
            (
                h.model_name.as_str(),
                h.model_version.as_str(),
                h.id.as_str()
            ),
            ("acme/churn", "7", "r1")
        );
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(RoutingHeader::decode(&[0xff, 0xff, 0xff][..]).is_err());
        // Invalid UTF-8 in a string field: protobuf refuses it too.
        assert!(RoutingHeader::decode(&[0x0a, 1, 0xff][..]).is_err());
    }
}

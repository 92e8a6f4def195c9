//! gRPC server reflection (`grpc.reflection.v1` and `v1alpha`, one message layout), so
//! grpcurl and other reflection clients work without proto files. The descriptors are the
//! set `make proto` compiles from `proto/reflection/` (the inference service under its
//! protocol name, grpc.health.v1, and reflection itself). Reflection describes the API only,
//! never a tenant's models, so it needs no key (as health checks).

use std::collections::{BTreeSet, HashMap};
use std::sync::OnceLock;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{HeaderMap, Request};
use prost::Message;
use prost_types::{DescriptorProto, FileDescriptorProto, FileDescriptorSet};

use super::grpc::{self, Code, Status};
use super::stream::{send_flow_controlled, MessageReader};
use super::unary::headers;

pub const V1: &str = "/grpc.reflection.v1.ServerReflection/";
pub const V1ALPHA: &str = "/grpc.reflection.v1alpha.ServerReflection/";

static DESCRIPTORS: &[u8] = include_bytes!("reflection.binpb");

#[derive(Clone, PartialEq, Message)]
pub struct ExtensionRequest {
    #[prost(string, tag = "1")]
    pub containing_type: String,
    #[prost(int32, tag = "2")]
    pub extension_number: i32,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Ask {
    #[prost(string, tag = "3")]
    FileByFilename(String),
    #[prost(string, tag = "4")]
    FileContainingSymbol(String),
    #[prost(message, tag = "5")]
    FileContainingExtension(ExtensionRequest),
    #[prost(string, tag = "6")]
    AllExtensionNumbersOfType(String),
    #[prost(string, tag = "7")]
    ListServices(String),
}

#[derive(Clone, PartialEq, Message)]
pub struct ReflectionRequest {
    #[prost(string, tag = "1")]
    pub host: String,
    #[prost(oneof = "Ask", tags = "3, 4, 5, 6, 7")]
    pub ask: Option<Ask>,
}

#[derive(Clone, PartialEq, Message)]
pub struct FileDescriptorResponse {
    #[prost(bytes = "vec", repeated, tag = "1")]
    pub file_descriptor_proto: Vec<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ExtensionNumberResponse {
    #[prost(string, tag = "1")]
    pub base_type_name: String,
    #[prost(int32, repeated, tag = "2")]
    pub extension_number: Vec<i32>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ServiceResponse {
    #[prost(string, tag = "1")]
    pub name: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct ListServiceResponse {
    #[prost(message, repeated, tag = "1")]
    pub service: Vec<ServiceResponse>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ErrorResponse {
    #[prost(int32, tag = "1")]
    pub error_code: i32,
    #[prost(string, tag = "2")]
    pub error_message: String,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Answer {
    #[prost(message, tag = "4")]
    Files(FileDescriptorResponse),
    #[prost(message, tag = "5")]
    ExtensionNumbers(ExtensionNumberResponse),
    #[prost(message, tag = "6")]
    Services(ListServiceResponse),
    #[prost(message, tag = "7")]
    Error(ErrorResponse),
}

#[derive(Clone, PartialEq, Message)]
pub struct ReflectionResponse {
    #[prost(string, tag = "1")]
    pub valid_host: String,
    #[prost(message, optional, tag = "2")]
    pub original_request: Option<ReflectionRequest>,
    #[prost(oneof = "Answer", tags = "4, 5, 6, 7")]
    pub answer: Option<Answer>,
}

/// The descriptor set, indexed.
pub struct Index {
    /// File name -> (encoded FileDescriptorProto, its dependencies).
    files: HashMap<String, (Vec<u8>, Vec<String>)>,
    /// Fully-qualified symbol (message, enum, service, method, field) -> file name.
    symbols: HashMap<String, String>,
    /// Fully-qualified message names (the types extension queries may name).
    messages: BTreeSet<String>,
    services: Vec<String>,
}

fn index_message(
    prefix: &str,
    m: &DescriptorProto,
    file: &str,
    symbols: &mut HashMap<String, String>,
    messages: &mut BTreeSet<String>,
) {
    let name = format!("{prefix}.{}", m.name());
    for f in &m.field {
        symbols.insert(format!("{name}.{}", f.name()), file.to_string());
    }
    for e in &m.enum_type {
        symbols.insert(format!("{name}.{}", e.name()), file.to_string());
    }
    for nested in &m.nested_type {
        index_message(&name, nested, file, symbols, messages);
    }
    symbols.insert(name.clone(), file.to_string());
    messages.insert(name);
}

impl Index {
    pub fn build(set: &[u8]) -> Result<Index, prost::DecodeError> {
        let set = FileDescriptorSet::decode(set)?;
        let mut index = Index {
            files: HashMap::new(),
            symbols: HashMap::new(),
            messages: BTreeSet::new(),
            services: Vec::new(),
        };
        for file in &set.file {
            let fname = file.name().to_string();
            let pkg = file.package();
            let prefix = if pkg.is_empty() {
                String::new()
            } else {
                format!(".{pkg}")
            };
            for m in &file.message_type {
                index_message(&prefix, m, &fname, &mut index.symbols, &mut index.messages);
            }
            for e in &file.enum_type {
                index
                    .symbols
                    .insert(format!("{prefix}.{}", e.name()), fname.clone());
            }
            for s in &file.service {
                let name = format!("{prefix}.{}", s.name());
                for method in &s.method {
                    index
                        .symbols
                        .insert(format!("{name}.{}", method.name()), fname.clone());
                }
                index.symbols.insert(name.clone(), fname.clone());
                index.services.push(name[1..].to_string());
            }
            let encoded = FileDescriptorProto::encode_to_vec(file);
            index
                .files
                .insert(fname, (encoded, file.dependency.clone()));
        }
        index.services.sort();
        // Symbols are asked for without the leading dot.
        index.symbols = index
            .symbols
            .into_iter()
            .map(|(k, v)| (k.trim_start_matches('.').to_string(), v))
            .collect();
        index.messages = index
            .messages
            .into_iter()
            .map(|k| k.trim_start_matches('.').to_string())
            .collect();
        Ok(index)
    }

    pub fn services(&self) -> &[String] {
        &self.services
    }

    /// `file` and every file it imports, each once, the asked one first.
    fn with_dependencies(&self, file: &str) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut seen = BTreeSet::new();
        let mut todo = vec![file.to_string()];
        while let Some(f) = todo.pop() {
            if !seen.insert(f.clone()) {
                continue;
            }
            if let Some((bytes, deps)) = self.files.get(&f) {
                out.push(bytes.clone());
                todo.extend(deps.iter().cloned());
            }
        }
        out
    }

    /// The answer to one request.
    pub fn answer(&self, ask: Option<&Ask>) -> Answer {
        let not_found = |what: String| {
            Answer::Error(ErrorResponse {
                error_code: Code::NotFound as i32,
                error_message: what,
            })
        };
        match ask {
            Some(Ask::ListServices(_)) => Answer::Services(ListServiceResponse {
                service: self
                    .services
                    .iter()
                    .map(|name| ServiceResponse { name: name.clone() })
                    .collect(),
            }),
            Some(Ask::FileByFilename(name)) if self.files.contains_key(name) => {
                Answer::Files(FileDescriptorResponse {
                    file_descriptor_proto: self.with_dependencies(name),
                })
            }
            Some(Ask::FileByFilename(name)) => not_found(format!("file not found: {name}")),
            Some(Ask::FileContainingSymbol(symbol)) => match self.symbols.get(symbol) {
                Some(file) => Answer::Files(FileDescriptorResponse {
                    file_descriptor_proto: self.with_dependencies(file),
                }),
                None => not_found(format!("symbol not found: {symbol}")),
            },
            Some(Ask::FileContainingExtension(e)) => not_found(format!(
                "extension not found: {}({})",
                e.containing_type, e.extension_number
            )),
            Some(Ask::AllExtensionNumbersOfType(t)) if self.messages.contains(t) => {
                Answer::ExtensionNumbers(ExtensionNumberResponse {
                    base_type_name: t.clone(),
                    extension_number: Vec::new(),
                })
            }
            Some(Ask::AllExtensionNumbersOfType(t)) => not_found(format!("type not found: {t}")),
            None => Answer::Error(ErrorResponse {
                error_code: Code::InvalidArgument as i32,
                error_message: "empty reflection request".to_string(),
            }),
        }
    }
}

/// The gateway's descriptors, indexed once.
pub fn index() -> &'static Index {
    static INDEX: OnceLock<Index> = OnceLock::new();
    INDEX.get_or_init(|| {
        // Compiled in and checked by `cargo test` (`the_descriptor_set_indexes`): a set
        // that does not decode is a build defect, answered as an empty index, never a panic.
        Index::build(DESCRIPTORS).unwrap_or_else(|_| Index {
            files: HashMap::new(),
            symbols: HashMap::new(),
            messages: BTreeSet::new(),
            services: Vec::new(),
        })
    })
}

/// Serve one ServerReflectionInfo stream: one response per request, in order.
pub async fn serve(req: Request<RecvStream>, mut respond: SendResponse<Bytes>, max: usize) {
    let (parts, body) = req.into_parts();
    let encoding = parts
        .headers
        .get(grpc::names::GRPC_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut reader = MessageReader::new(body, max, encoding);
    let Ok(mut out) = respond.send_response(headers(None), false) else {
        return;
    };
    let index = index();
    let end = loop {
        let msg = match reader.next().await {
            Ok(Some(msg)) => msg,
            Ok(None) => break Status::new(Code::Ok, ""),
            Err(status) => break status,
        };
        let Ok(request) = ReflectionRequest::decode(&msg[..]) else {
            break Status::new(Code::InvalidArgument, "malformed ServerReflectionRequest");
        };
        let response = ReflectionResponse {
            valid_host: request.host.clone(),
            answer: Some(index.answer(request.ask.as_ref())),
            original_request: Some(request),
        };
        let framed = grpc::frame(&response.encode_to_vec());
        if send_flow_controlled(&mut out, framed).await.is_err() {
            return;
        }
    };
    let mut trailers = HeaderMap::new();
    end.to_headers(&mut trailers);
    let _ = out.send_trailers(trailers);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_descriptor_set_indexes() {
        let index = Index::build(DESCRIPTORS).expect("the compiled-in set decodes");
        assert_eq!(
            index.services(),
            [
                "grpc.health.v1.Health",
                "grpc.reflection.v1.ServerReflection",
                "grpc.reflection.v1alpha.ServerReflection",
                "inference.GRPCInferenceService",
            ]
        );
        for symbol in [
            "inference.GRPCInferenceService",
            "inference.GRPCInferenceService.ModelInfer",
            "inference.ModelInferRequest",
            "inference.ModelInferRequest.InferInputTensor",
            "inference.DataType",
        ] {
            let Answer::Files(f) = index.answer(Some(&Ask::FileContainingSymbol(symbol.into())))
            else {
                panic!("{symbol} not found");
            };
            let file = FileDescriptorProto::decode(&f.file_descriptor_proto[0][..]).expect("file");
            assert_eq!(file.package(), "inference", "{symbol}");
        }
    }

    #[test]
    fn unknown_names_answer_not_found() {
        let index = index();
        for ask in [
            Ask::FileContainingSymbol("inference.Nope".into()),
            Ask::FileByFilename("nope.proto".into()),
            Ask::AllExtensionNumbersOfType("inference.Nope".into()),
            Ask::FileContainingExtension(ExtensionRequest {
                containing_type: "inference.ModelConfig".into(),
                extension_number: 7,
            }),
        ] {
            let Answer::Error(e) = index.answer(Some(&ask)) else {
                panic!("{ask:?} answered");
            };
            assert_eq!(e.error_code, Code::NotFound as i32);
        }
        let Answer::ExtensionNumbers(n) = index.answer(Some(&Ask::AllExtensionNumbersOfType(
            "inference.ModelConfig".into(),
        ))) else {
            panic!("a known type has (no) extensions");
        };
        assert!(n.extension_number.is_empty());
    }
}

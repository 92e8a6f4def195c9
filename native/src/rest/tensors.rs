//! KServe V2 REST inference bodies to and from the gRPC messages the workers speak.
//!
//! A request body is JSON, or JSON followed by binary tensor data (Triton's binary-tensor
//! extension: `Inference-Header-Content-Length` gives the JSON's length, and an input with
//! `parameters.binary_data_size` takes that many bytes of the rest, in input order). Every
//! input becomes a `raw_input_contents` entry (little-endian, as numpy lays it out), so the
//! worker decodes REST and gRPC requests alike. Outputs come back as JSON numbers, or as
//! binary data when asked (`parameters.binary_data` on an output, or `binary_data_output` on
//! the request).

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use half::f16;
use prost::Message;
use serde::Deserialize;
use serde_json::{Map, Number, Value};

use crate::worker::codec::messages::{
    InferInputTensor, InferParameter, InferRequestedOutputTensor, ModelInferRequest,
    ModelInferResponse, ParameterChoice,
};

/// Why a body cannot be read (answered 400 with this message).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadRequest(pub String);

fn bad(msg: impl Into<String>) -> BadRequest {
    BadRequest(msg.into())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputJson {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    data: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputJson {
    name: String,
    #[serde(default)]
    parameters: Map<String, Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RequestJson {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Map<String, Value>,
    inputs: Vec<InputJson>,
    #[serde(default)]
    outputs: Option<Vec<OutputJson>>,
}

/// A request made into the worker's message, and how its outputs are to be returned.
#[derive(Debug)]
pub struct Converted {
    pub message: ModelInferRequest,
    /// Outputs to return as binary data (by name), or all of them.
    pub binary: Binary,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub enum Binary {
    #[default]
    None,
    All,
    Named(Vec<String>),
}

impl Binary {
    fn wants(&self, name: &str) -> bool {
        match self {
            Binary::None => false,
            Binary::All => true,
            Binary::Named(names) => names.iter().any(|n| n == name),
        }
    }
}

fn parameter(name: &str, v: &Value) -> Result<InferParameter, BadRequest> {
    let choice = match v {
        Value::Bool(b) => ParameterChoice::BoolParam(*b),
        Value::String(s) => ParameterChoice::StringParam(s.clone()),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => ParameterChoice::Int64Param(i),
            (None, Some(u), _) => ParameterChoice::Uint64Param(u),
            (None, None, Some(f)) => ParameterChoice::DoubleParam(f),
            _ => return Err(bad(format!("parameter {name}: unsupported number {n}"))),
        },
        _ => {
            return Err(bad(format!(
                "parameter {name} must be a bool, a number or a string"
            )))
        }
    };
    Ok(InferParameter {
        parameter_choice: Some(choice),
    })
}

fn parameters(
    map: &Map<String, Value>,
    skip: &[&str],
) -> Result<HashMap<String, InferParameter>, BadRequest> {
    map.iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .map(|(k, v)| Ok((k.clone(), parameter(k, v)?)))
        .collect()
}

fn flag(map: &Map<String, Value>, name: &str) -> Result<bool, BadRequest> {
    match map.get(name) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad(format!("parameter {name} must be a bool"))),
    }
}

/// The element count of `shape` (dimensions must not be negative).
fn elements(name: &str, shape: &[i64]) -> Result<usize, BadRequest> {
    let mut n: usize = 1;
    for &d in shape {
        let d = usize::try_from(d).map_err(|_| {
            bad(format!(
                "input {name}: shape {shape:?} has a negative dimension"
            ))
        })?;
        n = n
            .checked_mul(d)
            .ok_or_else(|| bad(format!("input {name}: shape {shape:?} is too large")))?;
    }
    Ok(n)
}

/// Flatten nested JSON arrays into `out` (row-major), without recursion on the heap's behalf:
/// serde_json has already bounded the nesting depth while parsing.
fn flatten<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| flatten(i, out)),
        other => out.push(other),
    }
}

fn write_value(
    name: &str,
    datatype: &str,
    v: &Value,
    buf: &mut BytesMut,
) -> Result<(), BadRequest> {
    let wrong = || {
        bad(format!(
            "input {name}: {} is not a valid {datatype} value",
            truncate(&v.to_string())
        ))
    };
    let int = |lo: i64, hi: i64| -> Result<i64, BadRequest> {
        v.as_i64()
            .filter(|i| (lo..=hi).contains(i))
            .ok_or_else(wrong)
    };
    let uint =
        |hi: u64| -> Result<u64, BadRequest> { v.as_u64().filter(|u| *u <= hi).ok_or_else(wrong) };
    match datatype {
        "BOOL" => buf.put_u8(u8::from(v.as_bool().ok_or_else(wrong)?)),
        "INT8" => buf.put_i8(int(i8::MIN.into(), i8::MAX.into())? as i8),
        "INT16" => buf.put_i16_le(int(i16::MIN.into(), i16::MAX.into())? as i16),
        "INT32" => buf.put_i32_le(int(i32::MIN.into(), i32::MAX.into())? as i32),
        "INT64" => buf.put_i64_le(int(i64::MIN, i64::MAX)?),
        "UINT8" => buf.put_u8(uint(u8::MAX.into())? as u8),
        "UINT16" => buf.put_u16_le(uint(u16::MAX.into())? as u16),
        "UINT32" => buf.put_u32_le(uint(u32::MAX.into())? as u32),
        "UINT64" => buf.put_u64_le(uint(u64::MAX)?),
        "FP16" | "FP32" | "FP64" => {
            let f = v.as_f64().ok_or_else(wrong)?;
            match datatype {
                "FP16" if f.abs() <= 65504.0 => buf.put_u16_le(f16::from_f64(f).to_bits()),
                "FP32" if f.abs() <= f64::from(f32::MAX) => buf.put_f32_le(f as f32),
                "FP64" => buf.put_f64_le(f),
                _ => {
                    return Err(bad(format!(
                        "input {name}: {f} is out of range for {datatype}"
                    )))
                }
            }
        }
        "BYTES" => {
            let s = v.as_str().ok_or_else(wrong)?;
            let len = u32::try_from(s.len()).map_err(|_| wrong())?;
            buf.put_u32_le(len);
            buf.put_slice(s.as_bytes());
        }
        other => return Err(bad(format!("input {name}: unsupported datatype {other}"))),
    }
    Ok(())
}

fn truncate(s: &str) -> String {
    if s.len() <= 40 {
        return s.to_string();
    }
    let mut end = 40;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// numpy's item size of a fixed-size datatype (None for BYTES and unknown names).
pub fn itemsize(datatype: &str) -> Option<usize> {
    Some(match datatype {
        "BOOL" | "INT8" | "UINT8" => 1,
        "INT16" | "UINT16" | "FP16" => 2,
        "INT32" | "UINT32" | "FP32" => 4,
        "INT64" | "UINT64" | "FP64" => 8,
        _ => return None,
    })
}

/// Read a request body (`json_len`: the `Inference-Header-Content-Length`, if sent).
pub fn request(
    model: &str,
    version: &str,
    body: &Bytes,
    json_len: Option<usize>,
) -> Result<Converted, BadRequest> {
    let json_len = json_len.unwrap_or(body.len());
    if json_len > body.len() {
        return Err(bad(format!(
            "Inference-Header-Content-Length {json_len} is larger than the body ({} bytes)",
            body.len()
        )));
    }
    let req: RequestJson = serde_json::from_slice(&body[..json_len])
        .map_err(|e| bad(format!("malformed inference request: {e}")))?;
    let mut binary = body.slice(json_len..);
    let mut message = ModelInferRequest {
        model_name: model.to_string(),
        model_version: version.to_string(),
        id: req.id.unwrap_or_default(),
        parameters: parameters(&req.parameters, &["binary_data_output"])?,
        ..Default::default()
    };
    for input in &req.inputs {
        let name = &input.name;
        let n = elements(name, &input.shape)?;
        let raw = match (input.parameters.get("binary_data_size"), &input.data) {
            (Some(size), None) => {
                let size = size
                    .as_u64()
                    .and_then(|s| usize::try_from(s).ok())
                    .ok_or_else(|| bad(format!("input {name}: bad binary_data_size")))?;
                if size > binary.len() {
                    return Err(bad(format!(
                        "input {name}: binary_data_size {size} is past the end of the body"
                    )));
                }
                if let Some(item) = itemsize(&input.datatype) {
                    if n.checked_mul(item) != Some(size) {
                        return Err(bad(format!(
                            "input {name}: {size} bytes of binary data for shape {:?} of {}",
                            input.shape, input.datatype
                        )));
                    }
                }
                binary.split_to(size)
            }
            (Some(_), Some(_)) => {
                return Err(bad(format!(
                    "input {name} has both data and binary_data_size"
                )))
            }
            (None, None) => return Err(bad(format!("input {name} has no data"))),
            (None, Some(data)) => {
                let mut values = Vec::new();
                flatten(data, &mut values);
                if values.len() != n {
                    return Err(bad(format!(
                        "input {name}: {} values for shape {:?} ({n} expected)",
                        values.len(),
                        input.shape
                    )));
                }
                let item = itemsize(&input.datatype).unwrap_or(8);
                let mut buf = BytesMut::with_capacity(n.saturating_mul(item));
                for v in values {
                    write_value(name, &input.datatype, v, &mut buf)?;
                }
                buf.freeze()
            }
        };
        message.inputs.push(InferInputTensor {
            name: name.clone(),
            datatype: input.datatype.clone(),
            shape: input.shape.clone(),
            parameters: parameters(&input.parameters, &["binary_data_size"])?,
            contents: None,
        });
        message.raw_input_contents.push(raw);
    }
    if !binary.is_empty() {
        return Err(bad(format!(
            "{} bytes of binary data after the last input's",
            binary.len()
        )));
    }
    let mut named = Vec::new();
    for out in req.outputs.iter().flatten() {
        if flag(&out.parameters, "binary_data")? {
            named.push(out.name.clone());
        }
        message.outputs.push(InferRequestedOutputTensor {
            name: out.name.clone(),
            parameters: parameters(&out.parameters, &["binary_data", "classification"])?,
        });
    }
    let binary = if flag(&req.parameters, "binary_data_output")? {
        Binary::All
    } else if named.is_empty() {
        Binary::None
    } else {
        Binary::Named(named)
    };
    Ok(Converted { message, binary })
}

fn json_number(f: f64) -> Value {
    Number::from_f64(f).map_or(Value::Null, Value::Number)
}

/// The values of one raw output as JSON (row-major, flat, as Triton answers).
fn values(datatype: &str, raw: &[u8]) -> Result<Vec<Value>, String> {
    let Some(item) = itemsize(datatype) else {
        if datatype == "BYTES" {
            let mut out = Vec::new();
            let mut rest = raw;
            while rest.len() >= 4 {
                let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
                let Some(s) = rest.get(4..4 + len) else {
                    return Err("malformed BYTES output".into());
                };
                out.push(Value::String(String::from_utf8_lossy(s).into_owned()));
                rest = &rest[4 + len..];
            }
            return Ok(out);
        }
        return Err(format!("output of unknown datatype {datatype}"));
    };
    if raw.len() % item != 0 {
        return Err(format!(
            "{} bytes is not a whole {datatype} output",
            raw.len()
        ));
    }
    Ok(raw
        .chunks_exact(item)
        .map(|c| match datatype {
            "BOOL" => Value::Bool(c[0] != 0),
            "INT8" => Value::from(c[0] as i8),
            "UINT8" => Value::from(c[0]),
            "INT16" => Value::from(i16::from_le_bytes([c[0], c[1]])),
            "UINT16" => Value::from(u16::from_le_bytes([c[0], c[1]])),
            "FP16" => json_number(f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f64()),
            "INT32" => Value::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            "UINT32" => Value::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            "FP32" => json_number(f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
            "INT64" => Value::from(i64::from_le_bytes([
                c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
            ])),
            "UINT64" => Value::from(u64::from_le_bytes([
                c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
            ])),
            _ => json_number(f64::from_le_bytes([
                c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7],
            ])),
        })
        .collect())
}

/// A REST answer: the JSON, then the binary outputs (`json_len` set when there are any).
pub struct Answer {
    pub body: Bytes,
    pub json_len: Option<usize>,
}

/// Turn the worker's (unframed) ModelInferResponse into a REST answer.
pub fn response(msg: &[u8], binary: &Binary) -> Result<Answer, String> {
    let resp = ModelInferResponse::decode(msg).map_err(|e| format!("malformed response: {e}"))?;
    if resp.raw_output_contents.len() != resp.outputs.len() {
        return Err("the worker answered without raw output contents".into());
    }
    let mut outputs = Vec::with_capacity(resp.outputs.len());
    let mut tail = Vec::new();
    for (out, raw) in resp.outputs.iter().zip(&resp.raw_output_contents) {
        let mut o = Map::new();
        o.insert("name".into(), Value::from(out.name.clone()));
        o.insert("datatype".into(), Value::from(out.datatype.clone()));
        o.insert("shape".into(), Value::from(out.shape.clone()));
        if binary.wants(&out.name) {
            let mut p = Map::new();
            p.insert("binary_data_size".into(), Value::from(raw.len()));
            o.insert("parameters".into(), Value::Object(p));
            tail.push(raw.clone());
        } else {
            o.insert("data".into(), Value::Array(values(&out.datatype, raw)?));
        }
        outputs.push(Value::Object(o));
    }
    let mut top = Map::new();
    top.insert("model_name".into(), Value::from(resp.model_name));
    top.insert("model_version".into(), Value::from(resp.model_version));
    if !resp.id.is_empty() {
        top.insert("id".into(), Value::from(resp.id));
    }
    top.insert("outputs".into(), Value::Array(outputs));
    let json = serde_json::to_vec(&Value::Object(top)).map_err(|e| e.to_string())?;
    if tail.is_empty() {
        return Ok(Answer {
            body: Bytes::from(json),
            json_len: None,
        });
    }
    let json_len = json.len();
    let mut body = BytesMut::with_capacity(json_len + tail.iter().map(Bytes::len).sum::<usize>());
    body.put_slice(&json);
    for t in tail {
        body.put_slice(&t);
    }
    Ok(Answer {
        body: body.freeze(),
        json_len: Some(json_len),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(body: &str) -> Result<Converted, BadRequest> {
        request("t/m", "", &Bytes::from(body.to_string()), None)
    }

    #[test]
    fn nested_json_becomes_little_endian_raw_contents() {
        let c = convert(
            r#"{"id":"a","inputs":[{"name":"x","shape":[2,2],"datatype":"FP32",
                "data":[[1,2.5],[3,-4]]}],"outputs":[{"name":"y"}]}"#,
        )
        .expect("converts");
        let m = c.message;
        assert_eq!((m.model_name.as_str(), m.id.as_str()), ("t/m", "a"));
        let want: Vec<u8> = [1.0f32, 2.5, 3.0, -4.0]
            .iter()
            .flat_map(|f| f.to_le_bytes())
            .collect();
        assert_eq!(&m.raw_input_contents[0][..], &want[..]);
        assert_eq!(m.outputs[0].name, "y");
        assert_eq!(c.binary, Binary::None);
    }

    #[test]
    fn every_datatype_checks_its_range() {
        for (dt, ok, bad_value) in [
            ("BOOL", "true", "1"),
            ("INT8", "-128", "128"),
            ("UINT8", "255", "-1"),
            ("INT16", "32767", "32768"),
            ("UINT16", "65535", "65536"),
            ("INT32", "-2147483648", "2147483648"),
            ("UINT32", "4294967295", "1.5"),
            ("INT64", "-9223372036854775808", "9223372036854775808"),
            ("UINT64", "18446744073709551615", "-1"),
            ("FP16", "65504", "70000"),
            ("FP32", "1e38", "1e39"),
            ("FP64", "1e308", "\"x\""),
        ] {
            let body = |v: &str| {
                format!(
                    r#"{{"inputs":[{{"name":"x","shape":[1],"datatype":"{dt}","data":[{v}]}}]}}"#
                )
            };
            assert!(convert(&body(ok)).is_ok(), "{dt} {ok}");
            let err = convert(&body(bad_value)).expect_err(bad_value);
            assert!(err.0.contains(dt), "{dt}: {}", err.0);
        }
    }

    #[test]
    fn shapes_counts_and_binary_sections_are_checked() {
        let e =
            convert(r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2,3]}]}"#)
                .expect_err("count");
        assert!(e.0.contains("3 values for shape [2, 2]"), "{}", e.0);
        let e = convert(r#"{"inputs":[{"name":"x","shape":[-1],"datatype":"FP32","data":[]}]}"#)
            .expect_err("negative");
        assert!(e.0.contains("negative"), "{}", e.0);
        let e = convert(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32"}]}"#)
            .expect_err("no data");
        assert!(e.0.contains("no data"));
        let e = convert(r#"{"inputs":[],"bogus":1}"#).expect_err("unknown field");
        assert!(e.0.contains("bogus"), "{}", e.0);

        let json = r#"{"inputs":[{"name":"x","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}}],"parameters":{"binary_data_output":true}}"#;
        let mut body = json.as_bytes().to_vec();
        body.extend_from_slice(&1.0f32.to_le_bytes());
        body.extend_from_slice(&2.0f32.to_le_bytes());
        let c = request("t/m", "3", &Bytes::from(body.clone()), Some(json.len())).expect("ok");
        assert_eq!(c.message.raw_input_contents[0].len(), 8);
        assert_eq!(c.message.model_version, "3");
        assert!(c.message.inputs[0].parameters.is_empty());
        assert!(c.message.parameters.is_empty());
        assert_eq!(c.binary, Binary::All);
        body.push(0);
        let e = request("t/m", "", &Bytes::from(body), Some(json.len())).expect_err("extra");
        assert!(e.0.contains("1 bytes of binary data after"), "{}", e.0);
        let e = request("t/m", "", &Bytes::from(json), Some(json.len() + 1)).expect_err("len");
        assert!(e.0.contains("larger than the body"));
    }

    #[test]
    fn responses_come_back_as_json_or_binary() {
        let resp = ModelInferResponse {
            model_name: "t/m".into(),
            model_version: "1".into(),
            id: "q".into(),
            outputs: vec![
                crate::worker::codec::messages::InferOutputTensor {
                    name: "p".into(),
                    datatype: "FP32".into(),
                    shape: vec![2],
                    ..Default::default()
                },
                crate::worker::codec::messages::InferOutputTensor {
                    name: "c".into(),
                    datatype: "INT64".into(),
                    shape: vec![2],
                    ..Default::default()
                },
            ],
            raw_output_contents: vec![
                Bytes::from(
                    [0.5f32, -1.0]
                        .iter()
                        .flat_map(|f| f.to_le_bytes())
                        .collect::<Vec<_>>(),
                ),
                Bytes::from(
                    [7i64, -9]
                        .iter()
                        .flat_map(|f| f.to_le_bytes())
                        .collect::<Vec<_>>(),
                ),
            ],
            ..Default::default()
        }
        .encode_to_vec();
        let a = response(&resp, &Binary::None).expect("json");
        assert!(a.json_len.is_none());
        let v: Value = serde_json::from_slice(&a.body).expect("valid json");
        assert_eq!(v["outputs"][0]["data"], serde_json::json!([0.5, -1.0]));
        assert_eq!(v["outputs"][1]["data"], serde_json::json!([7, -9]));
        assert_eq!(v["id"], "q");
        let a = response(&resp, &Binary::Named(vec!["c".into()])).expect("binary");
        let n = a.json_len.expect("binary part");
        let v: Value = serde_json::from_slice(&a.body[..n]).expect("valid json");
        assert_eq!(v["outputs"][1]["parameters"]["binary_data_size"], 16);
        assert_eq!(a.body.len() - n, 16);
    }
}

//! Why a request is refused: one variant per check, its text exactly the Python path's
//! (`worker/convert.py`, `worker/validate.py`, `worker/limits.py`), mapped to a gRPC status in
//! one place ([`CodecError::status`]).

use crate::gateway::grpc::{Code, Status};
use crate::pyfmt::repr;

use super::bignum::Natural;
use super::datatype::{ContentsField, Datatype};
use super::validate::TensorSpec;

/// numpy's limit on an array's dimensions (`NPY_MAXDIMS` in numpy 2).
pub const MAX_DIMS: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// protobuf refused the bytes; `why` is `_explain`'s reason.
    #[error("malformed ModelInferRequest ({len} bytes): {why}")]
    Malformed { len: usize, why: String },

    #[error("{raw} raw_input_contents for {inputs} inputs (give one per input)")]
    RawCount { raw: u64, inputs: u64 },

    #[error(
        "input {}: unsupported datatype {} (expected one of {})",
        repr(.name), repr(.datatype), datatype_names()
    )]
    UnsupportedDatatype { name: String, datatype: String },

    /// More dimensions than numpy can hold (a behaviour change: see `convert.MAX_DIMS`).
    #[error(
        "input {}: {ndim} dimensions in shape; at most {MAX_DIMS} are supported",
        repr(.name)
    )]
    TooManyDims { name: String, ndim: u64 },

    #[error("input {}: negative dimension in shape {}", repr(.name), int_list(.shape))]
    NegativeDimension { name: String, shape: Vec<i64> },

    #[error(
        "input {}: {got} bytes of raw contents, but {datatype} {} needs {need}",
        repr(.name), int_list(.shape)
    )]
    RawLength {
        name: String,
        got: u64,
        datatype: Datatype,
        shape: Vec<i64>,
        need: Natural,
    },

    #[error(
        "input {}: {got} values in contents, but {datatype} {} needs {need}",
        repr(.name), int_list(.shape)
    )]
    ValueCount {
        name: String,
        got: u64,
        datatype: Datatype,
        shape: Vec<i64>,
        need: Natural,
    },

    /// A shape numpy refuses although it holds no element (a behaviour change: see
    /// `convert._fits`).
    #[error(
        "input {}: {datatype} {} is too large: its item size times its non-zero dimensions \
         exceeds 2**63 - 1 bytes",
        repr(.name), int_list(.shape)
    )]
    TooLarge {
        name: String,
        datatype: Datatype,
        shape: Vec<i64>,
    },

    /// A typed-contents value the datatype cannot hold (a behaviour change: numpy raised
    /// OverflowError, answered INTERNAL).
    #[error(
        "input {}: {}[{index}] = {value} is out of range for {datatype} [{}, {}]",
        repr(.name), .field.name(), lo(.datatype), hi(.datatype)
    )]
    OutOfRange {
        name: String,
        field: ContentsField,
        index: u64,
        value: i64,
        datatype: Datatype,
    },

    #[error(
        "input {} has {rows} rows; this worker accepts at most {max_rows} rows per request \
         (SHOAL_MAX_REQUEST_ROWS): split the batch",
        repr(.name)
    )]
    TooManyRows {
        name: String,
        rows: i64,
        max_rows: i64,
    },

    #[error(
        "{model} expects {} input(s) ({}), got {got}",
        .specs.len(), spec_list(.specs)
    )]
    InputCount {
        model: String,
        specs: Vec<TensorSpec>,
        got: usize,
    },

    /// `received` are the distinct input names, sorted.
    #[error(
        "{model}: missing input {} {}; received {}",
        spec_name(.spec), spec_fmt(.spec), str_list(.received)
    )]
    MissingInput {
        model: String,
        spec: Box<TensorSpec>,
        received: Vec<String>,
    },

    #[error(
        "input {} of {model}: expected {}, received {}",
        spec_name(.spec), spec_fmt(.spec), spec_text(.datatype.name(), .shape)
    )]
    Mismatch {
        model: String,
        spec: Box<TensorSpec>,
        datatype: Datatype,
        shape: Vec<i64>,
    },

    #[error("input {} of {model}: empty batch (0 rows)", repr(.name))]
    EmptyBatch { model: String, name: String },

    #[error("unknown output {}; the model has {}", repr(.requested), str_list(.names))]
    UnknownOutput {
        requested: String,
        names: Vec<String>,
    },
}

impl CodecError {
    /// The gRPC code: RESOURCE_EXHAUSTED for the row limit, INVALID_ARGUMENT otherwise.
    pub fn code(&self) -> Code {
        match self {
            CodecError::TooManyRows { .. } => Code::ResourceExhausted,
            _ => Code::InvalidArgument,
        }
    }

    /// The status the caller receives.
    pub fn status(&self) -> Status {
        Status::new(self.code(), self.to_string())
    }
}

fn datatype_names() -> String {
    Datatype::ALL.map(Datatype::name).join(", ")
}

fn lo(datatype: &Datatype) -> i64 {
    datatype.narrow_range().map_or(i64::MIN, |r| r.0)
}

fn hi(datatype: &Datatype) -> i64 {
    datatype.narrow_range().map_or(i64::MAX, |r| r.1)
}

fn spec_name(spec: &TensorSpec) -> String {
    repr(&spec.name)
}

fn spec_fmt(spec: &TensorSpec) -> String {
    spec_text(&spec.datatype, &spec.shape)
}

/// `str(list_of_ints)`.
fn int_list(values: &[i64]) -> String {
    let items: Vec<String> = values.iter().map(i64::to_string).collect();
    format!("[{}]", items.join(", "))
}

/// `str(list_of_strs)`: each item as its `repr`.
fn str_list(values: &[String]) -> String {
    let items: Vec<String> = values.iter().map(|s| repr(s)).collect();
    format!("[{}]", items.join(", "))
}

/// `validate._fmt`: `FP32 [-1, 12]`.
fn spec_text(datatype: &str, shape: &[i64]) -> String {
    let dims: Vec<String> = shape.iter().map(i64::to_string).collect();
    format!("{datatype} [{}]", dims.join(", "))
}

fn spec_list(specs: &[TensorSpec]) -> String {
    let items: Vec<String> = specs
        .iter()
        .map(|s| format!("{} {}", spec_name(s), spec_fmt(s)))
        .collect();
    items.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_as_python_writes_them() {
        let e = CodecError::UnsupportedDatatype {
            name: "it's".into(),
            datatype: "BYTES".into(),
        };
        assert_eq!(
            e.to_string(),
            "input \"it's\": unsupported datatype 'BYTES' (expected one of BOOL, UINT8, UINT16, \
             UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, FP32, FP64)"
        );
        let e = CodecError::RawLength {
            name: "x".into(),
            got: 7,
            datatype: Datatype::Fp32,
            shape: vec![2, 3],
            need: Natural::from_u64(24),
        };
        assert_eq!(
            e.to_string(),
            "input 'x': 7 bytes of raw contents, but FP32 [2, 3] needs 24"
        );
        let e = CodecError::OutOfRange {
            name: "x".into(),
            field: ContentsField::Int,
            index: 2,
            value: 300,
            datatype: Datatype::Int8,
        };
        assert_eq!(
            e.to_string(),
            "input 'x': int_contents[2] = 300 is out of range for INT8 [-128, 127]"
        );
        let e = CodecError::TooManyRows {
            name: "x".into(),
            rows: 9,
            max_rows: 4,
        };
        assert_eq!(e.status().code, Code::ResourceExhausted);
        assert_eq!(
            e.to_string(),
            "input 'x' has 9 rows; this worker accepts at most 4 rows per request \
             (SHOAL_MAX_REQUEST_ROWS): split the batch"
        );
        let e = CodecError::UnknownOutput {
            requested: "p".into(),
            names: vec!["a".into(), "b'".into()],
        };
        assert_eq!(e.status().code, Code::InvalidArgument);
        assert_eq!(
            e.to_string(),
            "unknown output 'p'; the model has ['a', \"b'\"]"
        );
    }
}

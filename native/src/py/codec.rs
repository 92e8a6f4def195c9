//! Bindings of `crate::worker::codec` for tests (the worker front calls the codec from Rust):
//! conversion and calls only. A refusal raises `CodecError(code, message)`, `code` being the
//! gRPC status name (`INVALID_ARGUMENT`, `RESOURCE_EXHAUSTED`).

use bytes::Bytes;
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::pybacked::PyBackedBytes;
use pyo3::types::{PyBytes, PyList};

use crate::worker::codec::{self, Datatype, OutputTensor, Signature, Tensor, TensorSpec};

create_exception!(
    shoal._native,
    CodecError,
    PyException,
    "A request the codec refuses: args are (code, message), code a gRPC status name."
);

/// (name, datatype, shape) of a tensor or a signature's tensor.
type Meta = (String, String, Vec<i64>);
/// (name, datatype, shape, data) of a decoded input or of an output.
type PyTensor = (String, String, Vec<i64>, Py<PyBytes>);
/// (model, version, id, inputs, requested outputs).
type Decoded<'py> = (String, String, String, Vec<PyTensor>, Bound<'py, PyList>);

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("CodecError", m.py().get_type::<CodecError>())?;
    m.add("MAX_DIMS", codec::MAX_DIMS)?;
    m.add_function(wrap_pyfunction!(decode_infer_request, m)?)?;
    m.add_function(wrap_pyfunction!(check_inputs, m)?)?;
    m.add_function(wrap_pyfunction!(select_outputs, m)?)?;
    m.add_function(wrap_pyfunction!(encode_infer_response, m)?)?;
    Ok(())
}

fn refusal(e: codec::CodecError) -> PyErr {
    CodecError::new_err((e.code().name(), e.to_string()))
}

fn datatype(name: &str) -> PyResult<Datatype> {
    Datatype::from_name(name)
        .ok_or_else(|| PyValueError::new_err(format!("unknown datatype {name:?}")))
}

fn signature(sig: (Vec<Meta>, Vec<Meta>)) -> Signature {
    let spec = |(name, datatype, shape): Meta| TensorSpec {
        name,
        datatype,
        shape,
    };
    Signature {
        inputs: sig.0.into_iter().map(spec).collect(),
        outputs: sig.1.into_iter().map(spec).collect(),
    }
}

/// Decodes a ModelInferRequest and checks its rows (`parse_infer_request`, then
/// `check_rows`). Decoding runs without the GIL.
#[pyfunction]
fn decode_infer_request<'py>(py: Python<'py>, raw: &[u8], max_rows: i64) -> PyResult<Decoded<'py>> {
    let body = Bytes::copy_from_slice(raw);
    let req = py
        .detach(|| {
            let req = codec::decode_infer_request(body)?;
            codec::check_rows(&req.inputs, max_rows)?;
            Ok(req)
        })
        .map_err(refusal)?;
    let inputs = req
        .inputs
        .iter()
        .map(|t| {
            let data = PyBytes::new(py, &t.data).unbind();
            (
                t.name.clone(),
                t.datatype.name().to_owned(),
                t.shape.clone(),
                data,
            )
        })
        .collect();
    // Appended one by one: a request may name millions of outputs.
    let outputs = PyList::empty(py);
    for name in req.outputs() {
        outputs.append(name)?;
    }
    Ok((req.model, req.version, req.id, inputs, outputs))
}

/// `check_inputs(label, signature, inputs)`: the index of the input for each of the
/// signature's inputs, in its order. `signature` is (inputs, outputs) of (name, datatype,
/// shape); `inputs` are (name, datatype, shape) with a datatype the decoder accepts.
#[pyfunction]
fn check_inputs(
    label: &str,
    signature: (Vec<Meta>, Vec<Meta>),
    inputs: Vec<Meta>,
) -> PyResult<Vec<usize>> {
    let sig = self::signature(signature);
    let tensors = inputs
        .into_iter()
        .map(|(name, dt, shape)| {
            Ok(Tensor {
                name,
                datatype: datatype(&dt)?,
                shape,
                data: Bytes::new(),
            })
        })
        .collect::<PyResult<Vec<_>>>()?;
    codec::check_inputs(label, &sig, &tensors).map_err(refusal)
}

/// `select_outputs(signature, requested)`: indices of the requested outputs.
#[pyfunction]
fn select_outputs(
    signature: (Vec<Meta>, Vec<Meta>),
    requested: Vec<String>,
) -> PyResult<Vec<usize>> {
    let sig = self::signature(signature);
    codec::select_outputs(&sig, requested.iter().map(String::as_str)).map_err(refusal)
}

/// The ModelInferResponse's bytes for `outputs` (name, datatype, shape, data).
#[pyfunction]
fn encode_infer_response<'py>(
    py: Python<'py>,
    model: &str,
    version: u64,
    id: &str,
    outputs: Vec<(String, String, Vec<i64>, PyBackedBytes)>,
) -> PyResult<Bound<'py, PyBytes>> {
    let outputs = outputs
        .into_iter()
        .map(|(name, dt, shape, data)| {
            Ok(OutputTensor {
                name,
                datatype: datatype(&dt)?,
                shape,
                data: Bytes::copy_from_slice(&data),
            })
        })
        .collect::<PyResult<Vec<_>>>()?;
    Ok(PyBytes::new(
        py,
        &codec::encode_infer_response(model, version, id, &outputs),
    ))
}

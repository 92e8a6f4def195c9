//! ONNX models through ONNX Runtime's C API (`ort`), on the library the onnxruntime wheel
//! ships (`onnxruntime/capi/libonnxruntime.so.*`), opened once per process from the path
//! Python gives ([`open`]).
//!
//! That library is a second instance of the runtime in the process (the Python package
//! links its own copy into its extension), of the same release and build: its kernels are
//! the ones Python's `InferenceSession` runs, and a session built with the options
//! `shoal/frameworks/onnx.py` sets (one intra- and one inter-op thread, every graph
//! optimization, the CPU provider) answers bit for bit what the Python session answers.
//! CPU only: models placed on a GPU stay with the Python package and its CUDA provider.
//!
//! A [`Session`] is shared by `Arc`, so a model Python evicts while a call runs is freed
//! when that call lets go, never under it. `ort` runs a session through `&mut`: calls of
//! one session take turns on its lock (the front bounds them per model anyway).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use bytes::Bytes;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{DynValue, Tensor, TensorElementType, ValueType};

use crate::worker::codec::Datatype;

/// A tensor as the front carries it: V2 datatype, shape, little-endian row-major bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct Data {
    pub datatype: Datatype,
    pub shape: Vec<i64>,
    pub data: Bytes,
}

static OPENED: OnceLock<Result<(ort::environment::Environment, String), String>> = OnceLock::new();
static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Opens the runtime library at `path` and builds the process's one environment, once per
/// process: later calls return the first outcome, whatever they pass.
pub fn open(path: &str) -> Result<&'static str, String> {
    let outcome = OPENED.get_or_init(|| {
        let builder = ort::init_from(path).map_err(|e| format!("{path}: {e}"))?;
        let env = builder
            .with_name("shoal")
            .build()
            .map_err(|e| format!("{path}: {e}"))?;
        Ok((env, path.to_string()))
    });
    match outcome {
        Ok((_, p)) => Ok(p),
        Err(e) => Err(e.clone()),
    }
}

/// The path the runtime was opened from, if it was.
pub fn opened() -> Option<&'static str> {
    match OPENED.get() {
        Some(Ok((_, p))) => Some(p),
        _ => None,
    }
}

/// Sessions alive in this process (tests: one is freed by its last holder).
pub fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// One loaded ONNX model.
pub struct Session {
    session: Mutex<ort::session::Session>,
    inputs: Vec<String>,
    outputs: Vec<String>,
}

impl Drop for Session {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Session {
    /// A session of the serialized `ModelProto` in `bytes` (call [`open`] first); the
    /// runtime's first message line on a model it refuses, as `shoal/frameworks/onnx.py`
    /// words it.
    pub fn load(bytes: &[u8]) -> Result<Session, String> {
        let Some(Ok((env, _))) = OPENED.get() else {
            return Err("the ONNX runtime library is not open".into());
        };
        let refused = |e: ort::Error| format!("invalid ONNX model: {}", first_line(&described(&e)));
        let session = ort::session::Session::builder(env)
            .map_err(refused)?
            .with_intra_threads(1)
            .map_err(|e| refused(e.into()))?
            .with_inter_threads(1)
            .map_err(|e| refused(e.into()))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| refused(e.into()))?
            .with_log_level(ort::logging::LogLevel::Error)
            .map_err(|e| refused(e.into()))?
            .commit_from_memory(bytes)
            .map_err(refused)?;
        let inputs = session
            .inputs()
            .iter()
            .map(|i| i.name().to_string())
            .collect();
        let outputs = session
            .outputs()
            .iter()
            .map(|o| o.name().to_string())
            .collect();
        LIVE.fetch_add(1, Ordering::Relaxed);
        Ok(Session {
            session: Mutex::new(session),
            inputs,
            outputs,
        })
    }

    pub fn inputs(&self) -> &[String] {
        &self.inputs
    }

    pub fn outputs(&self) -> &[String] {
        &self.outputs
    }

    /// Every output of the graph, in order, for `inputs` in the graph's input order.
    pub fn run(&self, inputs: &[Data]) -> Result<Vec<Data>, String> {
        if inputs.len() != self.inputs.len() {
            return Err(format!(
                "the model takes {} inputs, {} were given",
                self.inputs.len(),
                inputs.len()
            ));
        }
        let mut feed: Vec<(String, DynValue)> = Vec::with_capacity(inputs.len());
        for (name, t) in self.inputs.iter().zip(inputs) {
            feed.push((name.clone(), value(t)?));
        }
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        let outs = session.run(feed).map_err(|e| described(&e))?;
        let mut data = Vec::with_capacity(self.outputs.len());
        for name in &self.outputs {
            let v = outs
                .get(name.as_str())
                .ok_or_else(|| format!("output {name:?} was not produced"))?;
            data.push(tensor_data(name, v)?);
        }
        Ok(data)
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("").trim()
}

/// An error as the Python package words it: `[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : ...`.
fn described(e: &ort::Error) -> String {
    use ort::ErrorCode as C;
    let (n, name) = match e.code() {
        C::Ok => (0, "OK"),
        C::GenericFailure => (1, "FAIL"),
        C::InvalidArgument => (2, "INVALID_ARGUMENT"),
        C::NoSuchFile => (3, "NO_SUCHFILE"),
        C::NoModel => (4, "NO_MODEL"),
        C::EngineError => (5, "ENGINE_ERROR"),
        C::RuntimeException => (6, "RUNTIME_EXCEPTION"),
        C::InvalidProtobuf => (7, "INVALID_PROTOBUF"),
        C::ModelLoaded => (8, "MODEL_LOADED"),
        C::NotImplemented => (9, "NOT_IMPLEMENTED"),
        C::InvalidGraph => (10, "INVALID_GRAPH"),
        C::ExecutionProviderFailure => (11, "EP_FAIL"),
        C::ModelLoadCanceled => (12, "MODEL_LOAD_CANCELED"),
        C::CompilationRequired => (13, "MODEL_REQUIRES_COMPILATION"),
        C::NotFound => (14, "NOT_FOUND"),
        C::DeviceReset => (15, "DEVICE_RESET"),
        _ => (1, "FAIL"),
    };
    format!(
        "[ONNXRuntimeError] : {n} : {name} : {}",
        e.message().trim_end()
    )
}

/// The little-endian items of `bytes` as `T`s (whole items only: the codec checked lengths).
fn items<T, const N: usize>(bytes: &[u8], from: fn([u8; N]) -> T) -> Vec<T> {
    bytes
        .chunks_exact(N)
        .map(|c| {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            from(a)
        })
        .collect()
}

/// An input tensor as the runtime takes it (its bytes copied into an aligned buffer).
fn value(t: &Data) -> Result<DynValue, String> {
    let shape = t.shape.clone();
    let b = &t.data[..];
    let made = match t.datatype {
        Datatype::Fp32 => Tensor::from_array((shape, items(b, f32::from_le_bytes))).map(Into::into),
        Datatype::Fp64 => Tensor::from_array((shape, items(b, f64::from_le_bytes))).map(Into::into),
        Datatype::Fp16 => {
            Tensor::from_array((shape, items(b, half::f16::from_le_bytes))).map(Into::into)
        }
        Datatype::Int8 => Tensor::from_array((shape, items(b, i8::from_le_bytes))).map(Into::into),
        Datatype::Int16 => {
            Tensor::from_array((shape, items(b, i16::from_le_bytes))).map(Into::into)
        }
        Datatype::Int32 => {
            Tensor::from_array((shape, items(b, i32::from_le_bytes))).map(Into::into)
        }
        Datatype::Int64 => {
            Tensor::from_array((shape, items(b, i64::from_le_bytes))).map(Into::into)
        }
        Datatype::Uint8 => Tensor::from_array((shape, b.to_vec())).map(Into::into),
        Datatype::Uint16 => {
            Tensor::from_array((shape, items(b, u16::from_le_bytes))).map(Into::into)
        }
        Datatype::Uint32 => {
            Tensor::from_array((shape, items(b, u32::from_le_bytes))).map(Into::into)
        }
        Datatype::Uint64 => {
            Tensor::from_array((shape, items(b, u64::from_le_bytes))).map(Into::into)
        }
        Datatype::Bool => {
            Tensor::from_array((shape, b.iter().map(|&x| x != 0).collect::<Vec<bool>>()))
                .map(Into::into)
        }
    };
    made.map_err(|e| described(&e))
}

/// An output as the front carries it; tensors of the datatypes the signature allows only.
fn tensor_data(name: &str, v: &DynValue) -> Result<Data, String> {
    let ValueType::Tensor { ty, .. } = v.dtype() else {
        return Err(format!("output {name:?} is not a tensor"));
    };
    let err = |e: ort::Error| described(&e);
    macro_rules! take {
        ($t:ty, $dt:expr) => {{
            let (shape, xs) = v.try_extract_tensor::<$t>().map_err(err)?;
            let mut data = Vec::with_capacity(std::mem::size_of_val(xs));
            for x in xs {
                data.extend_from_slice(&x.to_le_bytes());
            }
            ($dt, shape.to_vec(), data)
        }};
    }
    let (datatype, shape, data) = match ty {
        TensorElementType::Float32 => take!(f32, Datatype::Fp32),
        TensorElementType::Float64 => take!(f64, Datatype::Fp64),
        TensorElementType::Float16 => take!(half::f16, Datatype::Fp16),
        TensorElementType::Int8 => take!(i8, Datatype::Int8),
        TensorElementType::Int16 => take!(i16, Datatype::Int16),
        TensorElementType::Int32 => take!(i32, Datatype::Int32),
        TensorElementType::Int64 => take!(i64, Datatype::Int64),
        TensorElementType::Uint8 => take!(u8, Datatype::Uint8),
        TensorElementType::Uint16 => take!(u16, Datatype::Uint16),
        TensorElementType::Uint32 => take!(u32, Datatype::Uint32),
        TensorElementType::Uint64 => take!(u64, Datatype::Uint64),
        TensorElementType::Bool => {
            let (shape, xs) = v.try_extract_tensor::<bool>().map_err(err)?;
            let data: Vec<u8> = xs.iter().map(|&x| u8::from(x)).collect();
            (Datatype::Bool, shape.to_vec(), data)
        }
        other => return Err(format!("output {name:?} has unsupported type {other:?}")),
    };
    Ok(Data {
        datatype,
        shape,
        data: Bytes::from(data),
    })
}

//! Bindings of `crate::runtime`: the `TreeBooster` class (an XGBoost or LightGBM model whose
//! library handle Rust owns) and `OnnxSession` (an ONNX model). Conversion and calls only.
//!
//! Opening, loading and predicting release the GIL. A prediction copies its input first, with
//! the GIL held (Python code may write to the array once it is released), and holds a clone of
//! the booster's `Arc` for the call.

use std::sync::Arc;

use numpy::{IntoPyArray, PyArrayMethods, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyOSError, PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;

use crate::runtime::{self, onnx, Booster, Element, Framework, Prediction, RuntimeError, Values};
use crate::worker::codec::Datatype;

create_exception!(
    shoal._native,
    TreeError,
    PyException,
    "A tree runtime call failed: the library's message, whole."
);
create_exception!(
    shoal._native,
    TreeModelError,
    TreeError,
    "The library refused a model's bytes: the message of the Python path's ArtifactError."
);

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyTreeBooster>()?;
    m.add("TreeError", m.py().get_type::<TreeError>())?;
    m.add("TreeModelError", m.py().get_type::<TreeModelError>())?;
    Ok(())
}

fn framework(name: &str) -> PyResult<Framework> {
    Framework::from_name(name).ok_or_else(|| {
        PyValueError::new_err(format!(
            "unknown tree framework {name:?}; expected xgboost or lightgbm"
        ))
    })
}

fn to_py(e: RuntimeError) -> PyErr {
    match e {
        RuntimeError::Open { .. } => PyOSError::new_err(e.to_string()),
        RuntimeError::NotOpen(_) => PyRuntimeError::new_err(e.to_string()),
        RuntimeError::Input(_) => PyValueError::new_err(e.to_string()),
        e if e.is_artifact() => TreeModelError::new_err(e.to_string()),
        e => TreeError::new_err(e.to_string()),
    }
}

/// A loaded XGBoost or LightGBM model, CPU only.
#[pyclass(name = "TreeBooster", module = "shoal._native", frozen)]
pub struct PyTreeBooster {
    booster: Arc<Booster>,
}

impl PyTreeBooster {
    /// The booster, for native code that predicts without Python (the worker front).
    #[allow(dead_code)]
    pub fn booster(&self) -> Arc<Booster> {
        Arc::clone(&self.booster)
    }
}

/// A copy of a C-contiguous, aligned 2-D array's values, and its shape.
fn matrix<T: Element + numpy::Element>(
    x: &PyReadonlyArray2<'_, T>,
) -> PyResult<(Vec<T>, usize, usize)> {
    let (nrows, ncols) = (x.shape()[0], x.shape()[1]);
    let not_c = || PyValueError::new_err("TreeBooster.predict needs a C-contiguous, aligned array");
    if !x.is_c_contiguous() {
        return Err(not_c());
    }
    let rows = x.as_slice().map_err(|_| not_c())?.to_vec();
    Ok((rows, nrows, ncols))
}

fn to_numpy(py: Python<'_>, p: Prediction) -> PyResult<Bound<'_, PyAny>> {
    Ok(match p.values {
        Values::F32(v) => v.into_pyarray(py).reshape(p.shape)?.into_any(),
        Values::F64(v) => v.into_pyarray(py).reshape(p.shape)?.into_any(),
    })
}

#[pymethods]
impl PyTreeBooster {
    /// Opens `framework`'s shared library (once per process); the path in use.
    #[staticmethod]
    fn open_runtime(py: Python<'_>, framework_name: &str, lib_path: &str) -> PyResult<String> {
        let fw = framework(framework_name)?;
        let path = py.detach(|| runtime::open(fw, lib_path)).map_err(to_py)?;
        Ok(path.to_string())
    }

    #[staticmethod]
    fn opened_runtime(framework_name: &str) -> PyResult<Option<String>> {
        Ok(runtime::opened(framework(framework_name)?).map(str::to_string))
    }

    #[staticmethod]
    fn load(py: Python<'_>, framework_name: &str, data: &[u8]) -> PyResult<Self> {
        let fw = framework(framework_name)?;
        // `bytes` are immutable and the caller's reference keeps them alive for the call.
        let booster = py.detach(|| Booster::load(fw, data)).map_err(to_py)?;
        Ok(Self { booster })
    }

    /// Boosters whose library handle is not freed yet.
    #[staticmethod]
    fn live() -> usize {
        runtime::live_boosters()
    }

    #[getter]
    fn framework(&self) -> &'static str {
        self.booster.framework().name()
    }

    #[getter]
    fn num_features(&self) -> usize {
        self.booster.num_features()
    }

    fn output_width(&self, py: Python<'_>) -> PyResult<usize> {
        let booster = Arc::clone(&self.booster);
        py.detach(move || booster.output_width()).map_err(to_py)
    }

    fn predict<'py>(&self, py: Python<'py>, x: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let booster = Arc::clone(&self.booster);
        let out = if let Ok(x) = x.extract::<PyReadonlyArray2<'py, f32>>() {
            let (rows, nrows, ncols) = matrix(&x)?;
            drop(x);
            py.detach(move || booster.predict(&rows, nrows, ncols))
        } else if let Ok(x) = x.extract::<PyReadonlyArray2<'py, f64>>() {
            let (rows, nrows, ncols) = matrix(&x)?;
            drop(x);
            py.detach(move || booster.predict_f64(&rows, nrows, ncols))
        } else {
            return Err(PyTypeError::new_err(
                "TreeBooster.predict takes a 2-D float32 or float64 numpy array",
            ));
        };
        to_numpy(py, out.map_err(to_py)?)
    }

    fn __repr__(&self) -> String {
        format!(
            "TreeBooster({}, {} features)",
            self.booster.framework().name(),
            self.booster.num_features()
        )
    }
}

create_exception!(
    shoal._native,
    OnnxError,
    PyException,
    "An ONNX Runtime call failed: the runtime's first message line."
);
create_exception!(
    shoal._native,
    OnnxModelError,
    OnnxError,
    "The runtime refused a model's bytes: the message of the Python path's ArtifactError."
);

pub fn register_onnx(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyOnnxSession>()?;
    m.add("OnnxError", m.py().get_type::<OnnxError>())?;
    m.add("OnnxModelError", m.py().get_type::<OnnxModelError>())?;
    Ok(())
}

/// A tensor at the boundary: (V2 datatype, shape, little-endian row-major bytes).
type RawTensor = (String, Vec<i64>, Vec<u8>);

/// A loaded ONNX model (CPU), run by the ONNX Runtime library the native module opened.
#[pyclass(name = "OnnxSession", module = "shoal._native", frozen)]
pub struct PyOnnxSession {
    session: Arc<onnx::Session>,
}

impl PyOnnxSession {
    /// The session, for native code that runs it without Python (the worker front).
    pub fn session(&self) -> Arc<onnx::Session> {
        Arc::clone(&self.session)
    }
}

#[pymethods]
impl PyOnnxSession {
    /// Opens the ONNX Runtime library at `lib_path` (once per process); the path in use.
    #[staticmethod]
    fn open_runtime(py: Python<'_>, lib_path: &str) -> PyResult<String> {
        let path = py
            .detach(|| onnx::open(lib_path))
            .map_err(PyOSError::new_err)?;
        Ok(path.to_string())
    }

    #[staticmethod]
    fn opened_runtime() -> Option<String> {
        onnx::opened().map(str::to_string)
    }

    #[staticmethod]
    fn load(py: Python<'_>, data: &[u8]) -> PyResult<Self> {
        if onnx::opened().is_none() {
            return Err(PyRuntimeError::new_err(
                "the ONNX runtime library is not open (OnnxSession.open_runtime)",
            ));
        }
        // `bytes` are immutable and the caller's reference keeps them alive for the call.
        let session = py
            .detach(|| onnx::Session::load(data))
            .map_err(OnnxModelError::new_err)?;
        Ok(Self {
            session: Arc::new(session),
        })
    }

    /// Sessions not freed yet.
    #[staticmethod]
    fn live() -> usize {
        onnx::live()
    }

    #[getter]
    fn inputs(&self) -> Vec<String> {
        self.session.inputs().to_vec()
    }

    #[getter]
    fn outputs(&self) -> Vec<String> {
        self.session.outputs().to_vec()
    }

    /// Every output, for `inputs` in the graph's input order; the GIL released meanwhile.
    fn run(&self, py: Python<'_>, inputs: Vec<RawTensor>) -> PyResult<Vec<RawTensor>> {
        let mut data = Vec::with_capacity(inputs.len());
        for (datatype, shape, bytes) in inputs {
            let dt = Datatype::from_name(&datatype).ok_or_else(|| {
                PyValueError::new_err(format!("unsupported datatype {datatype:?}"))
            })?;
            let want = shape.iter().try_fold(dt.itemsize(), |n, &d| {
                usize::try_from(d).ok().and_then(|d| n.checked_mul(d))
            });
            if want != Some(bytes.len()) {
                return Err(PyValueError::new_err(format!(
                    "{} bytes do not hold a {datatype} tensor of shape {shape:?}",
                    bytes.len()
                )));
            }
            data.push(onnx::Data {
                datatype: dt,
                shape,
                data: bytes::Bytes::from(bytes),
            });
        }
        let session = Arc::clone(&self.session);
        let outs = py
            .detach(move || session.run(&data))
            .map_err(OnnxError::new_err)?;
        Ok(outs
            .into_iter()
            .map(|o| (o.datatype.name().to_string(), o.shape, o.data.to_vec()))
            .collect())
    }

    fn __repr__(&self) -> String {
        format!(
            "OnnxSession(inputs={:?}, outputs={:?})",
            self.session.inputs(),
            self.session.outputs()
        )
    }
}

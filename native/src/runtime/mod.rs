//! Tree runtimes: XGBoost and LightGBM predictions through their C APIs, handles owned here.
//!
//! The shared libraries are the ones the pip wheels ship, opened at run time (`libloading`)
//! once per process from the paths Python gives ([`open`]): the same files the Python
//! packages load, so both sides share one instance of each library. A [`Booster`] owns one
//! library handle and frees it when dropped; it is shared by `Arc`, so a model that Python
//! evicts while a prediction runs is freed when that prediction lets go of its clone, never
//! under it.
//!
//! Loading and predicting follow the Python packages call for call (`xgboost`, `lightgbm`
//! modules), so outputs are bit-identical to `Booster.inplace_predict(x)` (XGBoost) and
//! `Booster.predict(x, num_threads=1)` (LightGBM), and load errors read as
//! `shoal/frameworks/xgboost.py` and `lightgbm.py` word them ([`RuntimeError`]). CPU only:
//! XGBoost models placed on a GPU stay with the Python package.

mod error;
mod lightgbm;
pub mod onnx;
mod xgboost;

#[cfg(test)]
mod tests;

use std::ffi::c_int;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

pub use error::{first_line, RuntimeError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Framework {
    XGBoost,
    LightGBM,
}

impl Framework {
    /// The framework named as Shoal's records name it (`xgboost`, `lightgbm`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "xgboost" => Some(Self::XGBoost),
            "lightgbm" => Some(Self::LightGBM),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::XGBoost => "xgboost",
            Self::LightGBM => "lightgbm",
        }
    }

    /// The class name of the Python package's exception (what a failed prediction's message
    /// was prefixed with on the Python path: `XGBoostError: ...`).
    pub fn error_name(self) -> &'static str {
        match self {
            Self::XGBoost => "XGBoostError",
            Self::LightGBM => "LightGBMError",
        }
    }
}

/// Opens `framework`'s shared library at `path`, once per process: later calls return the
/// path first opened, whatever they pass.
pub fn open(framework: Framework, path: &str) -> Result<&'static str, RuntimeError> {
    match framework {
        Framework::XGBoost => xgboost::open(path),
        Framework::LightGBM => lightgbm::open(path),
    }
}

/// The path `framework`'s library was opened from, if it was.
pub fn opened(framework: Framework) -> Option<&'static str> {
    match framework {
        Framework::XGBoost => xgboost::opened(),
        Framework::LightGBM => lightgbm::opened(),
    }
}

/// A function of an opened library, copied out of its symbol.
///
/// # Safety
/// `T` must be the function's signature as the library's C header declares it, and the
/// pointer must not be called after `lib` is dropped (the libraries live in statics).
unsafe fn symbol<T: Copy>(lib: &libloading::Library, name: &[u8]) -> Result<T, String> {
    // SAFETY: the caller vouches for `T`; the copy does not outlive `lib`'s use (see above).
    unsafe { lib.get::<T>(name) }
        .map(|f| *f)
        .map_err(|e| e.to_string())
}

/// Library handles created and not yet freed, across frameworks.
static LIVE: AtomicUsize = AtomicUsize::new(0);

fn created() {
    LIVE.fetch_add(1, Ordering::Relaxed);
}

fn freed() {
    LIVE.fetch_sub(1, Ordering::Relaxed);
}

/// Boosters whose library handle is not freed yet (a leak check; each [`Booster`] is one).
pub fn live_boosters() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// A matrix element type the libraries read as it is.
pub trait Element: Copy + Send + Sync + private::Sealed {
    /// numpy's `typestr` (XGBoost's array interface).
    const TYPESTR: &'static str;
    /// `C_API_DTYPE_FLOAT32` / `C_API_DTYPE_FLOAT64` (LightGBM).
    const LIGHTGBM_TYPE: c_int;
}

impl Element for f32 {
    const TYPESTR: &'static str = "<f4";
    const LIGHTGBM_TYPE: c_int = 0;
}

impl Element for f64 {
    const TYPESTR: &'static str = "<f8";
    const LIGHTGBM_TYPE: c_int = 1;
}

mod private {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A prediction's values: float32 from XGBoost, float64 from LightGBM (as their Python
/// packages return them).
#[derive(Debug, Clone, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    F64(Vec<f64>),
}

impl Values {
    pub fn len(&self) -> usize {
        match self {
            Self::F32(v) => v.len(),
            Self::F64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Values in C order and their shape, as the Python package shapes them: `[rows]` or
/// `[rows, width]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub values: Values,
    pub shape: Vec<usize>,
}

enum Handle {
    XGBoost(xgboost::Booster),
    LightGBM(lightgbm::Booster),
}

/// A loaded tree model, CPU only, one thread per prediction. `Send + Sync` through its
/// handle types (see their `SAFETY` notes); share it by `Arc`.
pub struct Booster {
    handle: Handle,
    features: usize,
    /// Values per row: 0 for `[rows]` outputs. LightGBM says at load; XGBoost on the first
    /// ask, from a one-row prediction.
    width: OnceLock<usize>,
}

impl Booster {
    /// `data` (an artifact's verified bytes) loaded as `shoal.frameworks.<name>.load` loads
    /// it, with its messages on failure (`RuntimeError::is_artifact`).
    pub fn load(framework: Framework, data: &[u8]) -> Result<Arc<Self>, RuntimeError> {
        let width = OnceLock::new();
        let (handle, features) = match framework {
            Framework::XGBoost => {
                let (booster, features) = xgboost::load(data)?;
                (Handle::XGBoost(booster), features)
            }
            Framework::LightGBM => {
                let (booster, features, per_row) = lightgbm::load(data)?;
                let _ = width.set(if per_row == 1 { 0 } else { per_row });
                (Handle::LightGBM(booster), features)
            }
        };
        Ok(Arc::new(Self {
            handle,
            features,
            width,
        }))
    }

    pub fn framework(&self) -> Framework {
        match self.handle {
            Handle::XGBoost(_) => Framework::XGBoost,
            Handle::LightGBM(_) => Framework::LightGBM,
        }
    }

    /// Columns the model was trained on (a prediction with another count fails).
    pub fn num_features(&self) -> usize {
        self.features
    }

    /// Values per row of a prediction: 0 when the output is `[rows]`, else the second
    /// dimension of `[rows, width]` (classes or targets), as `describe` puts it in the
    /// signature. XGBoost's is read from a one-row prediction of zeros, once.
    pub fn output_width(&self) -> Result<usize, RuntimeError> {
        if let Some(&width) = self.width.get() {
            return Ok(width);
        }
        let zeros = vec![0f32; self.features];
        let probe = self.predict(&zeros, 1, self.features)?;
        let width = if probe.shape.len() >= 2 {
            probe.shape[1]
        } else {
            0
        };
        Ok(*self.width.get_or_init(|| width))
    }

    /// Predictions for the C-contiguous float32 matrix `rows` of `nrows` x `ncols`.
    pub fn predict(
        &self,
        rows: &[f32],
        nrows: usize,
        ncols: usize,
    ) -> Result<Prediction, RuntimeError> {
        self.run(rows, nrows, ncols)
    }

    /// As [`Booster::predict`], for float64 values (read as such, as the Python packages
    /// read a float64 array; XGBoost rounds them to float32, LightGBM does not).
    pub fn predict_f64(
        &self,
        rows: &[f64],
        nrows: usize,
        ncols: usize,
    ) -> Result<Prediction, RuntimeError> {
        self.run(rows, nrows, ncols)
    }

    fn run<T: Element>(
        &self,
        rows: &[T],
        nrows: usize,
        ncols: usize,
    ) -> Result<Prediction, RuntimeError> {
        if nrows.checked_mul(ncols) != Some(rows.len()) {
            return Err(RuntimeError::Input(format!(
                "{} values do not make a [{nrows}, {ncols}] matrix",
                rows.len()
            )));
        }
        match &self.handle {
            Handle::XGBoost(b) => b.predict(rows, nrows, ncols),
            Handle::LightGBM(b) => b.predict(rows, nrows, ncols),
        }
    }
}

//! LightGBM through its C API (`LightGBM/c_api.h`), as the Python package calls it.
//!
//! Loading is `lightgbm.Booster(model_str=text)`: `LGBM_BoosterLoadModelFromString` on the
//! text passed as a C string. Predicting is `Booster.predict(x, num_threads=1)` for a NumPy
//! matrix of a loaded model (`best_iteration` -1): `LGBM_BoosterCalcNumPredict` for the
//! output's length, then `LGBM_BoosterPredictForMat` (row-major, normal prediction, from
//! iteration 0, every iteration, parameters `num_threads=1`) into float64, shaped as
//! `_InnerPredictor.predict` shapes it.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;
use std::sync::OnceLock;

use libloading::Library;

use super::error::{first_line, RuntimeError};
use super::{symbol, Element, Framework, Prediction, Values};

type Handle = *mut c_void;

/// `C_API_PREDICT_NORMAL`, `C_API_IS_ROW_MAJOR`.
const PREDICT_NORMAL: c_int = 0;
const ROW_MAJOR: c_int = 1;
/// `Booster.predict`'s `num_iteration` for a model without a best iteration: all of them.
const ALL_ITERATIONS: c_int = -1;
/// After a model's text: its C terminator, then a stop for the tree parser's unbounded scans.
const OVERREAD_STOP: &[u8] = b"\0=\n\n\0";
/// `_param_dict_to_str({"num_threads": 1})`.
const PREDICT_PARAMS: &CStr = c"num_threads=1";

/// The library's entry points this crate calls, with the library that owns them.
pub(super) struct Api {
    load_string: unsafe extern "C" fn(*const c_char, *mut c_int, *mut Handle) -> c_int,
    free: unsafe extern "C" fn(Handle) -> c_int,
    num_feature: unsafe extern "C" fn(Handle, *mut c_int) -> c_int,
    calc_num_predict: unsafe extern "C" fn(Handle, c_int, c_int, c_int, c_int, *mut i64) -> c_int,
    #[allow(clippy::type_complexity)]
    predict_mat: unsafe extern "C" fn(
        Handle,
        *const c_void,
        c_int,
        i32,
        i32,
        c_int,
        c_int,
        c_int,
        c_int,
        *const c_char,
        *mut i64,
        *mut f64,
    ) -> c_int,
    last_error: unsafe extern "C" fn() -> *const c_char,
    /// Kept for as long as the pointers above are used: `API` is never dropped.
    _lib: Library,
}

static API: OnceLock<(Api, String)> = OnceLock::new();

/// Opens the library at `path` once per process; later calls return the path first opened.
pub(super) fn open(path: &str) -> Result<&'static str, RuntimeError> {
    if let Some((_, opened)) = API.get() {
        return Ok(opened);
    }
    let failed = |reason: String| RuntimeError::Open {
        framework: Framework::LightGBM,
        path: path.to_string(),
        reason,
    };
    // SAFETY: loading a library runs its initialisers; the path is the one the lightgbm
    // package loads (or would load) into this process, whose initialisers are made for it.
    let lib = unsafe { Library::new(path) }.map_err(|e| failed(e.to_string()))?;
    // SAFETY: each field's type is that function's signature in `LightGBM/c_api.h`; the pointers
    // are stored with the library that owns them, in `API`, which is never dropped.
    let api = unsafe {
        Api {
            load_string: symbol(&lib, b"LGBM_BoosterLoadModelFromString\0").map_err(failed)?,
            free: symbol(&lib, b"LGBM_BoosterFree\0").map_err(failed)?,
            num_feature: symbol(&lib, b"LGBM_BoosterGetNumFeature\0").map_err(failed)?,
            calc_num_predict: symbol(&lib, b"LGBM_BoosterCalcNumPredict\0").map_err(failed)?,
            predict_mat: symbol(&lib, b"LGBM_BoosterPredictForMat\0").map_err(failed)?,
            last_error: symbol(&lib, b"LGBM_GetLastError\0").map_err(failed)?,
            _lib: lib,
        }
    };
    let (_, opened) = API.get_or_init(|| (api, path.to_string()));
    Ok(opened)
}

pub(super) fn opened() -> Option<&'static str> {
    API.get().map(|(_, path)| path.as_str())
}

fn api() -> Result<&'static Api, RuntimeError> {
    API.get()
        .map(|(api, _)| api)
        .ok_or(RuntimeError::NotOpen(Framework::LightGBM))
}

impl Api {
    /// The calling thread's last error (`LGBM_GetLastError`, thread-local in the library).
    fn last_error(&self) -> String {
        // SAFETY: no arguments; the library returns a NUL-terminated thread-local string
        // (or null), valid until this thread's next failing call, copied out at once.
        let msg = unsafe { (self.last_error)() };
        if msg.is_null() {
            return String::new();
        }
        // SAFETY: non-null and NUL-terminated, per the library's contract (see above).
        unsafe { CStr::from_ptr(msg) }
            .to_string_lossy()
            .into_owned()
    }

    fn check(&self, rc: c_int) -> Result<(), RuntimeError> {
        if rc == 0 {
            return Ok(());
        }
        Err(RuntimeError::Library {
            framework: Framework::LightGBM,
            message: self.last_error(),
        })
    }
}

/// A LightGBM booster; `LGBM_BoosterFree` when dropped.
pub(super) struct Booster {
    api: &'static Api,
    handle: Handle,
}

// SAFETY: the handle is a heap object of the library (a `Booster`) with no affinity to the
// thread that created it; `Drop` may free it on any thread.
unsafe impl Send for Booster {}
// SAFETY: the calls made through `&Booster` (`CalcNumPredict`, `PredictForMat`) take the
// booster's shared lock inside the library and write only to the caller's buffers; the
// Python package makes the same calls from many threads. Nothing here mutates the handle.
unsafe impl Sync for Booster {}

impl Drop for Booster {
    fn drop(&mut self) {
        // SAFETY: `handle` came from `LGBM_BoosterLoadModelFromString` and is freed once,
        // here; `&mut self` means no prediction holds it (every user borrows the booster,
        // which is shared by `Arc`). A failure to free cannot be acted on.
        unsafe { (self.api.free)(self.handle) };
        super::freed();
    }
}

/// `data` loaded (the checks of `shoal.frameworks.lightgbm.load` first), and its number of
/// features and values per row.
pub(super) fn load(data: &[u8]) -> Result<(Booster, usize, usize), RuntimeError> {
    let api = api()?;
    let text = std::str::from_utf8(data).map_err(|_| RuntimeError::NotUtf8)?;
    if !text.contains("end of trees") {
        return Err(RuntimeError::Truncated);
    }
    // `ctypes.c_char_p(text.encode())` passes the whole buffer, NUL-terminated: the library
    // reads up to the first NUL, and its tree parser reads past it on a cut tree (scanning
    // for `=` and a line end), where Python's buffer still holds the rest of the text. So do
    // we, followed by a stop for such scans (`=`, two line ends, NUL) instead of whatever
    // memory follows.
    let mut c_text = Vec::with_capacity(data.len() + OVERREAD_STOP.len());
    c_text.extend_from_slice(data);
    c_text.extend_from_slice(OVERREAD_STOP);
    let mut handle: Handle = ptr::null_mut();
    let mut iterations: c_int = 0;
    // SAFETY: a NUL-terminated string that outlives the call and out pointers to locals;
    // the library copies what it keeps.
    let rc = unsafe { (api.load_string)(c_text.as_ptr().cast(), &mut iterations, &mut handle) };
    drop(c_text);
    if rc != 0 || handle.is_null() {
        return Err(RuntimeError::InvalidLightGBM(first_line(
            &api.last_error(),
            "LightGBMError",
        )));
    }
    super::created();
    let booster = Booster { api, handle };
    let mut features: c_int = 0;
    // SAFETY: a live handle and an out pointer to a local.
    api.check(unsafe { (api.num_feature)(handle, &mut features) })?;
    let per_row = booster.num_predict(1)?;
    let features = usize::try_from(features)
        .map_err(|_| RuntimeError::Input(format!("{features} features")))?;
    Ok((booster, features, per_row))
}

impl Booster {
    /// `LGBM_BoosterCalcNumPredict` for `nrows` rows: the length of a normal prediction.
    fn num_predict(&self, nrows: c_int) -> Result<usize, RuntimeError> {
        let mut n: i64 = 0;
        // SAFETY: a live handle (borrowed for the call) and an out pointer to a local.
        self.api.check(unsafe {
            (self.api.calc_num_predict)(
                self.handle,
                nrows,
                PREDICT_NORMAL,
                0,
                ALL_ITERATIONS,
                &mut n,
            )
        })?;
        usize::try_from(n).map_err(|_| RuntimeError::Input(format!("{n} predictions")))
    }

    /// `predict(x, num_threads=1)` for the C-contiguous `[nrows, ncols]` matrix `rows`
    /// (length already checked by the caller).
    pub(super) fn predict<T: Element>(
        &self,
        rows: &[T],
        nrows: usize,
        ncols: usize,
    ) -> Result<Prediction, RuntimeError> {
        let too_many = |what: &str, n: usize| {
            RuntimeError::Input(format!(
                "LightGBM takes at most {} {what}, got {n}",
                i32::MAX
            ))
        };
        let nrow = i32::try_from(nrows).map_err(|_| too_many("rows", nrows))?;
        let ncol = i32::try_from(ncols).map_err(|_| too_many("columns", ncols))?;
        let n_preds = self.num_predict(nrow)?;
        let mut out = vec![0f64; n_preds];
        let mut written: i64 = 0;
        // SAFETY: a live handle (borrowed for the call); `rows` holds `nrow * ncol` values of
        // type `T::LIGHTGBM_TYPE` in row-major order and outlives the call; `out` has room
        // for the `n_preds` values the library said it writes for `nrow` rows; a
        // NUL-terminated parameter string; an out pointer to a local.
        self.api.check(unsafe {
            (self.api.predict_mat)(
                self.handle,
                rows.as_ptr().cast(),
                T::LIGHTGBM_TYPE,
                nrow,
                ncol,
                ROW_MAJOR,
                PREDICT_NORMAL,
                0,
                ALL_ITERATIONS,
                PREDICT_PARAMS.as_ptr(),
                &mut written,
                out.as_mut_ptr(),
            )
        })?;
        if usize::try_from(written).ok() != Some(n_preds) {
            return Err(RuntimeError::Input(
                "Wrong length for predict results".into(),
            ));
        }
        // `_InnerPredictor.predict`: `[nrows]` when there is one value per row, else
        // `[nrows, values per row]`.
        let shape = if n_preds == nrows {
            vec![nrows]
        } else if nrows > 0 && n_preds % nrows == 0 {
            vec![nrows, n_preds / nrows]
        } else {
            return Err(RuntimeError::Input(format!(
                "Length of predict result ({n_preds}) cannot be divide nrow ({nrows})"
            )));
        };
        Ok(Prediction {
            values: Values::F64(out),
            shape,
        })
    }
}

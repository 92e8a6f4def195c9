//! XGBoost through its C API (`xgboost/c_api.h`), as the Python package calls it.
//!
//! Loading is `xgboost.Booster(params={"nthread": 1})` then `load_model(bytearray(data))`:
//! `XGBoosterCreate` with no cache, `XGBoosterSetParam` `nthread=1` and
//! `validate_parameters=True`, `XGBoosterLoadModelFromBuffer`. Predicting is
//! `Booster.inplace_predict(x, validate_features=False)` for a NumPy matrix: one
//! `XGBoosterPredictFromDense` call with the same array interface and the same JSON
//! arguments, so the outputs are the same bits.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;
use std::sync::OnceLock;

use libloading::Library;

use super::error::{first_line, RuntimeError};
use super::{symbol, Element, Framework, Prediction};

/// `bst_ulong`.
type Ulong = u64;
type Handle = *mut c_void;

/// `inplace_predict`'s arguments for a value prediction of every tree: `json.dumps` of its
/// `make_jcargs(type=0, training=False, iteration_begin=0, iteration_end=0, missing=nan,
/// strict_shape=False, cache_id=0)`.
const PREDICT_ARGS: &CStr = c"{\"type\": 0, \"training\": false, \"iteration_begin\": 0, \"iteration_end\": 0, \"missing\": NaN, \"strict_shape\": false, \"cache_id\": 0}";

/// Zeros after a model's bytes, where XGBoost's reader may look past a cut document.
const OVERREAD_PAD: usize = 64;

/// The library's entry points this crate calls, with the library that owns them.
pub(super) struct Api {
    create: unsafe extern "C" fn(*const Handle, Ulong, *mut Handle) -> c_int,
    free: unsafe extern "C" fn(Handle) -> c_int,
    set_param: unsafe extern "C" fn(Handle, *const c_char, *const c_char) -> c_int,
    load_buffer: unsafe extern "C" fn(Handle, *const c_void, Ulong) -> c_int,
    num_feature: unsafe extern "C" fn(Handle, *mut Ulong) -> c_int,
    #[allow(clippy::type_complexity)]
    predict_dense: unsafe extern "C" fn(
        Handle,
        *const c_char,
        *const c_char,
        Handle,
        *mut *const Ulong,
        *mut Ulong,
        *mut *const f32,
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
        framework: Framework::XGBoost,
        path: path.to_string(),
        reason,
    };
    // SAFETY: loading a library runs its initialisers; the path is the one the xgboost
    // package loads (or would load) into this process, whose initialisers are made for it.
    let lib = unsafe { Library::new(path) }.map_err(|e| failed(e.to_string()))?;
    // SAFETY: each field's type is that function's signature in `xgboost/c_api.h`; the pointers
    // are stored with the library that owns them, in `API`, which is never dropped.
    let api = unsafe {
        Api {
            create: symbol(&lib, b"XGBoosterCreate\0").map_err(failed)?,
            free: symbol(&lib, b"XGBoosterFree\0").map_err(failed)?,
            set_param: symbol(&lib, b"XGBoosterSetParam\0").map_err(failed)?,
            load_buffer: symbol(&lib, b"XGBoosterLoadModelFromBuffer\0").map_err(failed)?,
            num_feature: symbol(&lib, b"XGBoosterGetNumFeature\0").map_err(failed)?,
            predict_dense: symbol(&lib, b"XGBoosterPredictFromDense\0").map_err(failed)?,
            last_error: symbol(&lib, b"XGBGetLastError\0").map_err(failed)?,
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
        .ok_or(RuntimeError::NotOpen(Framework::XGBoost))
}

impl Api {
    /// The calling thread's last error (`XGBGetLastError`, thread-local in the library).
    fn last_error(&self) -> String {
        // SAFETY: no arguments; the library returns a NUL-terminated thread-local string
        // (or null), valid until this thread's next call into it, copied out at once.
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
            framework: Framework::XGBoost,
            message: self.last_error(),
        })
    }
}

/// An XGBoost booster; `XGBoosterFree` when dropped.
pub(super) struct Booster {
    api: &'static Api,
    handle: Handle,
}

// SAFETY: the handle is a heap object of the library (a `Learner`) with no affinity to the
// thread that created it; `Drop` may free it on any thread.
unsafe impl Send for Booster {}
// SAFETY: the only call made through `&Booster` is `XGBoosterPredictFromDense`, which XGBoost
// documents as thread-safe (`inplace_predict`): it configures the learner under its own lock
// and keeps each thread's output in a per-thread entry. Nothing here mutates the handle.
unsafe impl Sync for Booster {}

impl Drop for Booster {
    fn drop(&mut self) {
        // SAFETY: `handle` came from `XGBoosterCreate` and is freed once, here; `&mut self`
        // means no prediction holds it (every user borrows the booster, which is shared by
        // `Arc`). A failure to free cannot be acted on.
        unsafe { (self.api.free)(self.handle) };
        super::freed();
    }
}

/// The format name `shoal.frameworks.xgboost.detect` gives `data`, or `xgboost`.
pub(super) fn format_of(data: &[u8]) -> &'static str {
    let head = &data[..data.len().min(64)];
    // `bytes.lstrip()`: ASCII whitespace, vertical tab included.
    let start = head
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c))
        .unwrap_or(head.len());
    let head = &head[start..];
    if head.starts_with(b"{\"") || head.starts_with(b"{\n") || head.starts_with(b"{ ") {
        "xgboost-json"
    } else if data.first() == Some(&b'{') {
        "xgboost-ubj"
    } else {
        "xgboost"
    }
}

/// `data` loaded on the CPU with one thread, and its number of features.
pub(super) fn load(data: &[u8]) -> Result<(Booster, usize), RuntimeError> {
    let api = api()?;
    if data.is_empty() {
        // XGBoost aborts the process on an empty buffer (so does the Python package): refused
        // here, in the words of the loader's message.
        return Err(RuntimeError::InvalidXGBoost {
            format: "xgboost",
            line: "empty model".into(),
        });
    }
    let mut handle: Handle = ptr::null_mut();
    let no_cache: [Handle; 0] = [];
    // SAFETY: an empty cache list (a valid, non-null pointer to no elements) and an out
    // pointer to a local.
    api.check(unsafe { (api.create)(no_cache.as_ptr(), 0, &mut handle) })?;
    super::created();
    let booster = Booster { api, handle };
    for (name, value) in [(c"nthread", c"1"), (c"validate_parameters", c"True")] {
        // SAFETY: a live handle and two NUL-terminated strings.
        api.check(unsafe { (api.set_param)(handle, name.as_ptr(), value.as_ptr()) })?;
    }
    let len =
        Ulong::try_from(data.len()).map_err(|_| RuntimeError::Input("model too large".into()))?;
    // XGBoost's UBJSON reader reads a few bytes past the end of a cut document, where the
    // Python package's copy (`bytearray(data)`) has whatever memory follows: this copy is
    // followed by zeros, so such a document fails the same way every time.
    let mut buf = Vec::with_capacity(data.len() + OVERREAD_PAD);
    buf.extend_from_slice(data);
    buf.resize(data.len() + OVERREAD_PAD, 0);
    // SAFETY: a live handle and `len` readable bytes (and padding); the library copies what
    // it keeps.
    let rc = unsafe { (api.load_buffer)(handle, buf.as_ptr().cast(), len) };
    drop(buf);
    if rc != 0 {
        return Err(RuntimeError::InvalidXGBoost {
            format: format_of(data),
            line: first_line(&api.last_error(), "XGBoostError"),
        });
    }
    let mut features: Ulong = 0;
    // SAFETY: a live handle and an out pointer to a local.
    api.check(unsafe { (api.num_feature)(handle, &mut features) })?;
    let features = usize::try_from(features)
        .map_err(|_| RuntimeError::Input(format!("{features} features")))?;
    Ok((booster, features))
}

impl Booster {
    /// `inplace_predict(x, validate_features=False)` for the C-contiguous `[nrows, ncols]`
    /// matrix `rows` (length already checked by the caller).
    pub(super) fn predict<T: Element>(
        &self,
        rows: &[T],
        nrows: usize,
        ncols: usize,
    ) -> Result<Prediction, RuntimeError> {
        let api = self.api;
        // numpy's `__array_interface__` as `xgboost.data.array_interface` encodes it.
        let iface = format!(
            "{{\"data\": [{}, true], \"shape\": [{nrows}, {ncols}], \"strides\": null, \
             \"typestr\": \"{}\", \"version\": 3}}\0",
            rows.as_ptr() as usize,
            T::TYPESTR,
        );
        let mut shape: *const Ulong = ptr::null();
        let mut dims: Ulong = 0;
        let mut out: *const f32 = ptr::null();
        // SAFETY: a live handle (borrowed for the call); the interface names `rows`, which
        // outlives the call and holds `nrows * ncols` values of `T::TYPESTR`; no proxy
        // matrix (null, as `inplace_predict` passes without a base margin); out pointers to
        // locals.
        api.check(unsafe {
            (api.predict_dense)(
                self.handle,
                iface.as_ptr().cast(),
                PREDICT_ARGS.as_ptr(),
                ptr::null_mut(),
                &mut shape,
                &mut dims,
                &mut out,
            )
        })?;
        let dims = usize::try_from(dims).unwrap_or(usize::MAX);
        if (dims > 0 && shape.is_null()) || dims > 8 {
            return Err(RuntimeError::Input(format!(
                "XGBoost returned {dims} dimensions"
            )));
        }
        let shape: Vec<usize> = if dims == 0 {
            Vec::new()
        } else {
            // SAFETY: the library returns `dims` extents in a thread-local buffer of this
            // booster, valid until this thread's next prediction with it; copied here.
            unsafe { std::slice::from_raw_parts(shape, dims) }
                .iter()
                .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
                .collect()
        };
        let len = shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d))
            .ok_or_else(|| RuntimeError::Input(format!("XGBoost returned shape {shape:?}")))?;
        let values = if len == 0 {
            Vec::new()
        } else if out.is_null() {
            return Err(RuntimeError::Input("XGBoost returned no values".into()));
        } else {
            // SAFETY: `len` floats (the product of the shape it returned) in the same
            // thread-local buffer, copied before this thread calls the library again.
            unsafe { std::slice::from_raw_parts(out, len) }.to_vec()
        };
        Ok(Prediction {
            values: super::Values::F32(values),
            shape,
        })
    }
}

//! Messages and formats without the libraries; then, in one test (the libraries are opened
//! once per process, so the order is the test's), the wheels' libraries of the project's
//! virtual environment. Bit-identity with the Python packages is tested from Python
//! (tests/native/), which can train models of every objective.

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};

use super::xgboost::format_of;
use super::*;

#[test]
fn first_line_is_what_python_writes() {
    let cases = [
        ("plain", "plain"),
        ("  two\nlines\n", "two"),
        ("\x1c\x1d padded \x1f", "padded"),
        ("cr\r\nlf", "cr"),
        ("vt\x0bff", "vt"),
        ("sep\u{2028}next", "sep"),
        (
            "[12:48:08] /__w/xgboost/src/learner.cc:46: Check failed: x\nStack trace:",
            "Check failed: x",
        ),
        // `\d` is any Unicode decimal digit, as in a Python `str` pattern.
        ("[١٢:٣] a.cc:٤٦: arabic digits", "arabic digits"),
        (
            "[12:48] a.cc:46:no space after",
            "[12:48] a.cc:46:no space after",
        ),
        ("[12:48] :46: no file", "[12:48] :46: no file"),
        ("[] a.cc:46: no stamp", "[] a.cc:46: no stamp"),
        ("[1x] a.cc:46: letters", "[1x] a.cc:46: letters"),
        (
            "[1] a b.cc:46: space in path",
            "[1] a b.cc:46: space in path",
        ),
        ("[1] a:b.cc:46: colon in path", "colon in path"),
        ("[1] a.cc:4x: bad line", "[1] a.cc:4x: bad line"),
        ("[1] a.cc:46: [2] b.cc:1: once", "[2] b.cc:1: once"),
    ];
    for (message, want) in cases {
        assert_eq!(first_line(message, "XGBoostError"), want, "{message:?}");
    }
    assert_eq!(first_line(" \n\t ", "LightGBMError"), "LightGBMError");
    let long = "é".repeat(400);
    assert_eq!(first_line(&long, "E"), "é".repeat(300)); // characters, not bytes
}

#[test]
fn xgboost_format_names_are_detects() {
    assert_eq!(format_of(b"{\"learner\": {}}"), "xgboost-json");
    assert_eq!(format_of(b" \t\x0b\x0c\r\n{\n"), "xgboost-json");
    assert_eq!(format_of(b"{ }"), "xgboost-json");
    assert_eq!(format_of(b"{L\x00"), "xgboost-ubj");
    assert_eq!(format_of(b" {L"), "xgboost"); // not JSON, and UBJ starts at byte 0
    assert_eq!(format_of(b""), "xgboost");
    let far = [vec![b' '; 64], b"{\"".to_vec()].concat();
    assert_eq!(format_of(&far), "xgboost"); // only the first 64 bytes are looked at
}

#[test]
fn load_errors_read_as_the_python_loaders() {
    let cases = [
        (
            RuntimeError::InvalidXGBoost {
                format: "xgboost-ubj",
                line: "Unknown construct".into(),
            },
            "invalid XGBoost model (xgboost-ubj): Unknown construct",
        ),
        (RuntimeError::NotUtf8, "LightGBM model is not UTF-8 text"),
        (
            RuntimeError::Truncated,
            "LightGBM model is truncated (no 'end of trees' marker)",
        ),
        (
            RuntimeError::InvalidLightGBM("Unknown model format".into()),
            "invalid LightGBM model: Unknown model format",
        ),
    ];
    for (err, want) in cases {
        assert_eq!(err.to_string(), want);
        assert!(err.is_artifact());
    }
    assert!(!RuntimeError::NotOpen(Framework::XGBoost).is_artifact());
    assert_eq!(Framework::from_name("lightgbm"), Some(Framework::LightGBM));
    assert_eq!(Framework::from_name("onnx"), None);
    assert_eq!(Framework::XGBoost.error_name(), "XGBoostError");
}

// --- the wheels' libraries ------------------------------------------------------------------

/// `site-packages/<rel>` of the interpreter `PYO3_PYTHON` names (the Makefile sets it to the
/// project's virtual environment), else of `../.venv`.
fn wheel_library(rel: &str) -> Option<PathBuf> {
    let python = std::env::var_os("PYO3_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    let lib = python.parent()?.parent()?.join("lib");
    std::fs::read_dir(lib)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path().join("site-packages").join(rel))
        .find(|p| p.is_file())
}

/// `y = 0.5 if x0 <= 0.5 (or missing) else 2.5`, two features, as LightGBM writes a model.
const LIGHTGBM_STUMP: &str = "tree
version=v4
num_class=1
num_tree_per_iteration=1
label_index=0
max_feature_idx=1
objective=regression
feature_names=a b
feature_infos=[0:1] [0:1]

Tree=0
num_leaves=2
num_cat=0
split_feature=0
split_gain=40
threshold=0.5
decision_type=2
left_child=-1
right_child=-2
leaf_value=0.5 2.5
leaf_weight=20 20
leaf_count=20 20
internal_value=1.5
internal_weight=40
internal_count=40
is_linear=0
shrinkage=1


end of trees
";

fn f64s(p: &Prediction) -> &[f64] {
    match &p.values {
        Values::F64(v) => v,
        Values::F32(_) => panic!("LightGBM predicts float64"),
    }
}

#[test]
fn the_wheels_libraries_load_predict_and_free() {
    let xgb = wheel_library("xgboost/lib/libxgboost.so");
    let lgbm = wheel_library("lightgbm/lib/lib_lightgbm.so");
    let (Some(xgb), Some(lgbm)) = (xgb, lgbm) else {
        assert!(
            std::env::var_os("PYO3_PYTHON").is_none(),
            "PYO3_PYTHON is set but its environment has no xgboost/lightgbm wheel"
        );
        eprintln!("skipped: no virtual environment with the xgboost and lightgbm wheels");
        return;
    };
    let (xgb, lgbm) = (xgb.to_string_lossy(), lgbm.to_string_lossy());

    // Before `open`, nothing loads; a path that is not a library does not open.
    let before = Booster::load(Framework::LightGBM, LIGHTGBM_STUMP.as_bytes());
    assert_eq!(
        before.err(),
        Some(RuntimeError::NotOpen(Framework::LightGBM))
    );
    let bad = open(Framework::LightGBM, "/nonexistent/lib_lightgbm.so");
    assert!(matches!(bad, Err(RuntimeError::Open { .. })), "{bad:?}");
    assert_eq!(opened(Framework::LightGBM), None);

    assert_eq!(open(Framework::XGBoost, &xgb).ok(), Some(&*xgb));
    assert_eq!(open(Framework::LightGBM, &lgbm).ok(), Some(&*lgbm));
    // Once per process: a later call keeps the library first opened.
    assert_eq!(
        open(Framework::LightGBM, "/elsewhere.so").ok(),
        Some(&*lgbm)
    );

    xgboost_refuses_garbage_with_its_first_line();
    lightgbm_checks_before_parsing();
    lightgbm_predicts_and_refuses_other_shapes();
    a_booster_is_freed_by_its_last_holder();
}

fn xgboost_refuses_garbage_with_its_first_line() {
    let live = live_boosters();
    let err = Booster::load(Framework::XGBoost, b"{\"learner\": 1").err();
    let Some(RuntimeError::InvalidXGBoost { format, line }) = err else {
        panic!("{err:?}");
    };
    assert_eq!(format, "xgboost-json");
    assert!(
        !line.is_empty() && !line.contains('\n') && !line.starts_with('['),
        "{line}"
    );
    assert_eq!(
        live_boosters(),
        live,
        "a booster that failed to load is freed"
    );
}

fn lightgbm_checks_before_parsing() {
    let load = |data: &[u8]| Booster::load(Framework::LightGBM, data).err();
    assert_eq!(
        load(b"tree\n\xff\xfe end of trees"),
        Some(RuntimeError::NotUtf8)
    );
    let cut = &LIGHTGBM_STUMP.as_bytes()[..200];
    assert_eq!(load(cut), Some(RuntimeError::Truncated));
    // The library reads a C string: what follows a NUL is not seen (the marker included);
    // its tree parser scans past the end of a cut tree without crashing on what follows.
    let stump = LIGHTGBM_STUMP.as_bytes();
    for cut in [
        [&stump[..200], b"\0", stump].concat(),
        [&stump[..200], b"end of trees"].concat(),
    ] {
        let err = load(&cut);
        let Some(RuntimeError::InvalidLightGBM(line)) = err else {
            panic!("{err:?}");
        };
        assert!(line.contains("leaf_value"), "{line}");
    }
    let err = load(b"tree\nend of trees\n");
    let Some(RuntimeError::InvalidLightGBM(line)) = err else {
        panic!("{err:?}");
    };
    assert!(!line.is_empty() && !line.contains('\n'), "{line}");
}

fn lightgbm_predicts_and_refuses_other_shapes() {
    let booster = Booster::load(Framework::LightGBM, LIGHTGBM_STUMP.as_bytes()).unwrap();
    assert_eq!(booster.framework(), Framework::LightGBM);
    assert_eq!(booster.num_features(), 2);
    assert_eq!(booster.output_width(), Ok(0));
    let rows = [
        0.0,
        0.0,
        1.0,
        0.0,
        f32::NAN,
        0.0,
        0.5,
        7.0,
        f32::INFINITY,
        0.0,
    ];
    let p = booster.predict(&rows, 5, 2).unwrap();
    assert_eq!(p.shape, vec![5]);
    assert_eq!(f64s(&p), [0.5, 2.5, 0.5, 0.5, 2.5]);
    let p = booster.predict_f64(&[0.5000001, 0.0], 1, 2).unwrap();
    assert_eq!(f64s(&p), [2.5]); // read as float64: above the threshold
    let p = booster.predict(&[], 0, 2).unwrap();
    assert_eq!((p.shape, p.values.len()), (vec![0], 0));

    let err = booster.predict(&[0.0; 6], 2, 3).err();
    let Some(RuntimeError::Library { framework, message }) = err else {
        panic!("{err:?}");
    };
    assert_eq!(framework, Framework::LightGBM);
    assert!(
        message.contains("number of features in data (3)"),
        "{message}"
    );
    let err = booster.predict(&[0.0; 5], 2, 2).err();
    assert!(matches!(err, Some(RuntimeError::Input(_))), "{err:?}");
    let err = booster.predict(&[], usize::MAX, 2).err();
    assert!(matches!(err, Some(RuntimeError::Input(_))), "{err:?}");
}

fn a_booster_is_freed_by_its_last_holder() {
    let live = live_boosters();
    let booster = Booster::load(Framework::LightGBM, LIGHTGBM_STUMP.as_bytes()).unwrap();
    assert_eq!(live_boosters(), live + 1);
    let (go, wait) = mpsc::channel::<()>();
    let held = Arc::clone(&booster);
    let prediction = std::thread::spawn(move || {
        wait.recv().unwrap();
        held.predict(&[1.0, 0.0], 1, 2)
    });
    drop(booster); // the owner lets go first: the prediction's clone keeps the handle
    assert_eq!(live_boosters(), live + 1);
    go.send(()).unwrap();
    let p = prediction.join().unwrap().unwrap();
    assert_eq!(f64s(&p), [2.5]);
    assert_eq!(live_boosters(), live, "freed with its last holder");
}

//! What a tree runtime call can fail with, in the words the Python path used.
//!
//! Load failures carry exactly the `ArtifactError` messages of `shoal/frameworks/xgboost.py`
//! and `lightgbm.py` (the library's first line through [`first_line`], as
//! `shoal.frameworks.base.first_line` writes it); prediction failures carry the library's
//! message whole, as its Python exception (`XGBoostError`, `LightGBMError`) would.

use crate::resolve::{py_first_line, py_is_decimal, py_strip};

use super::Framework;

/// At most this many characters of a library's first line (`first_line`'s `[:300]`).
const FIRST_LINE_CHARS: usize = 300;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// The runtime's shared library has not been opened in this process (`open`).
    #[error("the native {} runtime is not open", .0.name())]
    NotOpen(Framework),
    /// The shared library could not be opened, or lacks a function this crate calls.
    #[error("cannot open the {} library {path}: {reason}", framework.name())]
    Open {
        framework: Framework,
        path: String,
        reason: String,
    },
    /// XGBoost refused the bytes (`format` as `xgboost.detect` names it, or `xgboost`).
    #[error("invalid XGBoost model ({format}): {line}")]
    InvalidXGBoost { format: &'static str, line: String },
    #[error("LightGBM model is not UTF-8 text")]
    NotUtf8,
    /// LightGBM accepts some truncated files silently: refused before it parses them.
    #[error("LightGBM model is truncated (no 'end of trees' marker)")]
    Truncated,
    #[error("invalid LightGBM model: {0}")]
    InvalidLightGBM(String),
    /// A library call failed (a prediction, or setting a booster up): its message, whole.
    #[error("{message}")]
    Library {
        framework: Framework,
        message: String,
    },
    /// Arguments that cannot describe a matrix (length and shape disagree, too many rows for
    /// the library's integer types). The libraries never see them.
    #[error("{0}")]
    Input(String),
}

impl RuntimeError {
    /// Whether the artifact itself is at fault (Python raises `ArtifactError` for these).
    pub fn is_artifact(&self) -> bool {
        matches!(
            self,
            Self::InvalidXGBoost { .. }
                | Self::NotUtf8
                | Self::Truncated
                | Self::InvalidLightGBM(_)
        )
    }
}

/// `shoal.frameworks.base.first_line`: a library error as one line — Python's `strip()`, the
/// first of `splitlines()` (`fallback`, the exception's class name, when nothing is left),
/// XGBoost's log prefix dropped, at most 300 characters.
pub fn first_line(message: &str, fallback: &str) -> String {
    let text = py_strip(message);
    let line = if text.is_empty() {
        fallback
    } else {
        py_first_line(text)
    };
    drop_log_prefix(line)
        .chars()
        .take(FIRST_LINE_CHARS)
        .collect()
}

/// `line` without a leading match of `^\[[\d:]+\] [^ ]+:\d+: ` (`base._LOG_PREFIX`, the
/// "[02:52:23] /path/to/file.h:46: " XGBoost writes), `\d` being a Unicode decimal digit as
/// in a Python `str` pattern.
fn drop_log_prefix(line: &str) -> &str {
    let Some(rest) = line.strip_prefix('[') else {
        return line;
    };
    let stamp = rest
        .find(|c: char| !(py_is_decimal(c) || c == ':'))
        .unwrap_or(rest.len());
    if stamp == 0 {
        return line;
    }
    let Some(rest) = rest[stamp..].strip_prefix("] ") else {
        return line;
    };
    // `[^ ]+:\d+: ` ends at the first space: the word before it must be `X:digits:`.
    let Some(space) = rest.find(' ') else {
        return line;
    };
    let Some(word) = rest[..space].strip_suffix(':') else {
        return line;
    };
    let Some(colon) = word.rfind(':') else {
        return line;
    };
    let (file, digits) = (&word[..colon], &word[colon + 1..]);
    if file.is_empty() || digits.is_empty() || !digits.chars().all(py_is_decimal) {
        return line;
    }
    &rest[space + 1..]
}

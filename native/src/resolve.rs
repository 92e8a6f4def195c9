//! Version resolution: which version of `tenant/name` answers a request.
//!
//! Bit-identical to the Python reference (`router/resolve.py`, pinned by
//! `tests/vectors/resolve.json`). The requested `model_version` is stripped of whitespace
//! (Python's `str.strip()`), then:
//!
//! * empty: the traffic split when one is set, else the `stable` alias, else the newest
//!   version. The split draws ONE number `u` in `[0, 1)` and takes, over its versions in
//!   ascending order with cumulative weights `cum`, the index
//!   `bisect_right(cum, u * float(cum[-1]), 0, n - 1)` (what `random.choices` does);
//! * all digits (Python's `str.isdigit()`, which admits non-ASCII digits): that version,
//!   pinned. The number is read as Python's `int()` reads it (any Unicode decimal digits;
//!   "digits" such as `²` that are not decimal fail as `int()` fails; more than 4,300 digits
//!   exceed CPython's default conversion limit). A number beyond `u64` names no version;
//! * anything else: an alias of that name.
//!
//! Errors carry exactly the reference's messages ([`ResolveError`]'s `Display`); most are
//! "not found" (`NotFound`, a `LookupError`), the few `ValueError`s of the reference are kept
//! apart ([`ResolveError::is_not_found`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt;

mod pystr;
mod unicode_tables;

pub use pystr::{py_repr, py_strip};

/// The alias consulted for an empty request when no traffic split is set.
pub const STABLE: &str = "stable";

/// A model's versions (each with a payload `V`, e.g. its pool and signature), aliases and
/// traffic split: what resolution reads. Immutable once built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routes<V> {
    versions: BTreeMap<u64, V>,
    aliases: HashMap<String, u64>,
    /// (version, weight), ascending by version.
    traffic: Vec<(u64, u32)>,
    /// Running sums of the weights (saturating; exact below 2^64).
    cumulative: Vec<u64>,
}

impl<V> Routes<V> {
    /// Builds the routes; the traffic split is sorted by version (a version given twice
    /// keeps its last weight, as a dict would).
    pub fn new(
        versions: BTreeMap<u64, V>,
        aliases: HashMap<String, u64>,
        traffic: impl IntoIterator<Item = (u64, u32)>,
    ) -> Self {
        let traffic: BTreeMap<u64, u32> = traffic.into_iter().collect();
        let traffic: Vec<(u64, u32)> = traffic.into_iter().collect();
        let mut sum = 0u64;
        let cumulative = traffic
            .iter()
            .map(|&(_, w)| {
                sum = sum.saturating_add(u64::from(w));
                sum
            })
            .collect();
        Self {
            versions,
            aliases,
            traffic,
            cumulative,
        }
    }

    /// Versions and their payloads.
    pub fn versions(&self) -> &BTreeMap<u64, V> {
        &self.versions
    }

    /// Alias name to version.
    pub fn aliases(&self) -> &HashMap<String, u64> {
        &self.aliases
    }

    /// The traffic split: (version, weight), ascending by version; empty when unset.
    pub fn traffic(&self) -> &[(u64, u32)] {
        &self.traffic
    }
}

/// How the answering version was chosen; `Display` gives the reference's labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via<'r> {
    /// `pinned`: the request named the version.
    Pinned,
    /// `alias:<name>`: the request named the alias, or it was `stable` by default.
    Alias(&'r str),
    /// `traffic`: drawn from the traffic split.
    Traffic,
    /// `latest`: no split, no `stable` alias: the newest version.
    Latest,
}

impl fmt::Display for Via<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Pinned => f.write_str("pinned"),
            Self::Alias(name) => write!(f, "alias:{name}"),
            Self::Traffic => f.write_str("traffic"),
            Self::Latest => f.write_str("latest"),
        }
    }
}

/// The answer of [`resolve`]: the version, its payload and how it was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolution<'r, V> {
    pub version: u64,
    pub payload: &'r V,
    pub via: Via<'r>,
}

/// What pointed at a missing version (for [`ResolveError::Dangling`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pointer {
    /// An alias (`stable` included).
    Alias(String),
    /// The traffic split.
    Traffic,
}

impl fmt::Display for Pointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Alias(name) => write!(f, "alias {}", py_repr(name)),
            Self::Traffic => f.write_str("the traffic split"),
        }
    }
}

/// Why a request names no version. `Display` is the reference's message, to the byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResolveError {
    /// `model {model} has no version {requested}` (a pinned number that is not a version;
    /// `requested` as stripped, digits as given).
    NoVersion { model: String, requested: String },
    /// `model {model} has no alias {requested!r}`.
    NoAlias { model: String, alias: String },
    /// `model {model}: {pointer} points to missing version {version}`.
    Dangling {
        model: String,
        pointer: Pointer,
        version: u64,
    },
    /// `model {model} has no versions`.
    NoVersions { model: String },
    /// Python's `int()` rejects the digits (e.g. `²`): `invalid literal for int() with base
    /// 10: {repr}`, the repr cut at 200 characters. A `ValueError` in the reference.
    InvalidLiteral { requested: String },
    /// More digits than CPython converts by default (4,300). A `ValueError` in the reference.
    TooManyDigits { digits: usize },
    /// Every weight of the traffic split is zero (`random.choices` refuses). A `ValueError`
    /// in the reference.
    ZeroWeights,
}

impl ResolveError {
    /// Whether this is the reference's `NotFound` (`LookupError`); otherwise its `ValueError`.
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Self::NoVersion { .. }
                | Self::NoAlias { .. }
                | Self::Dangling { .. }
                | Self::NoVersions { .. }
        )
    }
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoVersion { model, requested } => {
                write!(f, "model {model} has no version {requested}")
            }
            Self::NoAlias { model, alias } => {
                write!(f, "model {model} has no alias {}", py_repr(alias))
            }
            Self::Dangling {
                model,
                pointer,
                version,
            } => write!(
                f,
                "model {model}: {pointer} points to missing version {version}"
            ),
            Self::NoVersions { model } => write!(f, "model {model} has no versions"),
            Self::InvalidLiteral { requested } => {
                // CPython formats this with `%.200R`: the repr, cut at 200 characters.
                let repr: String = py_repr(requested).chars().take(200).collect();
                write!(f, "invalid literal for int() with base 10: {repr}")
            }
            Self::TooManyDigits { digits } => write!(
                f,
                "Exceeds the limit ({} digits) for integer string conversion: value has \
                 {digits} digits; use sys.set_int_max_str_digits() to increase the limit",
                pystr::INT_MAX_STR_DIGITS
            ),
            Self::ZeroWeights => f.write_str("Total of weights must be greater than zero"),
        }
    }
}

impl std::error::Error for ResolveError {}

/// Resolves `requested` (a request's `model_version`) for the model `full_name`
/// (`tenant/name`, used in messages only). `draw` is called once, and only when the traffic
/// split decides; it should return a uniform number in `[0, 1)` (any `f64` is accepted and
/// treated as `random.choices` would treat it: the index stays within the split).
pub fn resolve<'r, V>(
    routes: &'r Routes<V>,
    full_name: &str,
    requested: &str,
    draw: impl FnOnce() -> f64,
) -> Result<Resolution<'r, V>, ResolveError> {
    let requested = py_strip(requested);
    if pystr::is_digits(requested) {
        let number = match pystr::parse_int(requested) {
            Ok(number) => number,
            Err(pystr::IntError::InvalidLiteral) => {
                return Err(ResolveError::InvalidLiteral {
                    requested: requested.to_owned(),
                })
            }
            Err(pystr::IntError::TooManyDigits(digits)) => {
                return Err(ResolveError::TooManyDigits { digits })
            }
        };
        return match number.and_then(|v| routes.versions.get_key_value(&v)) {
            Some((&version, payload)) => Ok(Resolution {
                version,
                payload,
                via: Via::Pinned,
            }),
            None => Err(ResolveError::NoVersion {
                model: full_name.to_owned(),
                requested: requested.to_owned(),
            }),
        };
    }
    if !requested.is_empty() {
        let Some((name, &target)) = routes.aliases.get_key_value(requested) else {
            return Err(ResolveError::NoAlias {
                model: full_name.to_owned(),
                alias: requested.to_owned(),
            });
        };
        return target_of(routes, full_name, target, Via::Alias(name));
    }
    if let Some(&last) = routes.cumulative.last() {
        // random.choices: total = float(cum[-1]); refuses a total <= 0 before drawing.
        if last == 0 {
            return Err(ResolveError::ZeroWeights);
        }
        let x = draw() * last as f64;
        let i = bisect_right(&routes.cumulative, x, routes.cumulative.len() - 1);
        let (version, _) = routes.traffic[i];
        return target_of(routes, full_name, version, Via::Traffic);
    }
    if let Some((name, &target)) = routes.aliases.get_key_value(STABLE) {
        return target_of(routes, full_name, target, Via::Alias(name));
    }
    match routes.versions.last_key_value() {
        Some((&version, payload)) => Ok(Resolution {
            version,
            payload,
            via: Via::Latest,
        }),
        None => Err(ResolveError::NoVersions {
            model: full_name.to_owned(),
        }),
    }
}

/// The version an alias or the split (`via`) points to, or the "points to missing version"
/// error naming it.
fn target_of<'r, V>(
    routes: &'r Routes<V>,
    full_name: &str,
    version: u64,
    via: Via<'r>,
) -> Result<Resolution<'r, V>, ResolveError> {
    if let Some(payload) = routes.versions.get(&version) {
        return Ok(Resolution {
            version,
            payload,
            via,
        });
    }
    let pointer = match via {
        Via::Alias(name) => Pointer::Alias(name.to_owned()),
        _ => Pointer::Traffic,
    };
    Err(ResolveError::Dangling {
        model: full_name.to_owned(),
        pointer,
        version,
    })
}

/// Python's `bisect.bisect_right(a, x, 0, hi)` with Python's exact int/float comparison: the
/// same halving steps, so the same answer even if `a` were unsorted.
fn bisect_right(a: &[u64], x: f64, hi: usize) -> usize {
    let (mut lo, mut hi) = (0, hi.min(a.len()));
    while lo < hi {
        let mid = (lo + hi) / 2;
        if f64_lt_u64(x, a[mid]) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    lo
}

/// `x < c` exactly, as Python compares a float with an int (NaN compares false).
fn f64_lt_u64(x: f64, c: u64) -> bool {
    if x.is_nan() {
        return false;
    }
    if x < 0.0 {
        return true;
    }
    // 2^64: above every u64.
    if x >= 18_446_744_073_709_551_616.0 {
        return false;
    }
    // x in [0, 2^64): floor(x) is exact as a u64, and x < c <=> floor(x) < c for integer c.
    (x.floor() as u64) < c
}

#[cfg(test)]
mod tests;

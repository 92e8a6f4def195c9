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

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

mod pystr;
mod unicode_tables;

pub use pystr::{py_first_line, py_is_decimal, py_repr, py_strip};

/// The alias consulted for an empty request when no traffic split is set.
pub const STABLE: &str = "stable";

/// A model's versions (each with a payload `V`, e.g. its pool and signature), aliases and
/// traffic split: what resolution reads. Immutable once published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routes<V> {
    pub versions: BTreeMap<u64, V>,
    pub aliases: HashMap<String, u64>,
    /// The traffic split, (version, weight), ascending by version with each version once
    /// (the reference's `sorted(record.traffic)`, which [`Routes::new`] builds); empty: no
    /// split. [`resolve`] sorts a copy of a split given out of order.
    pub traffic: Vec<(u64, u32)>,
}

impl<V> Routes<V> {
    /// Builds the routes with the traffic split sorted by version (a version given twice
    /// keeps its last weight, as a dict would).
    pub fn new(
        versions: BTreeMap<u64, V>,
        aliases: HashMap<String, u64>,
        traffic: impl IntoIterator<Item = (u64, u32)>,
    ) -> Self {
        let traffic: BTreeMap<u64, u32> = traffic.into_iter().collect();
        Self {
            versions,
            aliases,
            traffic: traffic.into_iter().collect(),
        }
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
/// (`tenant/name`, used in messages only): the version, its payload and how it was chosen.
/// `draw` is called once, and only when the traffic split decides; it should return a
/// uniform number in `[0, 1)` (any `f64` is accepted and treated as `random.choices` would
/// treat it: the index stays within the split). Allocates only on errors (and for a split
/// given out of order).
pub fn resolve<'r, V>(
    routes: &'r Routes<V>,
    full_name: &str,
    requested: &str,
    draw: impl FnOnce() -> f64,
) -> Result<(u64, &'r V, Via<'r>), ResolveError> {
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
            Some((&version, payload)) => Ok((version, payload, Via::Pinned)),
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
    if !routes.traffic.is_empty() {
        let version = split(&routes.traffic, draw)?;
        return target_of(routes, full_name, version, Via::Traffic);
    }
    if let Some((name, &target)) = routes.aliases.get_key_value(STABLE) {
        return target_of(routes, full_name, target, Via::Alias(name));
    }
    match routes.versions.last_key_value() {
        Some((&version, payload)) => Ok((version, payload, Via::Latest)),
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
) -> Result<(u64, &'r V, Via<'r>), ResolveError> {
    if let Some(payload) = routes.versions.get(&version) {
        return Ok((version, payload, via));
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

/// `random.choices(versions, weights)[0]` with `random()` = `draw()`, over the split sorted
/// by version: `total = float(sum(weights))`, refused (before drawing) when 0; then
/// `bisect_right(cumulative, draw() * total, 0, n - 1)`. The weights are non-negative, so
/// the running sums never decrease and that bisection is the first index whose running sum
/// exceeds `x` (compared exactly, as Python compares a float with an int), or `n - 1`.
fn split(traffic: &[(u64, u32)], draw: impl FnOnce() -> f64) -> Result<u64, ResolveError> {
    let sorted: Cow<'_, [(u64, u32)]> = if traffic.windows(2).all(|w| w[0].0 < w[1].0) {
        Cow::Borrowed(traffic)
    } else {
        let mut copy = traffic.to_vec();
        copy.sort_by_key(|&(v, _)| v);
        Cow::Owned(copy)
    };
    // Saturating: exact below 2^64, i.e. for any split of fewer than 2^32 versions.
    let total = sorted
        .iter()
        .fold(0u64, |sum, &(_, w)| sum.saturating_add(u64::from(w)));
    if total == 0 {
        return Err(ResolveError::ZeroWeights);
    }
    let x = draw() * total as f64;
    let (last, head) = match sorted.split_last() {
        Some(split) => split,
        None => return Err(ResolveError::ZeroWeights),
    };
    let mut running = 0u64;
    for &(version, weight) in head {
        running = running.saturating_add(u64::from(weight));
        if f64_lt_u64(x, running) {
            return Ok(version);
        }
    }
    Ok(last.0)
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

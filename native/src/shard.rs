//! The shard function (see DESIGN.md, "Placement: shuffle sharding").
//!
//! Rendezvous (highest-random-weight) hashing keyed by a secret cluster salt, bit-identical to
//! the Python reference (`placement/shard.py`, pinned by `tests/vectors/shard.json`):
//!
//! * `h64(data, salt)` = BLAKE2b with an 8-byte digest, keyed by the first 64 bytes of `salt`
//!   (an empty salt means unkeyed, as in `hashlib`), read as a little-endian `u64`;
//! * `score(h_t, h_w)` = splitmix64's finalizer of `(h_t ^ h_w) + 0x9E3779B97F4A7C15`;
//! * a tenant's *rank order* sorts the members by descending `(score, index)`: among equal
//!   scores the higher index comes first (NumPy's `argsort(kind="stable")[::-1]`). Scores only
//!   tie when two worker hashes are equal (the score is a bijection of `h_w` for a fixed `h_t`);
//! * the *selection order* for `length` picks: step `i` takes the best-ranked unpicked member
//!   whose zone holds fewer than `ceil((i + 1) / Z)` picks (`Z` zones in the pool; 1 without
//!   zones, which makes this the rank order); when every unpicked member sits in a zone at its
//!   cap, the cap is relaxed and the best-ranked unpicked member is taken. After `length`
//!   picks the remaining members follow in rank order, so the order always covers the pool.
//!
//! Hence: deterministic; a shard of size `k` is the first `k` of the order (`k` distinct
//! members, nested as `k` grows); at most `ceil(k / Z)` per zone when every zone has that many
//! members; a worker joining or leaving changes at most one member of any shard.
//!
//! Nothing here panics on input: sizes are clamped as the reference clamps them, and the few
//! invalid inputs (duplicate worker ids, mismatched lengths) are [`PoolError`]s.

use std::collections::HashMap;
use std::fmt::{self, Write as _};

use blake2::digest::consts::U8;
use blake2::digest::core_api::{Block, Buffer, UpdateCore, VariableOutputCore};
use blake2::digest::{Digest, FixedOutput, KeyInit, Output};
use blake2::{Blake2b, Blake2bMac, Blake2bVarCore};

use crate::par;

/// Salts longer than this are truncated (BLAKE2b's maximum key length; Python's `salt[:64]`).
pub const MAX_SALT_LEN: usize = 64;

/// Fallback positions past `k` that still follow the zone rule in [`Pool::ranked_into`];
/// beyond them the order is plain rank order (`FALLBACK_ZONED` in the reference).
pub const FALLBACK_ZONED: usize = 8;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
const M1: u64 = 0xBF58_476D_1CE4_E5B9;
const M2: u64 = 0x94D0_49BB_1331_11EB;

/// `k` at or below which [`Pool::shard_matrix_into`] selects by `k` masked-argmax passes over
/// the scores (O(N k) per row) instead of sorting the row (O(N log N)); both give the same rows.
const ARGMAX_MAX_K: usize = 8;
/// The fewest scores (tenants x members) [`Pool::shard_matrix`] gives a thread of its own.
pub const PARALLEL_SCORES: usize = 1 << 22;

/// BLAKE2b-64 keyed by a salt, built once to hash many inputs.
///
/// Keyed BLAKE2b compresses the zero-padded key as its first block, which does not depend on
/// the input: that state is computed once, and each non-empty input costs only its own
/// blocks (one compression for ids under 129 bytes, as unkeyed hashing). An empty input
/// finalizes the key block itself, which the MAC form does.
#[derive(Clone)]
pub struct Hasher {
    keyed: Option<Keyed>,
}

#[derive(Clone)]
struct Keyed {
    /// For the empty input.
    mac: Blake2bMac<U8>,
    /// The state after the key block.
    after_key: Blake2bVarCore,
}

impl Hasher {
    /// A hasher keyed by `salt[..64]`; an empty salt gives plain (unkeyed) BLAKE2b-64, as
    /// `hashlib.blake2b(key=b"")` does. (blake2 0.10's MAC with an empty key would hash a zero
    /// key block, which `hashlib` does not: hence the explicit unkeyed case.)
    pub fn new(salt: &[u8]) -> Self {
        let key = &salt[..salt.len().min(MAX_SALT_LEN)];
        if key.is_empty() {
            return Self { keyed: None };
        }
        // The only failure of `new_from_slice` is a key over 64 bytes, excluded just above.
        let mac = <Blake2bMac<U8> as KeyInit>::new_from_slice(key)
            .expect("a BLAKE2b key of 1..=64 bytes is valid");
        let mut after_key = Blake2bVarCore::new_with_params(&[], &[], key.len(), 8);
        let mut block = Block::<Blake2bVarCore>::default();
        block[..key.len()].copy_from_slice(key);
        after_key.update_blocks(std::slice::from_ref(&block));
        Self {
            keyed: Some(Keyed { mac, after_key }),
        }
    }

    /// The little-endian `u64` of the 8-byte digest of `data`.
    pub fn hash(&self, data: &[u8]) -> u64 {
        let mut first = [0u8; 8];
        match &self.keyed {
            Some(keyed) if !data.is_empty() => {
                let mut core = keyed.after_key.clone();
                let mut buffer = Buffer::<Blake2bVarCore>::default();
                buffer.digest_blocks(data, |blocks| core.update_blocks(blocks));
                let mut out = Output::<Blake2bVarCore>::default();
                core.finalize_variable_core(&mut buffer, &mut out);
                // The 8-byte digest is the first 8 bytes of the state (TRUNC_SIDE is Left).
                first.copy_from_slice(&out[..8]);
            }
            Some(keyed) => first.copy_from_slice(&keyed.mac.clone().finalize_fixed()),
            None => first.copy_from_slice(&Blake2b::<U8>::digest(data)),
        }
        u64::from_le_bytes(first)
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("Hasher")
            .field("keyed", &self.keyed.is_some())
            .finish()
    }
}

/// `blake2b(data, digest_size=8, key=salt[:64])` as a little-endian `u64`.
pub fn h64(data: &[u8], salt: &[u8]) -> u64 {
    Hasher::new(salt).hash(data)
}

/// Keyed hashes of many ids (tenants or workers), in order; many ids are split over the cores.
pub fn tenant_hashes<S: AsRef<str> + Sync>(ids: &[S], salt: &[u8]) -> Vec<u64> {
    let hasher = Hasher::new(salt);
    let mut out = vec![0; ids.len()];
    par::blocks(ids.len(), &mut out, 1, 1 << 15, |range, part| {
        for (o, t) in part.iter_mut().zip(&ids[range]) {
            *o = hasher.hash(t.as_ref().as_bytes());
        }
    });
    out
}

/// The rendezvous score of a tenant hash against a worker hash: splitmix64's finalizer of
/// `(h_t ^ h_w) + GOLDEN` (wrapping arithmetic throughout).
#[inline]
pub const fn score(h_t: u64, h_w: u64) -> u64 {
    let mut x = (h_t ^ h_w).wrapping_add(GOLDEN);
    x = (x ^ (x >> 30)).wrapping_mul(M1);
    x = (x ^ (x >> 27)).wrapping_mul(M2);
    x ^ (x >> 31)
}

/// The primary member of a model version among `k` shard members: unkeyed
/// `blake2b(key, digest_size=8)` (little-endian) modulo `k` (`router/choose.py`). `None` when
/// `k == 0` (the reference would divide by zero; its caller never asks).
pub fn primary_index(key: &str, k: usize) -> Option<usize> {
    let k = u64::try_from(k).ok().filter(|&k| k > 0)?;
    usize::try_from(h64(key.as_bytes(), &[]) % k).ok()
}

/// [`primary_index`] of `"{tenant}/{name}:{version}"` for every model `m` (tenant
/// `tenants[model_tenant[m]]`, `names[m]`, `versions[m]`, shard size `k[m]`), the keys built
/// in a buffer and the models split over the cores: the simulator's routing of millions of
/// models. `None` when a `k` is 0, a tenant index is out of range or the lengths differ.
pub fn model_primary_indices<T: AsRef<str> + Sync, N: AsRef<str> + Sync>(
    tenants: &[T],
    model_tenant: &[usize],
    names: &[N],
    versions: &[i64],
    k: &[usize],
) -> Option<Vec<usize>> {
    let m = model_tenant.len();
    if names.len() != m || versions.len() != m || k.len() != m {
        return None;
    }
    let mut out = vec![usize::MAX; m];
    par::blocks(m, &mut out, 1, 1 << 14, |models, part| {
        let mut key = String::new();
        for (o, i) in part.iter_mut().zip(models) {
            let Some(tenant) = tenants.get(model_tenant[i]) else {
                continue;
            };
            key.clear();
            // Writing to a String cannot fail.
            let _ = write!(
                key,
                "{}/{}:{}",
                tenant.as_ref(),
                names[i].as_ref(),
                versions[i]
            );
            if let Some(p) = primary_index(&key, k[i]) {
                *o = p;
            }
        }
    });
    // usize::MAX marks a model that had no primary (k = 0 or no such tenant).
    out.iter().all(|&p| p != usize::MAX).then_some(out)
}

/// Why a pool cannot be built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolError {
    /// Two members share a worker id.
    DuplicateWorker(String),
    /// One zone per member is required.
    ZoneCount { members: usize, zones: usize },
    /// Member indices are `u32` in shard matrices.
    TooLarge(usize),
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The reference's text (`Pool.__post_init__`).
            Self::DuplicateWorker(_) => f.write_str("duplicate worker ids in pool"),
            Self::ZoneCount { members, zones } => {
                write!(f, "{members} worker ids but {zones} zones")
            }
            Self::TooLarge(n) => write!(f, "a pool of {n} members is too large"),
        }
    }
}

impl std::error::Error for PoolError {}

/// How one tenant's shard is chosen in [`Pool::ranked_into`] (a tenant's override).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Override<'a> {
    /// The pool's shard size.
    #[default]
    Default,
    /// An explicit shard size (hot tenants); `0` means the pool's.
    ShardSize(usize),
    /// Explicit members (VIP tenants), as indices from [`Pool::pinned`]: they come first in
    /// the given order and are the shard (duplicates kept, as in the reference). An empty
    /// slice (every listed worker unknown) gives an empty shard, not the default one.
    /// Indices out of range are ignored.
    Members(&'a [usize]),
}

/// Reusable buffers for the per-request path: one per thread (or per caller) makes
/// [`Pool::selection_order_into`] and [`Pool::ranked_into`] allocation-free once warm.
#[derive(Debug, Default, Clone)]
pub struct Scratch {
    scores: Vec<u64>,
    ranked: Vec<usize>,
    skipped: Vec<usize>,
    counts: Vec<usize>,
    taken: Vec<bool>,
    order: Vec<usize>,
}

/// One pool's members with their hashes precomputed (build once per snapshot epoch).
#[derive(Debug, Clone)]
pub struct Pool {
    ids: Vec<String>,
    index: HashMap<String, usize>,
    hashes: Vec<u64>,
    zones: Vec<usize>,
    n_zones: usize,
    shard_size: usize,
    hasher: Hasher,
}

impl Pool {
    /// Members `worker_ids[i]` in zone `zones[i]` (`""` is a zone like any other: a pool with
    /// one distinct zone, empty or not, is unzoned), keyed by `salt` (truncated to 64 bytes),
    /// with default shard size `shard_size`.
    pub fn new<S: AsRef<str>, Z: AsRef<str>>(
        worker_ids: &[S],
        zones: &[Z],
        salt: &[u8],
        shard_size: usize,
    ) -> Result<Self, PoolError> {
        if worker_ids.len() != zones.len() {
            return Err(PoolError::ZoneCount {
                members: worker_ids.len(),
                zones: zones.len(),
            });
        }
        if u32::try_from(worker_ids.len()).is_err() {
            return Err(PoolError::TooLarge(worker_ids.len()));
        }
        let hasher = Hasher::new(salt);
        let mut index = HashMap::with_capacity(worker_ids.len());
        for (i, id) in worker_ids.iter().enumerate() {
            if index.insert(id.as_ref().to_owned(), i).is_some() {
                return Err(PoolError::DuplicateWorker(id.as_ref().to_owned()));
            }
        }
        // Zones are numbered in sorted order as in the reference (only equality matters).
        let mut names: Vec<&str> = zones.iter().map(AsRef::as_ref).collect();
        names.sort_unstable();
        names.dedup();
        let zone_ids = zones
            .iter()
            .map(|z| names.binary_search(&z.as_ref()).unwrap_or(0))
            .collect();
        Ok(Self {
            ids: worker_ids.iter().map(|s| s.as_ref().to_owned()).collect(),
            hashes: worker_ids
                .iter()
                .map(|s| hasher.hash(s.as_ref().as_bytes()))
                .collect(),
            index,
            zones: zone_ids,
            n_zones: names.len().max(1),
            shard_size,
            hasher,
        })
    }

    /// A pool given by worker hashes and dense zone ids directly (tests build ties this way).
    #[cfg(test)]
    pub(crate) fn from_hashes(hashes: Vec<u64>, zones: Vec<usize>, shard_size: usize) -> Self {
        let n_zones = zones.iter().max().map_or(1, |z| z + 1);
        Self {
            ids: (0..hashes.len()).map(|i| format!("#{i}")).collect(),
            index: (0..hashes.len()).map(|i| (format!("#{i}"), i)).collect(),
            hashes,
            zones,
            n_zones,
            shard_size,
            hasher: Hasher::new(b""),
        }
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Whether the pool has no members.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Distinct zones (at least 1).
    pub fn n_zones(&self) -> usize {
        self.n_zones
    }

    /// The default shard size.
    pub fn shard_size(&self) -> usize {
        self.shard_size
    }

    /// Worker ids, by member index.
    pub fn worker_ids(&self) -> &[String] {
        &self.ids
    }

    /// Keyed worker hashes, by member index.
    pub fn worker_hashes(&self) -> &[u64] {
        &self.hashes
    }

    /// The member index of a worker id.
    pub fn index_of(&self, worker_id: &str) -> Option<usize> {
        self.index.get(worker_id).copied()
    }

    /// The keyed hash of a tenant id under this pool's salt.
    pub fn tenant_hash(&self, tenant: &str) -> u64 {
        self.hasher.hash(tenant.as_bytes())
    }

    /// Indices of the known ids among `members`, in the given order (unknown ids dropped,
    /// duplicates kept): the input of [`Override::Members`].
    pub fn pinned<S: AsRef<str>>(&self, members: &[S]) -> Vec<usize> {
        members
            .iter()
            .filter_map(|w| self.index_of(w.as_ref()))
            .collect()
    }

    /// The selection order of a tenant (all members, see the module docs): the first
    /// `min(length, N)` follow the zone rule, the rest are in rank order. Allocates; see
    /// [`Pool::selection_order_into`] for the reusable form.
    pub fn selection_order(&self, h_t: u64, length: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(self.len());
        self.selection_order_into(h_t, length, &mut Scratch::default(), &mut out);
        out
    }

    /// [`Pool::selection_order`] into `out` (cleared first), using `scratch`'s buffers.
    /// O(N log N) for the rank order, plus O(length x skipped) for the zone walk.
    pub fn selection_order_into(
        &self,
        h_t: u64,
        length: usize,
        scratch: &mut Scratch,
        out: &mut Vec<usize>,
    ) {
        out.clear();
        let n = self.len();
        if n == 0 {
            return;
        }
        let length = length.min(n);
        let Scratch {
            scores,
            ranked,
            skipped,
            counts,
            taken,
            ..
        } = scratch;
        scores.clear();
        scores.extend(self.hashes.iter().map(|&h_w| score(h_t, h_w)));
        ranked.clear();
        ranked.extend(0..n);
        // Descending (score, index): the reversed stable ascending argsort.
        ranked.sort_unstable_by(|&a, &b| (scores[b], b).cmp(&(scores[a], a)));
        if self.n_zones <= 1 {
            out.extend_from_slice(ranked);
            return;
        }
        counts.clear();
        counts.resize(self.n_zones, 0);
        taken.clear();
        taken.resize(n, false);
        // Passed over for their zone's cap, in rank order; all outrank the cursor.
        skipped.clear();
        let mut cursor = 0;
        while out.len() < length {
            let cap = (out.len() + 1).div_ceil(self.n_zones);
            let mut pick = skipped
                .iter()
                .position(|&i| counts[self.zones[i]] < cap)
                .map(|j| skipped.remove(j));
            while pick.is_none() && cursor < n {
                let idx = ranked[cursor];
                cursor += 1;
                if counts[self.zones[idx]] < cap {
                    pick = Some(idx);
                } else {
                    skipped.push(idx);
                }
            }
            // Every unpicked member sits in a zone at its cap: relax the cap. (`skipped` is
            // never empty here since length <= N; the `else` only keeps this panic-free.)
            let pick = match pick {
                Some(p) => p,
                None if !skipped.is_empty() => skipped.remove(0),
                None => break,
            };
            counts[self.zones[pick]] += 1;
            taken[pick] = true;
            out.push(pick);
        }
        out.extend(ranked.iter().copied().filter(|&i| !taken[i]));
    }

    /// The shard size of a tenant under `ov`: the pinned members' count, else the override's
    /// or the pool's size, at most N.
    pub fn shard_size_for(&self, ov: Override<'_>) -> usize {
        match ov {
            Override::Members(pinned) => pinned.iter().filter(|&&i| i < self.len()).count(),
            Override::ShardSize(k) if k > 0 => k.min(self.len()),
            _ => self.shard_size.min(self.len()),
        }
    }

    /// `Placement.ranked` of the reference: every member in selection order with the zone
    /// rule applied to the first `k + FALLBACK_ZONED`, and `k`; the first `k` are the shard.
    /// With [`Override::Members`] the pinned members come first (in their order, duplicates
    /// kept) and the rest follow in selection order. Writes into `out` (cleared first);
    /// allocation-free once `scratch` and `out` are warm.
    pub fn ranked_into(
        &self,
        h_t: u64,
        ov: Override<'_>,
        scratch: &mut Scratch,
        out: &mut Vec<usize>,
    ) -> usize {
        let k = self.shard_size_for(ov);
        let length = k.saturating_add(FALLBACK_ZONED);
        let Override::Members(pinned) = ov else {
            self.selection_order_into(h_t, length, scratch, out);
            return k;
        };
        let mut order = std::mem::take(&mut scratch.order);
        self.selection_order_into(h_t, length, scratch, &mut order);
        let taken = &mut scratch.taken;
        taken.clear();
        taken.resize(self.len(), false);
        out.clear();
        for &i in pinned.iter().filter(|&&i| i < self.len()) {
            out.push(i);
            taken[i] = true;
        }
        out.extend(order.iter().copied().filter(|&i| !taken[i]));
        scratch.order = order;
        k
    }

    /// [`Pool::ranked_into`] for a tenant id with the reference's override fields: a positive
    /// `shard_size` overrides the pool's; a non-empty `members` list (worker ids, unknown ones
    /// dropped) takes precedence over both. Allocates.
    pub fn ranked<S: AsRef<str>>(
        &self,
        tenant: &str,
        shard_size: usize,
        members: &[S],
    ) -> (Vec<usize>, usize) {
        let pinned;
        let ov = if !members.is_empty() {
            pinned = self.pinned(members);
            Override::Members(&pinned)
        } else if shard_size > 0 {
            Override::ShardSize(shard_size)
        } else {
            Override::Default
        };
        let mut out = Vec::with_capacity(self.len());
        let k = self.ranked_into(
            self.tenant_hash(tenant),
            ov,
            &mut Scratch::default(),
            &mut out,
        );
        (out, k)
    }

    /// Shards of many tenants: row `t` of the row-major `[T, min(k, N)]` result is the first
    /// `min(k, N)` of the selection order of `tenant_hashes[t]`. O(T N k) for small `k`,
    /// O(T N log N) otherwise; memory O(N) per thread besides the result. Rows are independent:
    /// a large matrix is computed in contiguous blocks of rows (of [`PARALLEL_SCORES`] scores
    /// at least) on every core, the same rows as one thread would give.
    pub fn shard_matrix(&self, tenant_hashes: &[u64], k: usize) -> Vec<u32> {
        let k = k.min(self.len());
        let mut out = vec![0; tenant_hashes.len() * k];
        let min_rows = PARALLEL_SCORES / self.len().max(1);
        par::blocks(tenant_hashes.len(), &mut out, k, min_rows, |rows, block| {
            self.shard_matrix_into(&tenant_hashes[rows], k, block);
        });
        out
    }

    /// [`Pool::shard_matrix`] into `out`, whose rows are `min(k, N)` wide. Rows beyond
    /// `out.len() / min(k, N)` are not computed; entries of `out` beyond the computed rows are
    /// left as they are.
    pub fn shard_matrix_into(&self, tenant_hashes: &[u64], k: usize, out: &mut [u32]) {
        let n = self.len();
        let k = k.min(n);
        if k == 0 {
            return;
        }
        let mut scratch = Scratch::default();
        let mut order = Vec::with_capacity(n);
        for (&h_t, row) in tenant_hashes.iter().zip(out.chunks_exact_mut(k)) {
            if k <= ARGMAX_MAX_K {
                self.prefix_by_argmax(h_t, row, &mut scratch);
            } else {
                self.selection_order_into(h_t, k, &mut scratch, &mut order);
                for (slot, &i) in row.iter_mut().zip(&order) {
                    // Lossless: N fits in u32 (checked in `Pool::new`).
                    *slot = i as u32;
                }
            }
        }
    }

    /// The first `row.len()` (<= N) of the selection order by masked argmax: step `i` takes
    /// the unpicked member of greatest `(score, index)` whose zone is under the cap, or, when
    /// none is, of all unpicked members. Equal to the skipped-list walk of
    /// [`Pool::selection_order_into`], which takes the best-ranked eligible member too.
    ///
    /// Members are scanned by ascending index, so a later member with an equal score ranks
    /// higher: comparing scores with `>=` (or `<` to reject) is comparing `(score, index)`.
    fn prefix_by_argmax(&self, h_t: u64, row: &mut [u32], scratch: &mut Scratch) {
        const NONE: usize = usize::MAX;
        let k = row.len();
        if self.n_zones <= 1 {
            // Insertion into the best `k` seen so far, kept in descending order.
            let mut best_s = [0u64; ARGMAX_MAX_K];
            let mut best_i = [0usize; ARGMAX_MAX_K];
            let mut len = 0;
            for (i, &h_w) in self.hashes.iter().enumerate() {
                let s = score(h_t, h_w);
                if len == k && s < best_s[k - 1] {
                    continue;
                }
                let mut pos = len.min(k - 1);
                while pos > 0 && best_s[pos - 1] <= s {
                    best_s[pos] = best_s[pos - 1];
                    best_i[pos] = best_i[pos - 1];
                    pos -= 1;
                }
                best_s[pos] = s;
                best_i[pos] = i;
                len = (len + 1).min(k);
            }
            for (slot, &i) in row.iter_mut().zip(&best_i) {
                // Lossless: N fits in u32 (checked in `Pool::new`).
                *slot = i as u32;
            }
            return;
        }
        let n = self.len();
        let scores = &mut scratch.scores;
        scores.clear();
        scores.extend(self.hashes.iter().map(|&h_w| score(h_t, h_w)));
        let taken = &mut scratch.taken;
        taken.clear();
        taken.resize(n, false);
        let counts = &mut scratch.counts;
        counts.clear();
        counts.resize(self.n_zones, 0);
        for (i, slot) in row.iter_mut().enumerate() {
            let cap = (i + 1).div_ceil(self.n_zones);
            let (mut best, mut best_s) = (NONE, 0);
            let (mut relaxed, mut relaxed_s) = (NONE, 0);
            for (j, (&s, &zone)) in scores.iter().zip(&self.zones).enumerate() {
                if taken[j] {
                    continue;
                }
                if relaxed == NONE || s >= relaxed_s {
                    (relaxed, relaxed_s) = (j, s);
                }
                if counts[zone] < cap && (best == NONE || s >= best_s) {
                    (best, best_s) = (j, s);
                }
            }
            let pick = if best != NONE { best } else { relaxed };
            if pick == NONE {
                return;
            }
            taken[pick] = true;
            counts[self.zones[pick]] += 1;
            *slot = pick as u32;
        }
    }
}

#[cfg(test)]
mod tests;

//! Exact replay of the worker's W-TinyLFU cache (`worker/policy.py`'s `TinyLfu` inside
//! `worker/cache.py`'s `TieredCache`, one memory tier) for the capacity simulator, at the
//! speed the simulator needs (tens of millions of requests, each at several budgets).
//!
//! Same algorithm, step for step, so the same request sequence gives the same hits:
//! a hit feeds the sketch and moves the entry (window and protected: to their most recent end;
//! probation: to protected, whose overflow moves its oldest back to probation); a miss first
//! makes room (victims from the policy until the bytes fit, as `TieredCache._make_room`), then
//! inserts the item into the window and feeds the sketch. The count-min sketch (4 rows of
//! counters up to 15, conservative update, halved every `sample` events) hashes an item as
//! Python hashes an int key: BLAKE2b-128 of its decimal text. `tests/capacity` replays the
//! same sequences through both and compares every hit.
//!
//! Layout: the streams are first rewritten once ([`Prepared`]): each request's item becomes a
//! dense id within its stream (0, 1, ... in order of first request), and each (stream, item)
//! gets its sketch slots, hashed once. A replay then needs no hashing and no hash map: an
//! entry *is* its dense id (the three recency lists are links in arrays indexed by it), and a
//! stream's arrays are small enough to stay in the core's cache. Streams, and budgets, are
//! independent replays, spread over all cores by a shared queue.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use blake2::digest::consts::U16;
use blake2::{Blake2b, Digest};

use crate::par;

const NIL: u32 = u32::MAX;
const MAX_COUNT: u8 = 15;
/// The widest sketch a replay accepts (counters per row).
pub const MAX_WIDTH: usize = 1 << 26;

/// Why a replay cannot run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReplayError {
    #[error("{0} items but {1} sizes")]
    Sizes(usize, usize),
    #[error("{0} items but {1} measured flags")]
    Measured(usize, usize),
    #[error("bounds must be non-decreasing positions within the items")]
    Bounds,
    #[error("a stream of {0} requests is too long to replay (at most {max})", max = NIL - 1)]
    TooLong(usize),
    #[error("window and protected are fractions in [0, 1]")]
    Fractions,
    #[error("sketch width {0} is over {MAX_WIDTH}")]
    Width(usize),
}

/// The policy's parameters (as `TinyLfu(budget, window, protected)` with a sketch of `width`
/// counters per row and the default sample, `10 * width`).
#[derive(Clone, Copy, Debug)]
pub struct Params {
    pub window: f64,
    pub protected: f64,
    pub width: usize,
}

impl Params {
    fn check(&self) -> Result<(), ReplayError> {
        if !(0.0..=1.0).contains(&self.window) || !(0.0..=1.0).contains(&self.protected) {
            return Err(ReplayError::Fractions);
        }
        if self.width > MAX_WIDTH {
            return Err(ReplayError::Width(self.width));
        }
        Ok(())
    }

    /// Counters per row, rounded as Python rounds them (a power of two, at least 16).
    fn rounded_width(&self) -> usize {
        let w = self.width.max(16);
        let bits = usize::BITS - (w - 1).leading_zeros();
        1usize << bits.max(4)
    }
}

/// An item's four counter positions: BLAKE2b-128 of its decimal text, four little-endian u32
/// words, each masked to the width.
pub fn slots_of(key: u64, mask: u32) -> [u32; 4] {
    let mut buf = [0u8; 20];
    let mut at = buf.len();
    let mut k = key;
    loop {
        at -= 1;
        buf[at] = b'0' + (k % 10) as u8;
        k /= 10;
        if k == 0 {
            break;
        }
    }
    let digest = Blake2b::<U16>::digest(&buf[at..]);
    let mut out = [0u32; 4];
    for (i, slot) in out.iter_mut().enumerate() {
        let b = [
            digest[4 * i],
            digest[4 * i + 1],
            digest[4 * i + 2],
            digest[4 * i + 3],
        ];
        *slot = u32::from_le_bytes(b) & mask;
    }
    out
}

/// The count-min sketch (see the module doc), fed with precomputed slots.
pub struct Sketch {
    rows: [Vec<u8>; 4],
    sample: u64,
    events: u64,
}

impl Sketch {
    /// `width` already rounded (a power of two); the sample is `10 * width`.
    fn new(width: usize) -> Sketch {
        Sketch {
            rows: [
                vec![0; width],
                vec![0; width],
                vec![0; width],
                vec![0; width],
            ],
            sample: 10 * width as u64,
            events: 0,
        }
    }

    fn clear(&mut self) {
        for row in &mut self.rows {
            row.fill(0);
        }
        self.events = 0;
    }

    #[inline]
    fn estimate(&self, s: &[u32; 4]) -> u8 {
        let mut least = MAX_COUNT;
        for (row, &slot) in self.rows.iter().zip(s) {
            least = least.min(row.get(slot as usize).copied().unwrap_or(0));
        }
        least
    }

    #[inline]
    fn add(&mut self, s: &[u32; 4]) {
        let least = self.estimate(s);
        if least < MAX_COUNT {
            for (row, &slot) in self.rows.iter_mut().zip(s) {
                if let Some(v) = row.get_mut(slot as usize) {
                    if *v == least {
                        *v += 1;
                    }
                }
            }
        }
        self.events += 1;
        if self.events >= self.sample {
            self.events /= 2;
            for row in &mut self.rows {
                for v in row.iter_mut() {
                    *v >>= 1;
                }
            }
        }
    }
}

const WINDOW: usize = 0;
const PROBATION: usize = 1;
const PROTECTED: usize = 2;
const ABSENT: u8 = 3;

/// The three insertion-ordered lists of the Python policy (its `OrderedDict`s), as links in
/// arrays indexed by the items' dense ids.
#[derive(Default)]
struct Lists {
    prev: Vec<u32>,
    next: Vec<u32>,
    region: Vec<u8>,
    size: Vec<u64>,
    head: [u32; 3],
    tail: [u32; 3],
    bytes: [u64; 3],
}

impl Lists {
    fn reset(&mut self, items: usize) {
        for v in [&mut self.prev, &mut self.next] {
            v.clear();
            v.resize(items, NIL);
        }
        self.region.clear();
        self.region.resize(items, ABSENT);
        self.size.clear();
        self.size.resize(items, 0);
        self.head = [NIL; 3];
        self.tail = [NIL; 3];
        self.bytes = [0; 3];
    }

    #[inline]
    fn push_back(&mut self, i: u32, r: usize) {
        let iu = i as usize;
        self.region[iu] = r as u8;
        self.prev[iu] = self.tail[r];
        self.next[iu] = NIL;
        match self.tail[r] {
            NIL => self.head[r] = i,
            t => self.next[t as usize] = i,
        }
        self.tail[r] = i;
        self.bytes[r] += self.size[iu];
    }

    #[inline]
    fn unlink(&mut self, i: u32) {
        let iu = i as usize;
        let r = usize::from(self.region[iu]);
        let (prev, next) = (self.prev[iu], self.next[iu]);
        match prev {
            NIL => self.head[r] = next,
            p => self.next[p as usize] = next,
        }
        match next {
            NIL => self.tail[r] = prev,
            n => self.prev[n as usize] = prev,
        }
        self.bytes[r] -= self.size[iu];
        self.region[iu] = ABSENT;
    }

    #[inline]
    fn move_to(&mut self, i: u32, r: usize) {
        self.unlink(i);
        self.push_back(i, r);
    }
}

/// One worker's memory tier under W-TinyLFU, over items given as dense ids with their slots.
struct TinyLfu<'a> {
    budget: u64,
    window_bytes: u64,
    protected_bytes: u64,
    used: u64,
    sketch: &'a mut Sketch,
    lists: &'a mut Lists,
    slots: &'a [[u32; 4]],
}

impl<'a> TinyLfu<'a> {
    /// As `TinyLfu(budget, window, protected)` in Python, for items `0..slots.len()`; the
    /// sketch and lists are the caller's scratch, cleared here.
    fn new(
        budget: u64,
        params: &Params,
        sketch: &'a mut Sketch,
        lists: &'a mut Lists,
        slots: &'a [[u32; 4]],
    ) -> TinyLfu<'a> {
        let window_bytes = ((budget as f64 * params.window) as u64).max(1);
        let protected_bytes =
            ((budget.saturating_sub(window_bytes)) as f64 * params.protected) as u64;
        sketch.clear();
        lists.reset(slots.len());
        TinyLfu {
            budget,
            window_bytes,
            protected_bytes,
            used: 0,
            sketch,
            lists,
            slots,
        }
    }

    #[inline]
    fn slots(&self, i: u32) -> &[u32; 4] {
        // Every dense id of a stream has its slots (`Prepared`); the fallback is never used.
        self.slots.get(i as usize).unwrap_or(&[0; 4])
    }

    fn hit(&mut self, i: u32) {
        let s = *self.slots(i);
        self.sketch.add(&s);
        let region = usize::from(self.lists.region[i as usize]);
        if region != PROBATION {
            self.lists.move_to(i, region);
            return;
        }
        self.lists.move_to(i, PROTECTED);
        while self.lists.bytes[PROTECTED] > self.protected_bytes {
            let oldest = self.lists.head[PROTECTED];
            if oldest == i || oldest == NIL {
                break;
            }
            self.lists.move_to(oldest, PROBATION);
        }
    }

    fn victim(&mut self) -> Option<u32> {
        let main_budget = self.budget.saturating_sub(self.window_bytes);
        while self.lists.bytes[WINDOW] > self.window_bytes {
            let candidate = self.lists.head[WINDOW];
            if candidate == NIL {
                break;
            }
            let main = self.lists.bytes[PROBATION] + self.lists.bytes[PROTECTED];
            if main + self.lists.size[candidate as usize] <= main_budget {
                self.lists.move_to(candidate, PROBATION);
                continue;
            }
            let rival = match self.lists.head[PROBATION] {
                NIL => self.lists.head[PROTECTED],
                r => r,
            };
            if rival == NIL {
                return Some(candidate);
            }
            let (c, r) = (*self.slots(candidate), *self.slots(rival));
            if self.sketch.estimate(&c) > self.sketch.estimate(&r) {
                self.lists.move_to(candidate, PROBATION);
                return Some(rival);
            }
            return Some(candidate);
        }
        [PROBATION, PROTECTED, WINDOW]
            .into_iter()
            .map(|r| self.lists.head[r])
            .find(|&h| h != NIL)
    }

    /// One request for item `i` of `size` bytes: whether it hit.
    #[inline]
    fn access(&mut self, i: u32, size: u64) -> bool {
        if self.lists.region[i as usize] != ABSENT {
            self.hit(i);
            return true;
        }
        while self.used + size > self.budget {
            let Some(v) = self.victim() else { break };
            self.used -= self.lists.size[v as usize];
            self.lists.unlink(v);
        }
        self.lists.size[i as usize] = size;
        self.lists.push_back(i, WINDOW);
        self.used += size;
        let s = *self.slots(i);
        self.sketch.add(&s);
        false
    }
}

/// A multiply-xorshift hasher for the dense-id maps (integer keys, no adversary).
#[derive(Default)]
pub(crate) struct MixHasher(u64);

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        let x = self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x ^ (x >> 29)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).rotate_left(5);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub(crate) type DenseMap = HashMap<u64, u32, BuildHasherDefault<MixHasher>>;

/// Streams rewritten for replay (see the module doc).
pub struct Prepared<'a> {
    sizes: &'a [u64],
    streams: Vec<(usize, usize)>,
    /// Per request: its item's dense id within its stream.
    local: Vec<u32>,
    /// Per stream: its items' slots, by dense id.
    slots: Vec<Vec<[u32; 4]>>,
    /// Per stream: the bytes of its items (each at its first request): under a budget of at
    /// least this, nothing is ever evicted and every repeated request hits.
    footprint: Vec<u64>,
    params: Params,
}

/// Stream `s` of `bounds` is requests `bounds[s]..bounds[s + 1]`.
pub(crate) fn streams_of(bounds: &[usize], n: usize) -> Result<Vec<(usize, usize)>, ReplayError> {
    let mut last = 0;
    for &b in bounds {
        if b < last || b > n {
            return Err(ReplayError::Bounds);
        }
        last = b;
    }
    let streams: Vec<(usize, usize)> = bounds.windows(2).map(|w| (w[0], w[1])).collect();
    if let Some(&(s, e)) = streams.iter().find(|(s, e)| e - s >= NIL as usize) {
        return Err(ReplayError::TooLong(e - s));
    }
    Ok(streams)
}

impl<'a> Prepared<'a> {
    /// Rewrite the streams `bounds` of `items` (request `i` asks for `items[i]`, of
    /// `sizes[i]` bytes; an item keeps its size within a stream). Requests outside every
    /// stream are never replayed. O(R) expected time, one hash per distinct (stream, item).
    pub fn new(
        items: &[u64],
        sizes: &'a [u64],
        bounds: &[usize],
        params: Params,
    ) -> Result<Prepared<'a>, ReplayError> {
        if items.len() != sizes.len() {
            return Err(ReplayError::Sizes(items.len(), sizes.len()));
        }
        params.check()?;
        let streams = streams_of(bounds, items.len())?;
        let mask = (params.rounded_width() - 1) as u32;
        let mut local = vec![0u32; items.len()];
        let mut tasks = Vec::with_capacity(streams.len());
        let mut rest: &mut [u32] = &mut local;
        let mut at = 0;
        for (s, &(start, end)) in streams.iter().enumerate() {
            // Streams are contiguous and in order (bounds are non-decreasing).
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(start - at);
            let (mine, tail) = tail.split_at_mut(end - start);
            rest = tail;
            at = end;
            tasks.push((s, start, mine));
        }
        let done = par::queue(
            tasks,
            DenseMap::default,
            |map, (s, start, out): (usize, usize, &mut [u32])| {
                map.clear();
                let mut slots = Vec::new();
                let mut footprint = 0u64;
                for ((o, &item), &size) in out.iter_mut().zip(&items[start..]).zip(&sizes[start..])
                {
                    let next = slots.len() as u32; // < NIL: streams are shorter (checked)
                    let id = *map.entry(item).or_insert(next);
                    if id == next {
                        slots.push(slots_of(item, mask));
                        footprint = footprint.saturating_add(size);
                    }
                    *o = id;
                }
                (s, slots, footprint)
            },
        );
        let mut slots = vec![Vec::new(); streams.len()];
        let mut footprint = vec![0; streams.len()];
        for (s, v, f) in done {
            slots[s] = v;
            footprint[s] = f;
        }
        Ok(Prepared {
            sizes,
            streams,
            local,
            slots,
            footprint,
            params,
        })
    }

    fn scratch(&self) -> (Sketch, Lists) {
        (Sketch::new(self.params.rounded_width()), Lists::default())
    }

    /// Replay stream `s` through a cache of `budget` bytes, telling `seen(i, hit)` for every
    /// request `i` (its position in the whole array).
    fn replay_stream(
        &self,
        scratch: &mut (Sketch, Lists),
        s: usize,
        budget: u64,
        mut seen: impl FnMut(usize, bool),
    ) {
        let (start, end) = self.streams[s];
        let slots = self.slots.get(s).map_or(&[][..], |v| &v[..]);
        let (sketch, lists) = scratch;
        let mut cache = TinyLfu::new(budget, &self.params, sketch, lists, slots);
        for (i, (&id, &size)) in self.local[start..end]
            .iter()
            .zip(&self.sizes[start..end])
            .enumerate()
        {
            seen(start + i, cache.access(id, size));
        }
    }

    /// Hits of every request under a cache of `budget` bytes per stream (false outside every
    /// stream).
    pub fn hits(&self, budget: u64) -> Vec<bool> {
        let mut hits = vec![false; self.local.len()];
        let mut tasks = Vec::with_capacity(self.streams.len());
        let mut rest: &mut [bool] = &mut hits;
        let mut at = 0;
        for (s, &(start, end)) in self.streams.iter().enumerate() {
            let (_, tail) = std::mem::take(&mut rest).split_at_mut(start - at);
            let (mine, tail) = tail.split_at_mut(end - start);
            rest = tail;
            at = end;
            tasks.push((s, start, mine));
        }
        par::queue(
            tasks,
            || self.scratch(),
            |scratch, (s, start, out): (usize, usize, &mut [bool])| {
                self.replay_stream(scratch, s, budget, |i, hit| out[i - start] = hit);
            },
        );
        hits
    }

    /// Per budget and stream, the hits among the `measured` requests: `out[b][s]`, every
    /// (budget, stream) replay a task of its own; a budget that holds the whole stream needs
    /// no replay (its hits are the repeats).
    pub fn measured_hits(
        &self,
        measured: &[bool],
        budgets: &[u64],
    ) -> Result<Vec<Vec<u64>>, ReplayError> {
        let repeats = self.measured_repeats(measured)?;
        let n = self.streams.len();
        // The longest streams first, so no long one is left for last.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&s| std::cmp::Reverse(self.streams[s].1 - self.streams[s].0));
        let mut out = vec![vec![0u64; n]; budgets.len()];
        let mut tasks = Vec::with_capacity(n * budgets.len());
        for &s in &order {
            for (b, &budget) in budgets.iter().enumerate() {
                if budget >= self.footprint[s] {
                    out[b][s] = repeats[s];
                } else {
                    tasks.push((b, s));
                }
            }
        }
        let done = par::queue(
            tasks,
            || self.scratch(),
            |scratch, (b, s)| {
                let mut count = 0u64;
                self.replay_stream(scratch, s, budgets[b], |i, hit| {
                    count += u64::from(hit && measured[i]);
                });
                (b, s, count)
            },
        );
        for (b, s, count) in done {
            out[b][s] = count;
        }
        Ok(out)
    }

    /// Per stream, the `measured` requests for an item its stream asked for before: the hits
    /// of an unbounded cache.
    pub fn measured_repeats(&self, measured: &[bool]) -> Result<Vec<u64>, ReplayError> {
        if measured.len() != self.local.len() {
            return Err(ReplayError::Measured(self.local.len(), measured.len()));
        }
        Ok(self
            .streams
            .iter()
            .map(|&(start, end)| {
                // Dense ids are given in order of first request: a first request carries the
                // next unused id.
                let mut fresh = 0u32;
                let mut count = 0u64;
                for (&id, &m) in self.local[start..end].iter().zip(&measured[start..end]) {
                    if id == fresh {
                        fresh += 1;
                    } else if m {
                        count += 1;
                    }
                }
                count
            })
            .collect())
    }
}

/// Replay every stream (requests `items[s..e]` for each boundary pair of `bounds`) through a
/// cache of `budget` bytes each; `sizes[i]` is request i's item size. Hits per request.
pub fn replay(
    items: &[u64],
    sizes: &[u64],
    bounds: &[usize],
    budget: u64,
    params: Params,
) -> Result<Vec<bool>, ReplayError> {
    Ok(Prepared::new(items, sizes, bounds, params)?.hits(budget))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARAMS: Params = Params {
        window: 0.01,
        protected: 0.8,
        width: 4096,
    };

    #[test]
    fn the_sketch_rounds_its_width_as_python_does() {
        let w = |width| Params { width, ..PARAMS }.rounded_width();
        assert_eq!(w(4096), 4096);
        assert_eq!(w(100), 128);
        assert_eq!(w(1), 16);
    }

    #[test]
    fn slots_hash_the_decimal_text() {
        let d = Blake2b::<U16>::digest(b"1234567");
        let want = u32::from_le_bytes([d[0], d[1], d[2], d[3]]) & 4095;
        assert_eq!(slots_of(1_234_567, 4095)[0], want);
        let d = Blake2b::<U16>::digest(b"0");
        assert_eq!(
            slots_of(0, u32::MAX)[3],
            u32::from_le_bytes([d[12], d[13], d[14], d[15]])
        );
    }

    #[test]
    fn budget_holds_and_repeats_hit() {
        let items: Vec<u64> = [1, 1].into_iter().chain(2..100).collect();
        let sizes = vec![10u64; items.len()];
        let hits = replay(&items, &sizes, &[0, items.len()], 100, PARAMS).unwrap();
        assert_eq!(&hits[..2], &[false, true]);
        let p = Prepared::new(&items, &sizes, &[0, items.len()], PARAMS).unwrap();
        let mut scratch = p.scratch();
        let (sketch, lists) = &mut scratch;
        let mut c = TinyLfu::new(100, &PARAMS, sketch, lists, &p.slots[0]);
        for (&id, &size) in p.local.iter().zip(&sizes) {
            c.access(id, size);
            assert!(c.used <= 100);
        }
    }

    #[test]
    fn replay_splits_streams_over_threads_without_mixing_them() {
        let items: Vec<u64> = (0..1000).map(|i| i % 7).collect();
        let sizes = vec![1u64; 1000];
        let bounds = [0, 250, 500, 750, 1000];
        let hits = replay(&items, &sizes, &bounds, 100, PARAMS).unwrap();
        // Each stream misses its 7 items once, then always hits.
        for b in bounds.windows(2) {
            assert_eq!(hits[b[0]..b[1]].iter().filter(|h| !**h).count(), 7);
        }
    }

    #[test]
    fn counts_are_the_per_request_hits_summed() {
        let mut x = 12345u64;
        let items: Vec<u64> = (0..20_000)
            .map(|_| {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                (x >> 33) % 500 + 1_000_000_007
            })
            .collect();
        let sizes: Vec<u64> = items.iter().map(|i| 1 + i % 13).collect();
        let bounds = [0, 3000, 3000, 11_000, 20_000];
        let measured: Vec<bool> = (0..items.len()).map(|i| i % 3 != 0).collect();
        // The last budget holds every stream whole: counted without a replay.
        let budgets = [50u64, 400, 3000, 10_000];
        let p = Prepared::new(&items, &sizes, &bounds, PARAMS).unwrap();
        assert!(p.footprint.iter().all(|&f| f <= 10_000));
        let counts = p.measured_hits(&measured, &budgets).unwrap();
        for (b, &budget) in budgets.iter().enumerate() {
            let hits = p.hits(budget);
            for (s, w) in bounds.windows(2).enumerate() {
                let want = (w[0]..w[1]).filter(|&i| hits[i] && measured[i]).count();
                assert_eq!(counts[b][s], want as u64);
            }
        }
        let repeats = p.measured_repeats(&measured).unwrap();
        for (s, w) in bounds.windows(2).enumerate() {
            let mut seen = std::collections::HashSet::new();
            let want = (w[0]..w[1])
                .filter(|&i| !seen.insert(items[i]) && measured[i])
                .count();
            assert_eq!(repeats[s], want as u64);
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let items = [1u64, 2, 3];
        let sizes = [1u64, 1, 1];
        assert_eq!(
            replay(&items, &sizes[..2], &[0, 3], 10, PARAMS),
            Err(ReplayError::Sizes(3, 2))
        );
        assert_eq!(
            replay(&items, &sizes, &[0, 4], 10, PARAMS),
            Err(ReplayError::Bounds)
        );
        assert_eq!(
            replay(&items, &sizes, &[2, 1], 10, PARAMS),
            Err(ReplayError::Bounds)
        );
        let bad = Params {
            window: 1.5,
            ..PARAMS
        };
        assert_eq!(
            replay(&items, &sizes, &[0, 3], 10, bad),
            Err(ReplayError::Fractions)
        );
        let p = Prepared::new(&items, &sizes, &[0, 3], PARAMS).unwrap();
        assert_eq!(
            p.measured_hits(&[true], &[10]),
            Err(ReplayError::Measured(3, 1))
        );
    }
}

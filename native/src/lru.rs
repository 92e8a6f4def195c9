//! Byte stack distances of LRU for the capacity simulator (`capacity/cache.py`'s
//! `stack_distances`, the same numbers), natively: one pass per stream.
//!
//! A request for `x` hits an LRU cache of `B` bytes exactly when its byte stack distance
//! `d = size(x) + bytes of the distinct items requested since the previous request for x` is at
//! most `B` (see `capacity/cache.py`). Walking a stream in time order, each item's bytes sit at
//! the position of its latest request in a Fenwick tree; the distinct items requested since
//! position `p` are exactly those whose latest request lies after `p`, so `d` is the stream's
//! live bytes minus the prefix sum up to `p`, plus `size(x)`. O(L log L) for a stream of `L`
//! requests, memory O(L); streams are tasks on every core.

use crate::cachesim::{streams_of, DenseMap, ReplayError};
use crate::par;

/// Stack distance of a first request (a cold miss).
pub const COLD: i64 = -1;

/// Sums over positions `0..n` with point updates (1-based inside).
struct Fenwick(Vec<i64>);

impl Fenwick {
    fn reset(&mut self, n: usize) {
        self.0.clear();
        self.0.resize(n + 1, 0);
    }

    fn add(&mut self, at: usize, v: i64) {
        let mut i = at + 1;
        while i < self.0.len() {
            self.0[i] += v;
            i += i & i.wrapping_neg();
        }
    }

    /// Sum over positions `0..=at`.
    fn prefix(&self, at: usize) -> i64 {
        let mut i = at + 1;
        let mut s = 0;
        while i > 0 {
            s += self.0[i];
            i -= i & i.wrapping_neg();
        }
        s
    }
}

/// Byte stack distance of every request (`COLD` for a stream's first request for an item, and
/// for requests outside every stream). Stream `s` is requests `bounds[s]..bounds[s + 1]`;
/// `sizes[i]` is request `i`'s item size, one size per item within a stream (as
/// `stack_distances` requires; sums saturate rather than overflow).
pub fn stack_distances(
    items: &[u64],
    sizes: &[u64],
    bounds: &[usize],
) -> Result<Vec<i64>, ReplayError> {
    if items.len() != sizes.len() {
        return Err(ReplayError::Sizes(items.len(), sizes.len()));
    }
    let streams = streams_of(bounds, items.len())?;
    let mut out = vec![COLD; items.len()];
    let mut tasks = Vec::with_capacity(streams.len());
    let mut rest: &mut [i64] = &mut out;
    let mut at = 0;
    for &(start, end) in &streams {
        let (_, tail) = std::mem::take(&mut rest).split_at_mut(start - at);
        let (mine, tail) = tail.split_at_mut(end - start);
        rest = tail;
        at = end;
        tasks.push((start, mine));
    }
    par::queue(
        tasks,
        || (DenseMap::default(), Fenwick(Vec::new())),
        |(last, tree), (start, out): (usize, &mut [i64])| {
            last.clear();
            tree.reset(out.len());
            let mut live = 0i64;
            for (t, (o, (&item, &size))) in out
                .iter_mut()
                .zip(items[start..].iter().zip(&sizes[start..]))
                .enumerate()
            {
                let size = i64::try_from(size).unwrap_or(i64::MAX);
                // Streams are shorter than u32::MAX requests (checked by `streams_of`).
                let now = t as u32;
                if let Some(p) = last.insert(item, now) {
                    let p = p as usize;
                    let since = live.saturating_sub(tree.prefix(p));
                    *o = size.saturating_add(since);
                    tree.add(p, -size);
                    live -= size;
                }
                tree.add(t, size);
                live = live.saturating_add(size);
            }
        },
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Straight from the definition: the size plus the distinct items since the last request.
    fn brute(items: &[u64], sizes: &[u64]) -> Vec<i64> {
        (0..items.len())
            .map(|t| {
                let Some(p) = (0..t).rev().find(|&j| items[j] == items[t]) else {
                    return COLD;
                };
                let mut seen: Vec<u64> = Vec::new();
                let mut d = sizes[t] as i64;
                for j in p + 1..t {
                    if !seen.contains(&items[j]) {
                        seen.push(items[j]);
                        d += sizes[j] as i64;
                    }
                }
                d
            })
            .collect()
    }

    #[test]
    fn a_hand_worked_stream() {
        // a b b a c a with sizes a=1, b=2, c=4 (tests/capacity/test_cache.py).
        let items = [0u64, 1, 1, 0, 2, 0];
        let sizes = [1u64, 2, 2, 1, 4, 1];
        let d = stack_distances(&items, &sizes, &[0, 6]).unwrap();
        assert_eq!(d, vec![COLD, COLD, 2, 3, COLD, 5]);
    }

    #[test]
    fn equals_the_definition_per_stream() {
        let mut x = 99u64;
        let items: Vec<u64> = (0..3000)
            .map(|_| {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                (x >> 33) % 40
            })
            .collect();
        let sizes: Vec<u64> = items.iter().map(|i| i % 7).collect();
        let bounds = [100, 100, 1200, 2999];
        let d = stack_distances(&items, &sizes, &bounds).unwrap();
        for w in bounds.windows(2) {
            assert_eq!(
                d[w[0]..w[1]],
                brute(&items[w[0]..w[1]], &sizes[w[0]..w[1]])[..]
            );
        }
        assert!(d[..100].iter().chain(&d[2999..]).all(|&v| v == COLD));
        assert_eq!(
            stack_distances(&items, &sizes[1..], &bounds),
            Err(ReplayError::Sizes(3000, 2999))
        );
    }
}

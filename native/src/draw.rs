//! Inverse-CDF draws for the capacity simulator: `searchsorted_right(cdf, u)` is NumPy's
//! `np.searchsorted(cdf, u, side="right")` (how many entries of the sorted `cdf` are at most
//! each value), exactly, for tens of millions of values at once.
//!
//! A plain binary search over a large `cdf` misses the cache at most of its steps. Values in
//! `[0, 1)` (uniform draws) are first placed by a bucket table: with `B` a power of two,
//! `b = floor(u * B)` is exact in floating point and `b / B <= u < (b + 1) / B`, so the answer
//! lies between the counts of entries at most `b / B` and at most `(b + 1) / B`, which the
//! table holds; the search runs over that short range only. Other values search the whole
//! array. Values are split over the cores.

use crate::par;

/// Why the draws cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DrawError {
    #[error("the cdf must be sorted (non-decreasing) and free of NaN")]
    Unsorted,
    #[error("values must not be NaN")]
    NaN,
}

/// Values per thread, at least.
const MIN_BLOCK: usize = 1 << 16;

/// For every value `v`, the number of entries of `sorted` that are `<= v`.
pub fn searchsorted_right(sorted: &[f64], values: &[f64]) -> Result<Vec<usize>, DrawError> {
    if sorted.iter().any(|x| x.is_nan()) || sorted.windows(2).any(|w| w[1] < w[0]) {
        return Err(DrawError::Unsorted);
    }
    if values.iter().any(|v| v.is_nan()) {
        return Err(DrawError::NaN);
    }
    // About one bucket per entry, within 2^10..2^22 buckets (a table of at most 16 MiB).
    let buckets = sorted.len().next_power_of_two().clamp(1 << 10, 1 << 22);
    let scale = buckets as f64;
    let mut table = Vec::with_capacity(buckets + 1);
    let mut j = 0;
    for b in 0..=buckets {
        let edge = b as f64 / scale;
        while j < sorted.len() && sorted[j] <= edge {
            j += 1;
        }
        table.push(j);
    }
    let mut out = vec![0; values.len()];
    par::blocks(values.len(), &mut out, 1, MIN_BLOCK, |range, part| {
        for (o, &v) in part.iter_mut().zip(&values[range]) {
            *o = if (0.0..1.0).contains(&v) {
                // Exact: scaling by a power of two, then truncating a non-negative value.
                let b = (v * scale) as usize;
                let (lo, hi) = (table[b], table[b + 1]);
                lo + sorted[lo..hi].partition_point(|&c| c <= v)
            } else {
                sorted.partition_point(|&c| c <= v)
            };
        }
    });
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(sorted: &[f64], v: f64) -> usize {
        sorted.partition_point(|&c| c <= v)
    }

    #[test]
    fn equals_a_plain_search_on_a_zipf_cdf_and_on_edges() {
        let n = 100_000;
        let w: Vec<f64> = (1..=n).map(|r| 1.0 / r as f64).collect();
        let total: f64 = w.iter().sum();
        let mut acc = 0.0;
        let mut cdf: Vec<f64> = w
            .iter()
            .map(|x| {
                acc += x / total;
                acc
            })
            .collect();
        *cdf.last_mut().unwrap() = 1.0;
        let mut x = 7u64;
        let mut values: Vec<f64> = (0..300_000)
            .map(|_| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                (x >> 11) as f64 / (1u64 << 53) as f64
            })
            .collect();
        // Entries themselves, bucket edges, and values outside [0, 1).
        values.extend(cdf.iter().step_by(97).copied());
        values.extend((0..=1024).map(|b| b as f64 / 1024.0));
        values.extend([-1.0, -0.0, 1.0, 2.5, f64::INFINITY, f64::NEG_INFINITY]);
        let got = searchsorted_right(&cdf, &values).unwrap();
        for (v, g) in values.iter().zip(&got) {
            assert_eq!(*g, plain(&cdf, *v), "{v}");
        }
    }

    #[test]
    fn ties_empty_and_bad_inputs() {
        let sorted = [0.0, 0.25, 0.25, 0.25, 0.5, 1.0];
        assert_eq!(
            searchsorted_right(&sorted, &[0.0, 0.25, 0.3, 0.999, 1.0]).unwrap(),
            vec![1, 4, 4, 5, 6]
        );
        assert_eq!(searchsorted_right(&[], &[0.5]).unwrap(), vec![0]);
        assert_eq!(
            searchsorted_right(&[0.5, 0.1], &[0.2]),
            Err(DrawError::Unsorted)
        );
        assert_eq!(
            searchsorted_right(&[0.1, f64::NAN], &[0.2]),
            Err(DrawError::Unsorted)
        );
        assert_eq!(searchsorted_right(&[0.1], &[f64::NAN]), Err(DrawError::NaN));
    }
}

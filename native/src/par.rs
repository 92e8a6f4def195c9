//! Data parallelism for the simulator's bulk calls, on scoped std threads (no pool, no new
//! crate): every core, and results identical to one thread's.

use std::ops::Range;
use std::sync::{Mutex, PoisonError};

/// Threads to use: one per core the process may run on.
pub fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Call `f(items, part)` for contiguous blocks of items `0..n`, one block per thread (none
/// under `min_block` items), `part` being the block's slice of `out` at `width` entries per
/// item (shorter when `out` is). Blocks are independent, so the result is one call's.
pub fn blocks<O: Send>(
    n: usize,
    out: &mut [O],
    width: usize,
    min_block: usize,
    f: impl Fn(Range<usize>, &mut [O]) + Sync,
) {
    let parts = threads().min(n / min_block.max(1)).max(1);
    if parts == 1 {
        f(0..n, out);
        return;
    }
    let size = n.div_ceil(parts);
    std::thread::scope(|scope| {
        let mut rest: &mut [O] = out;
        let f = &f;
        for start in (0..n).step_by(size) {
            let end = (start + size).min(n);
            let take = ((end - start) * width).min(rest.len());
            let (mine, tail) = std::mem::take(&mut rest).split_at_mut(take);
            rest = tail;
            scope.spawn(move || f(start..end, mine));
        }
    });
}

/// Run `work` over `tasks` on every core from a shared queue (a slow task delays no other
/// thread), each thread with its own `scratch()`; results in no particular order.
pub fn queue<T: Send, R: Send, S>(
    tasks: Vec<T>,
    scratch: impl Fn() -> S + Sync,
    work: impl Fn(&mut S, T) -> R + Sync,
) -> Vec<R> {
    let threads = threads().min(tasks.len()).max(1);
    let queue = Mutex::new(tasks.into_iter());
    let mut out = Vec::new();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut s = scratch();
                    let mut mine = Vec::new();
                    loop {
                        let next = queue.lock().unwrap_or_else(PoisonError::into_inner).next();
                        let Some(task) = next else { break };
                        mine.push(work(&mut s, task));
                    }
                    mine
                })
            })
            .collect();
        for h in handles {
            // A thread that panicked makes `scope` panic on return; its results are lost.
            if let Ok(mine) = h.join() {
                out.extend(mine);
            }
        }
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_every_item_once() {
        for n in [0, 1, 7, 1000, 1001] {
            let mut out = vec![0usize; 2 * n];
            blocks(n, &mut out, 2, 10, |items, part| {
                for (i, pair) in items.zip(part.chunks_mut(2)) {
                    pair[0] += i;
                    pair[1] += 1;
                }
            });
            let want: Vec<usize> = (0..n).flat_map(|i| [i, 1]).collect();
            assert_eq!(out, want);
        }
    }

    #[test]
    fn queue_runs_every_task_once() {
        let mut got = queue((0..100).collect(), || 0, |_, t: u32| t * 2);
        got.sort_unstable();
        assert_eq!(got, (0..100).map(|t| t * 2).collect::<Vec<_>>());
    }
}

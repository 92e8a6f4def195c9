//! Exact replay of the worker's W-TinyLFU cache (`worker/policy.py`'s `TinyLfu` inside
//! `worker/cache.py`'s `TieredCache`, one memory tier) for the capacity simulator, at the
//! speed the simulator needs (tens of millions of requests).
//!
//! Same algorithm, step for step, so the same request sequence gives the same hits:
//! a hit feeds the sketch and moves the entry (window and protected: to their most recent end;
//! probation: to protected, whose overflow moves its oldest back to probation); a miss first
//! makes room (victims from the policy until the bytes fit, as `TieredCache._make_room`), then
//! inserts the item into the window and feeds the sketch. The count-min sketch (4 rows of
//! counters up to 15, conservative update, halved every `sample` events) hashes an item as
//! Python hashes an int key: BLAKE2b-128 of its decimal text. `tests/capacity` replays the
//! same sequences through both and compares every hit.

use std::collections::HashMap;

use blake2::digest::consts::U16;
use blake2::{Blake2b, Digest};

const NONE: usize = usize::MAX;
const MAX_COUNT: u8 = 15;

/// The sketch (see the module doc).
pub struct Sketch {
    rows: [Vec<u8>; 4],
    mask: u64,
    sample: u64,
    events: u64,
}

impl Sketch {
    /// `width` is rounded as Python rounds it (a power of two, at least 16).
    pub fn new(width: usize, sample: u64) -> Sketch {
        let w = width.max(16);
        let bits = usize::BITS - (w - 1).leading_zeros();
        let width = 1usize << bits.max(4);
        let sample = if sample == 0 {
            10 * width as u64
        } else {
            sample
        };
        Sketch {
            rows: [
                vec![0; width],
                vec![0; width],
                vec![0; width],
                vec![0; width],
            ],
            mask: width as u64 - 1,
            sample,
            events: 0,
        }
    }

    fn slots(&self, key: u64) -> [usize; 4] {
        let digest = Blake2b::<U16>::digest(key.to_string().as_bytes());
        let mut out = [0usize; 4];
        for (i, slot) in out.iter_mut().enumerate() {
            let b = [
                digest[4 * i],
                digest[4 * i + 1],
                digest[4 * i + 2],
                digest[4 * i + 3],
            ];
            *slot = (u64::from(u32::from_le_bytes(b)) & self.mask) as usize;
        }
        out
    }

    pub fn estimate(&self, key: u64) -> u8 {
        let s = self.slots(key);
        (0..4).map(|i| self.rows[i][s[i]]).min().unwrap_or(0)
    }

    pub fn add(&mut self, key: u64) {
        let s = self.slots(key);
        let least = (0..4).map(|i| self.rows[i][s[i]]).min().unwrap_or(0);
        if least < MAX_COUNT {
            for (i, &slot) in s.iter().enumerate() {
                if self.rows[i][slot] == least {
                    self.rows[i][slot] += 1;
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

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Region {
    Window = 0,
    Probation = 1,
    Protected = 2,
}

struct Node {
    key: u64,
    size: u64,
    region: Region,
    prev: usize,
    next: usize,
}

/// Insertion-ordered lists over one slab (the Python policy's three `OrderedDict`s).
#[derive(Default)]
struct Lists {
    nodes: Vec<Node>,
    free: Vec<usize>,
    head: [usize; 3],
    tail: [usize; 3],
    bytes: [u64; 3],
}

impl Lists {
    fn new() -> Lists {
        Lists {
            head: [NONE; 3],
            tail: [NONE; 3],
            ..Default::default()
        }
    }

    fn push_back(&mut self, key: u64, size: u64, region: Region) -> usize {
        let r = region as usize;
        let node = Node {
            key,
            size,
            region,
            prev: self.tail[r],
            next: NONE,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.nodes[i] = node;
                i
            }
            None => {
                self.nodes.push(node);
                self.nodes.len() - 1
            }
        };
        match self.tail[r] {
            NONE => self.head[r] = i,
            t => self.nodes[t].next = i,
        }
        self.tail[r] = i;
        self.bytes[r] += size;
        i
    }

    fn unlink(&mut self, i: usize) -> (u64, u64) {
        let (prev, next, r) = {
            let n = &self.nodes[i];
            (n.prev, n.next, n.region as usize)
        };
        match prev {
            NONE => self.head[r] = next,
            p => self.nodes[p].next = next,
        }
        match next {
            NONE => self.tail[r] = prev,
            n => self.nodes[n].prev = prev,
        }
        self.bytes[r] -= self.nodes[i].size;
        self.free.push(i);
        (self.nodes[i].key, self.nodes[i].size)
    }
}

/// One worker's memory tier under W-TinyLFU.
pub struct TinyLfu {
    budget: u64,
    window_bytes: u64,
    protected_bytes: u64,
    used: u64,
    sketch: Sketch,
    lists: Lists,
    index: HashMap<u64, usize>,
}

impl TinyLfu {
    /// As `TinyLfu(budget, window, protected)` in Python (its sketch: `width`, `sample`).
    pub fn new(budget: u64, window: f64, protected: f64, width: usize, sample: u64) -> TinyLfu {
        let window_bytes = ((budget as f64 * window) as u64).max(1);
        let protected_bytes = ((budget.saturating_sub(window_bytes)) as f64 * protected) as u64;
        TinyLfu {
            budget,
            window_bytes,
            protected_bytes,
            used: 0,
            sketch: Sketch::new(width, sample),
            lists: Lists::new(),
            index: HashMap::new(),
        }
    }

    fn move_to(&mut self, i: usize, region: Region) -> usize {
        let (key, size) = self.lists.unlink(i);
        let j = self.lists.push_back(key, size, region);
        self.index.insert(key, j);
        j
    }

    fn hit(&mut self, i: usize) {
        let key = self.lists.nodes[i].key;
        self.sketch.add(key);
        let region = self.lists.nodes[i].region;
        match region {
            Region::Window | Region::Protected => {
                self.move_to(i, region);
            }
            Region::Probation => {
                let me = self.move_to(i, Region::Protected);
                let p = Region::Protected as usize;
                while self.lists.bytes[p] > self.protected_bytes {
                    let oldest = self.lists.head[p];
                    if oldest == me || oldest == NONE {
                        break;
                    }
                    self.move_to(oldest, Region::Probation);
                }
            }
        }
    }

    fn victim(&mut self) -> Option<usize> {
        let (w, pr, pt) = (
            Region::Window as usize,
            Region::Probation as usize,
            Region::Protected as usize,
        );
        let main_budget = self.budget.saturating_sub(self.window_bytes);
        while self.lists.bytes[w] > self.window_bytes {
            let candidate = self.lists.head[w];
            if candidate == NONE {
                break;
            }
            let main = self.lists.bytes[pr] + self.lists.bytes[pt];
            if main + self.lists.nodes[candidate].size <= main_budget {
                self.move_to(candidate, Region::Probation);
                continue;
            }
            let rival = match self.lists.head[pr] {
                NONE => self.lists.head[pt],
                r => r,
            };
            if rival == NONE {
                return Some(candidate);
            }
            let c_key = self.lists.nodes[candidate].key;
            let r_key = self.lists.nodes[rival].key;
            if self.sketch.estimate(c_key) > self.sketch.estimate(r_key) {
                self.move_to(candidate, Region::Probation);
                return Some(rival);
            }
            return Some(candidate);
        }
        [pr, pt, w]
            .into_iter()
            .map(|r| self.lists.head[r])
            .find(|&h| h != NONE)
    }

    /// One request: whether it hit.
    pub fn access(&mut self, key: u64, size: u64) -> bool {
        if let Some(&i) = self.index.get(&key) {
            self.hit(i);
            return true;
        }
        while self.used + size > self.budget {
            let Some(v) = self.victim() else { break };
            let (k, s) = self.lists.unlink(v);
            self.index.remove(&k);
            self.used -= s;
        }
        let i = self.lists.push_back(key, size, Region::Window);
        self.index.insert(key, i);
        self.used += size;
        self.sketch.add(key);
        false
    }
}

/// Replay every stream (requests `items[s..e]` for each boundary pair of `bounds`) through a
/// cache of `budget` bytes each; `sizes[i]` is request i's item size. Hits per request.
pub fn replay(
    items: &[u64],
    sizes: &[u64],
    bounds: &[usize],
    budget: u64,
    window: f64,
    protected: f64,
    width: usize,
) -> Vec<bool> {
    let mut hits = vec![false; items.len()];
    let streams: Vec<(usize, usize)> = bounds.windows(2).map(|w| (w[0], w[1])).collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = streams.len().div_ceil(threads.max(1)).max(1);
    // Each thread replays whole streams into its own slice of `hits`.
    let mut parts: Vec<(usize, &mut [bool])> = Vec::new();
    let mut rest: &mut [bool] = &mut hits;
    let mut at = 0;
    for group in streams.chunks(chunk) {
        let end = group.last().map_or(at, |g| g.1);
        let (mine, tail) = rest.split_at_mut(end - at);
        parts.push((at, mine));
        rest = tail;
        at = end;
    }
    std::thread::scope(|scope| {
        for ((start, out), group) in parts.into_iter().zip(streams.chunks(chunk)) {
            scope.spawn(move || {
                for &(s, e) in group {
                    let mut cache = TinyLfu::new(budget, window, protected, width, 0);
                    for i in s..e {
                        out[i - start] = cache.access(items[i], sizes[i]);
                    }
                }
            });
        }
    });
    hits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sketch_rounds_its_width_as_python_does() {
        assert_eq!(Sketch::new(4096, 0).mask, 4095);
        assert_eq!(Sketch::new(100, 0).mask, 127);
        assert_eq!(Sketch::new(1, 0).mask, 15);
    }

    #[test]
    fn budget_holds_and_repeats_hit() {
        let mut c = TinyLfu::new(100, 0.01, 0.8, 4096, 0);
        assert!(!c.access(1, 10));
        assert!(c.access(1, 10));
        for k in 2..100 {
            c.access(k, 10);
            assert!(c.used <= 100);
        }
    }

    #[test]
    fn replay_splits_streams_over_threads_without_mixing_them() {
        let items: Vec<u64> = (0..1000).map(|i| i % 7).collect();
        let sizes = vec![1u64; 1000];
        let bounds = [0, 250, 500, 750, 1000];
        let hits = replay(&items, &sizes, &bounds, 100, 0.01, 0.8, 4096);
        // Each stream misses its 7 items once, then always hits.
        for b in bounds.windows(2) {
            assert_eq!(hits[b[0]..b[1]].iter().filter(|h| !**h).count(), 7);
        }
    }
}

//! The shard function (see DESIGN.md, "Placement: shuffle sharding").
//!
//! TEMPORARY STAND-IN (plain rank order, no zones) so the gateway builds; replaced by the
//! real implementation from the `shard` branch.

use blake2::digest::{Update, VariableOutput};

fn h64(data: &str, key: &[u8]) -> u64 {
    let _ = key;
    let mut h = blake2::Blake2bVar::new(8).expect("8 is a valid size");
    h.update(data.as_bytes());
    let mut out = [0u8; 8];
    let _ = h.finalize_variable(&mut out);
    u64::from_le_bytes(out)
}

pub fn primary_index(key: &str, k: usize) -> usize {
    if k == 0 {
        return 0;
    }
    (h64(key, &[]) % k as u64) as usize
}

#[derive(Debug)]
pub struct Pool {
    hashes: Vec<u64>,
    salt: Vec<u8>,
    pub shard_size: usize,
}

impl Pool {
    pub fn new(worker_ids: &[String], _zones: &[String], salt: &[u8], shard_size: usize) -> Pool {
        Pool {
            hashes: worker_ids.iter().map(|w| h64(w, salt)).collect(),
            salt: salt.to_vec(),
            shard_size,
        }
    }

    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// (members in order, k).
    pub fn ranked(
        &self,
        tenant: &str,
        shard_size: usize,
        explicit: &[usize],
    ) -> (Vec<usize>, usize) {
        let t = h64(tenant, &self.salt);
        let mut idx: Vec<usize> = (0..self.hashes.len()).collect();
        idx.sort_by_key(|&i| std::cmp::Reverse(t ^ self.hashes[i]));
        if !explicit.is_empty() {
            let mut out: Vec<usize> = explicit.to_vec();
            out.extend(idx.into_iter().filter(|i| !explicit.contains(i)));
            return (out, explicit.len());
        }
        let k = if shard_size > 0 {
            shard_size
        } else {
            self.shard_size
        };
        (idx, k.min(self.hashes.len()))
    }
}

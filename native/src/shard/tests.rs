//! Unit tests, the committed vectors (`tests/vectors/shard.json`, produced by the Python
//! reference) and properties of the shard function.

use std::collections::HashSet;

use proptest::prelude::*;
use serde_json::Value;

use super::*;
use blake2::digest::Update;

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/vectors/shard.json");
    let text = std::fs::read_to_string(path).expect("tests/vectors/shard.json is committed");
    serde_json::from_str(&text).expect("shard.json is JSON")
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex salt"))
        .collect()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|s| s.as_str().expect("string").to_owned())
        .collect()
}

fn usizes(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("unsigned") as usize)
        .collect()
}

fn u64s(v: &Value) -> Vec<u64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("u64"))
        .collect()
}

fn pools(v: &Value) -> Vec<Pool> {
    v["pools"]
        .as_array()
        .expect("pools")
        .iter()
        .map(|p| {
            let pool = Pool::new(
                &strs(&p["worker_ids"]),
                &strs(&p["zones"]),
                &hex(p["salt"].as_str().expect("salt")),
                p["shard_size"].as_u64().expect("shard size") as usize,
            )
            .expect("valid pool");
            assert_eq!(pool.worker_hashes(), u64s(&p["worker_hashes"]));
            assert_eq!(
                pool.n_zones() as u64,
                p["n_zones"].as_u64().expect("n_zones")
            );
            pool
        })
        .collect()
}

#[test]
fn vectors_h64_and_primary_index() {
    let v = vectors();
    for case in v["h64"].as_array().expect("h64") {
        let salt = hex(case["salt"].as_str().expect("salt"));
        let data = case["data"].as_str().expect("data");
        assert_eq!(
            h64(data.as_bytes(), &salt),
            case["h"].as_u64().expect("h"),
            "{case}"
        );
    }
    for case in v["primary_index"].as_array().expect("primary_index") {
        let key = case["key"].as_str().expect("key");
        let k = case["k"].as_u64().expect("k") as usize;
        let want = case["index"].as_u64().expect("index") as usize;
        assert_eq!(primary_index(key, k), Some(want), "{case}");
    }
    assert_eq!(primary_index("acme/churn:1", 0), None);
}

#[test]
fn vectors_selection_order() {
    let v = vectors();
    let pools = pools(&v);
    let mut scratch = Scratch::default();
    let mut out = Vec::new();
    for case in v["selection_order"].as_array().expect("selection_order") {
        let pool = &pools[case["pool"].as_u64().expect("pool") as usize];
        let tenant = case["tenant"].as_str().expect("tenant");
        let length = case["length"].as_u64().map_or(pool.len(), |l| l as usize);
        let want = usizes(&case["order"]);
        assert_eq!(
            pool.selection_order(pool.tenant_hash(tenant), length),
            want,
            "{case}"
        );
        // The reusable form, with buffers left over from other pools.
        pool.selection_order_into(pool.tenant_hash(tenant), length, &mut scratch, &mut out);
        assert_eq!(out, want, "{case}");
    }
}

#[test]
fn vectors_shard_matrix() {
    let v = vectors();
    let pools = pools(&v);
    for case in v["shard_matrix"].as_array().expect("shard_matrix") {
        let pool = &pools[case["pool"].as_u64().expect("pool") as usize];
        let hashes = tenant_hashes(&strs(&case["tenants"]), &pool_salt(&v, case));
        let k = case["k"].as_u64().expect("k") as usize;
        let rows: Vec<u32> = case["rows"]
            .as_array()
            .expect("rows")
            .iter()
            .flat_map(|r| usizes(r).into_iter().map(|i| i as u32))
            .collect();
        assert_eq!(pool.shard_matrix(&hashes, k), rows, "{case}");
    }
}

fn pool_salt(v: &Value, case: &Value) -> Vec<u8> {
    let i = case["pool"].as_u64().expect("pool") as usize;
    hex(v["pools"][i]["salt"].as_str().expect("salt"))
}

#[test]
fn vectors_ranked() {
    let v = vectors();
    assert_eq!(v["fallback_zoned"].as_u64(), Some(FALLBACK_ZONED as u64));
    let pools = pools(&v);
    let mut scratch = Scratch::default();
    let mut out = Vec::new();
    for case in v["ranked"].as_array().expect("ranked") {
        let pool = &pools[case["pool"].as_u64().expect("pool") as usize];
        let tenant = case["tenant"].as_str().expect("tenant");
        let shard_size = case["shard_size"].as_u64().expect("shard_size") as usize;
        let members = strs(&case["members"]);
        let want = (
            usizes(&case["order"]),
            case["k"].as_u64().expect("k") as usize,
        );
        assert_eq!(pool.ranked(tenant, shard_size, &members), want, "{case}");
        // The per-request form: resolved members, reused buffers.
        let pinned = pool.pinned(&members);
        let ov = match (members.is_empty(), shard_size) {
            (false, _) => Override::Members(&pinned),
            (true, 0) => Override::Default,
            (true, s) => Override::ShardSize(s),
        };
        let k = pool.ranked_into(pool.tenant_hash(tenant), ov, &mut scratch, &mut out);
        assert_eq!((out.clone(), k), want, "{case}");
    }
}

#[test]
fn vectors_ties_rank_the_higher_index_first() {
    let v = vectors();
    for case in v["ties"].as_array().expect("ties") {
        let pool = Pool::from_hashes(u64s(&case["worker_hashes"]), usizes(&case["zone_ids"]), 2);
        assert_eq!(
            pool.n_zones() as u64,
            case["n_zones"].as_u64().expect("n_zones")
        );
        let h_t = case["tenant_hash"].as_u64().expect("tenant_hash");
        let length = case["length"].as_u64().expect("length") as usize;
        let want = usizes(&case["order"]);
        let order = pool.selection_order(h_t, length);
        assert_eq!(order, want, "{case}");
        // Both shard_matrix strategies agree with the scalar walk on ties too.
        for k in [length.min(ARGMAX_MAX_K), length] {
            let row: Vec<usize> = pool
                .shard_matrix(&[h_t], k)
                .into_iter()
                .map(|i| i as usize)
                .collect();
            assert_eq!(row, want[..k.min(pool.len())], "{case}");
        }
    }
}

#[test]
fn salt_is_truncated_to_64_bytes_and_empty_means_unkeyed() {
    let long: Vec<u8> = (0..100).collect();
    assert_eq!(h64(b"acme", &long), h64(b"acme", &long[..64]));
    assert_ne!(h64(b"acme", &long[..63]), h64(b"acme", &long[..64]));
    // blake2's MAC with an empty key differs from unkeyed BLAKE2b; hashlib's does not.
    let mac = <Blake2bMac<U8> as KeyInit>::new_from_slice(&[]).expect("empty key");
    let mut mac = mac;
    Update::update(&mut mac, b"acme");
    let zero_block = u64::from_le_bytes(mac.finalize_fixed().into());
    assert_ne!(h64(b"acme", b""), zero_block);
}

#[test]
fn precomputed_key_state_equals_the_mac() {
    for salt_len in [1usize, 7, 32, 63, 64] {
        let salt: Vec<u8> = (0..salt_len).map(|i| (i * 7 + 1) as u8).collect();
        let hasher = Hasher::new(&salt);
        for len in 0..300usize {
            let data: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let mut mac = <Blake2bMac<U8> as KeyInit>::new_from_slice(&salt).expect("key");
            Update::update(&mut mac, &data);
            let want = u64::from_le_bytes(mac.finalize_fixed().into());
            assert_eq!(hasher.hash(&data), want, "salt {salt_len} data {len}");
        }
    }
}

#[test]
fn bad_pools_are_errors() {
    assert_eq!(
        Pool::new(&["a", "b", "a"], &["", "", ""], b"s", 2).map(|_| ()),
        Err(PoolError::DuplicateWorker("a".into()))
    );
    assert!(matches!(
        Pool::new(&["a", "b"], &[""], b"s", 2),
        Err(PoolError::ZoneCount { .. })
    ));
    assert_eq!(
        PoolError::DuplicateWorker("a".into()).to_string(),
        "duplicate worker ids in pool"
    );
}

#[test]
fn empty_pool_and_oversized_requests_clamp() {
    let empty = Pool::new::<&str, &str>(&[], &[], b"s", 3).expect("empty pool");
    assert!(empty.selection_order(1, 5).is_empty());
    assert_eq!(empty.ranked("t", 9, &["x"]), (vec![], 0));
    assert_eq!(empty.ranked::<&str>("t", 0, &[]), (vec![], 0));
    assert!(empty.shard_matrix(&[1, 2, 3], 4).is_empty());
    let pool = Pool::new(&["a", "b", "c"], &["x", "y", "y"], b"s", 9).expect("pool");
    let (order, k) = pool.ranked::<&str>("t", 0, &[]);
    assert_eq!((order.len(), k), (3, 3));
    assert_eq!(pool.shard_matrix(&[1, 2], 50).len(), 6);
    // Out-of-range pinned indices are ignored rather than trusted.
    let mut out = Vec::new();
    let k = pool.ranked_into(
        7,
        Override::Members(&[2, 99]),
        &mut Scratch::default(),
        &mut out,
    );
    assert_eq!((k, out[0], out.len()), (1, 2, 3));
    // A short output buffer gets whole rows only.
    let mut short = [u32::MAX; 5];
    pool.shard_matrix_into(&[1, 2, 3], 2, &mut short);
    assert_eq!(short[4], u32::MAX);
}

#[test]
fn a_large_matrix_on_every_core_equals_one_thread() {
    let ids: Vec<String> = (0..1000).map(|i| format!("w{i:03}")).collect();
    for zones in [
        vec![""; 1000],
        (0..1000).map(|i| ["a", "b", "c"][i % 3]).collect(),
    ] {
        let pool = Pool::new(&ids, &zones, b"salt", 4).expect("pool");
        let hashes: Vec<u64> = (0..9001u64).map(|t| t.wrapping_mul(GOLDEN)).collect();
        assert!(hashes.len() * pool.len() >= 2 * PARALLEL_SCORES);
        for k in [1, 4, 9] {
            let mut one = vec![0; hashes.len() * k];
            pool.shard_matrix_into(&hashes, k, &mut one);
            assert_eq!(pool.shard_matrix(&hashes, k), one);
        }
    }
}

// ---- properties ------------------------------------------------------------------------------

/// A pool of `n` workers named `w<i>` over `z` zones (`z == 0`: no zones), salted.
fn pool_strategy(max: usize) -> impl Strategy<Value = (Vec<String>, Vec<String>, Vec<u8>)> {
    (
        1..=max,
        0usize..=4,
        prop::collection::vec(any::<u8>(), 0..80),
    )
        .prop_flat_map(|(n, z, salt)| {
            let zones = prop::collection::vec(0..z.max(1), n);
            (Just(n), Just(z), zones, Just(salt)).prop_map(|(n, z, zones, salt)| {
                let ids = (0..n).map(|i| format!("w{i}")).collect();
                let zones = zones
                    .into_iter()
                    .map(|i| {
                        if z == 0 {
                            String::new()
                        } else {
                            format!("z{i}")
                        }
                    })
                    .collect();
                (ids, zones, salt)
            })
        })
}

fn build(ids: &[String], zones: &[String], salt: &[u8], k: usize) -> Pool {
    Pool::new(ids, zones, salt, k).expect("valid pool")
}

fn shard(pool: &Pool, tenant: &str, k: usize) -> Vec<String> {
    let order = pool.selection_order(pool.tenant_hash(tenant), k);
    order[..k.min(pool.len())]
        .iter()
        .map(|&i| pool.worker_ids()[i].clone())
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn deterministic_and_a_permutation(
        (ids, zones, salt) in pool_strategy(40), tenant in ".{0,12}", length in 0usize..50,
    ) {
        let pool = build(&ids, &zones, &salt, 2);
        let again = build(&ids, &zones, &salt, 2);
        let h = pool.tenant_hash(&tenant);
        let order = pool.selection_order(h, length);
        prop_assert_eq!(&order, &again.selection_order(again.tenant_hash(&tenant), length));
        let mut sorted = order.clone();
        sorted.sort_unstable();
        prop_assert_eq!(sorted, (0..pool.len()).collect::<Vec<_>>());
    }

    #[test]
    fn growing_k_keeps_the_old_members(
        (ids, zones, salt) in pool_strategy(30), tenant in "[a-z0-9-]{1,12}",
    ) {
        let pool = build(&ids, &zones, &salt, 2);
        let mut previous: Vec<String> = Vec::new();
        for k in 1..=pool.len() {
            let now = shard(&pool, &tenant, k);
            prop_assert_eq!(now.len(), k);
            prop_assert_eq!(now.iter().collect::<HashSet<_>>().len(), k);
            prop_assert_eq!(&now[..k - 1], &previous[..]);
            previous = now;
        }
    }

    #[test]
    fn at_most_ceil_k_over_z_per_zone_when_zones_allow(
        (ids, zones, salt) in pool_strategy(40), tenant in "[a-z0-9-]{1,12}",
    ) {
        let pool = build(&ids, &zones, &salt, 2);
        let z = pool.n_zones();
        let mut sizes = std::collections::HashMap::new();
        for zone in &zones {
            *sizes.entry(zone.clone()).or_insert(0usize) += 1;
        }
        let smallest = sizes.values().copied().min().unwrap_or(0);
        for k in 1..=pool.len() {
            let cap = k.div_ceil(z);
            if smallest < cap {
                break; // the cap cannot hold everywhere: the rule relaxes
            }
            let order = pool.selection_order(pool.tenant_hash(&tenant), k);
            let mut per_zone = std::collections::HashMap::new();
            for &i in &order[..k] {
                *per_zone.entry(&zones[i]).or_insert(0usize) += 1;
            }
            prop_assert!(per_zone.values().all(|&c| c <= cap));
        }
    }

    #[test]
    fn one_worker_joining_or_leaving_changes_at_most_one_member(
        (ids, zones, salt) in pool_strategy(30),
        tenant in "[a-z0-9-]{1,12}",
        k in 1usize..7,
        zone_pick in any::<prop::sample::Index>(),
        gone_pick in any::<prop::sample::Index>(),
    ) {
        let k = k.min(ids.len());
        let pool = build(&ids, &zones, &salt, k);
        let before: HashSet<String> = shard(&pool, &tenant, k).into_iter().collect();

        let mut joined_ids = ids.clone();
        joined_ids.push("w-new".into());
        let mut joined_zones = zones.clone();
        joined_zones.push(zone_pick.get(&zones).clone());
        let joined = build(&joined_ids, &joined_zones, &salt, k);
        let after: HashSet<String> = shard(&joined, &tenant, k).into_iter().collect();
        prop_assert!(after.difference(&before).count() <= 1);
        prop_assert!(before.difference(&after).count() <= 1);
        if after != before {
            prop_assert_eq!(
                after.difference(&before).cloned().collect::<Vec<_>>(),
                vec!["w-new".to_owned()]
            );
        }

        if ids.len() > k {
            let gone = gone_pick.index(ids.len());
            let (left_ids, left_zones): (Vec<String>, Vec<String>) = ids
                .iter()
                .zip(&zones)
                .enumerate()
                .filter(|&(i, _)| i != gone)
                .map(|(_, (w, z))| (w.clone(), z.clone()))
                .unzip();
            let left = build(&left_ids, &left_zones, &salt, k);
            let after: HashSet<String> = shard(&left, &tenant, k).into_iter().collect();
            prop_assert!(after.difference(&before).count() <= 1);
            prop_assert!(before.difference(&after).count() <= 1);
            if !before.contains(&ids[gone]) {
                prop_assert_eq!(after, before);
            }
        }
    }

    #[test]
    fn shard_matrix_rows_are_selection_order_prefixes(
        (ids, zones, salt) in pool_strategy(24),
        k in 1usize..30,
        tenants in prop::collection::vec(".{0,8}", 1..20),
    ) {
        let pool = build(&ids, &zones, &salt, 2);
        let hashes = tenant_hashes(&tenants, &salt);
        let kk = k.min(pool.len());
        let matrix = pool.shard_matrix(&hashes, k);
        prop_assert_eq!(matrix.len(), tenants.len() * kk);
        for (row, &h) in matrix.chunks_exact(kk).zip(&hashes) {
            let order = pool.selection_order(h, kk);
            let row: Vec<usize> = row.iter().map(|&i| i as usize).collect();
            prop_assert_eq!(&row[..], &order[..kk]);
        }
    }

    #[test]
    fn ties_and_dense_zones_agree_between_strategies(
        hashes in prop::collection::vec(0u64..6, 1..20),
        zones in prop::collection::vec(0usize..3, 20),
        h_t in any::<u64>(),
        k in 1usize..20,
    ) {
        // Few distinct hashes: many ties. Zones remapped dense as `Pool::new` numbers them.
        let mut zones = zones[..hashes.len()].to_vec();
        let mut seen: Vec<usize> = zones.clone();
        seen.sort_unstable();
        seen.dedup();
        for z in &mut zones {
            *z = seen.binary_search(z).unwrap_or(0);
        }
        let pool = Pool::from_hashes(hashes, zones, 2);
        let order = pool.selection_order(h_t, k);
        let k = k.min(pool.len());
        let row: Vec<usize> = pool.shard_matrix(&[h_t], k).into_iter().map(|i| i as usize).collect();
        prop_assert_eq!(&row[..], &order[..k]);
        // Among equal scores the higher index comes first in the unzoned rank order.
        if pool.n_zones() == 1 {
            for w in order.windows(2) {
                let (a, b) = (score(h_t, pool.worker_hashes()[w[0]]), score(h_t, pool.worker_hashes()[w[1]]));
                prop_assert!(a > b || (a == b && w[0] > w[1]));
            }
        }
    }

    #[test]
    fn ranked_puts_pinned_members_first(
        (ids, zones, salt) in pool_strategy(20),
        tenant in ".{0,8}",
        picks in prop::collection::vec(0usize..25, 0..5),
        shard_size in 0usize..25,
    ) {
        let pool = build(&ids, &zones, &salt, 3);
        let members: Vec<String> = picks.iter().map(|&i| format!("w{i}")).collect();
        let (order, k) = pool.ranked(&tenant, shard_size, &members);
        if members.is_empty() {
            let want = if shard_size > 0 { shard_size } else { 3 }.min(pool.len());
            prop_assert_eq!(k, want);
            prop_assert_eq!(order, pool.selection_order(pool.tenant_hash(&tenant), k + FALLBACK_ZONED));
        } else {
            let pinned = pool.pinned(&members);
            prop_assert_eq!(k, pinned.len());
            prop_assert_eq!(&order[..k], &pinned[..]);
            let rest: Vec<usize> = pool
                .selection_order(pool.tenant_hash(&tenant), k + FALLBACK_ZONED)
                .into_iter()
                .filter(|i| !pinned.contains(i))
                .collect();
            prop_assert_eq!(&order[k..], &rest[..]);
        }
    }
}

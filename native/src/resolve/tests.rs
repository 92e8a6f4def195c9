//! The committed vectors (`tests/vectors/resolve.json`, produced by the Python reference),
//! unit tests and properties of version resolution.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;
use serde_json::Value;

use super::*;

fn vectors() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/vectors/resolve.json");
    let text = std::fs::read_to_string(path).expect("tests/vectors/resolve.json is committed");
    serde_json::from_str(&text).expect("resolve.json is JSON")
}

/// Routes whose payload is the version itself (so a test can tell payloads apart).
fn routes(record: &Value) -> Routes<u64> {
    let versions = record["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|v| {
            let v = v.as_u64().expect("version");
            (v, v)
        })
        .collect();
    let aliases = record["aliases"]
        .as_object()
        .expect("aliases")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_u64().expect("alias target")))
        .collect();
    let traffic: Vec<(u64, u32)> = record["traffic"]
        .as_array()
        .expect("traffic")
        .iter()
        .map(|p| {
            let w = p[1].as_u64().expect("weight");
            (
                p[0].as_u64().expect("version"),
                u32::try_from(w).expect("u32 weight"),
            )
        })
        .collect();
    Routes::new(versions, aliases, traffic)
}

#[test]
fn vectors_resolve() {
    let v = vectors();
    let records: Vec<(String, Routes<u64>)> = v["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| {
            let name = format!(
                "{}/{}",
                r["tenant"].as_str().expect("tenant"),
                r["name"].as_str().expect("name")
            );
            (name, routes(r))
        })
        .collect();
    let cases = v["cases"].as_array().expect("cases");
    assert!(cases.len() > 500);
    for case in cases {
        let (name, routes) = &records[case["record"].as_u64().expect("record") as usize];
        let requested = case["requested"].as_str().expect("requested");
        let u = f64::from_bits(case["u_bits"].as_u64().expect("u_bits"));
        // `u_bits` is exact; serde_json's default float parsing may be one ulp off on `u`.
        let shown = case["u"].as_f64().expect("u");
        assert!((u - shown).abs() <= 1e-15, "{case}");
        let draws = Cell::new(0u32);
        let got = resolve(routes, name, requested, || {
            draws.set(draws.get() + 1);
            u
        });
        assert_eq!(
            u64::from(draws.get()),
            case["draws"].as_u64().expect("draws"),
            "{case}"
        );
        match (&got, &case["ok"], &case["error"]) {
            (Ok(r), ok, Value::Null) => {
                assert_eq!(r.0, ok["version"].as_u64().expect("version"), "{case}");
                assert_eq!(*r.1, r.0);
                assert_eq!(r.2.to_string(), ok["via"].as_str().expect("via"), "{case}");
            }
            (Err(e), Value::Null, err) => {
                assert_eq!(
                    e.to_string(),
                    err["message"].as_str().expect("message"),
                    "{case}"
                );
                let kind = if e.is_not_found() {
                    "NotFound"
                } else {
                    "ValueError"
                };
                assert_eq!(kind, err["type"].as_str().expect("type"), "{case}");
            }
            _ => panic!("{case}: got {got:?}"),
        }
    }
}

fn simple(versions: &[u64], aliases: &[(&str, u64)], traffic: &[(u64, u32)]) -> Routes<()> {
    Routes::new(
        versions.iter().map(|&v| (v, ())).collect(),
        aliases.iter().map(|&(a, v)| (a.to_owned(), v)).collect(),
        traffic.iter().copied(),
    )
}

#[test]
fn resolution_rules_and_messages() {
    let r = simple(&[1, 2, 3], &[("stable", 2), ("canary", 3)], &[]);
    let never = || -> f64 { panic!("no split: no draw") };
    let ok = |req: &str| {
        let res = resolve(&r, "acme/churn", req, never).expect("resolves");
        (res.0, res.2.to_string())
    };
    assert_eq!(ok(" 1 "), (1, "pinned".into()));
    assert_eq!(ok("canary"), (3, "alias:canary".into()));
    assert_eq!(ok(""), (2, "alias:stable".into()));
    let err = |req: &str| {
        resolve(&r, "acme/churn", req, never)
            .map(|_| ())
            .unwrap_err()
    };
    assert_eq!(err("9").to_string(), "model acme/churn has no version 9");
    assert_eq!(
        err("beta").to_string(),
        "model acme/churn has no alias 'beta'"
    );
    assert_eq!(
        err("99999999999999999999999").to_string(),
        "model acme/churn has no version 99999999999999999999999"
    );
    let none = simple(&[], &[], &[]);
    assert_eq!(
        resolve(&none, "a/b", "", never)
            .map(|_| ())
            .unwrap_err()
            .to_string(),
        "model a/b has no versions"
    );
    let latest = simple(&[3, 10, 4], &[], &[]);
    let res = resolve(&latest, "a/b", "  ", never).expect("latest");
    assert_eq!((res.0, res.2), (10, Via::Latest));
}

#[test]
fn split_draws_once_and_caps_the_index() {
    let r = simple(&[1, 2], &[("stable", 1)], &[(2, 1), (1, 1)]);
    for (u, want) in [
        (0.0, 1),
        (0.49, 1),
        (0.5, 2),
        (1.0, 2),
        (7.0, 2),
        (-3.0, 1),
        (f64::NAN, 2),
        (f64::INFINITY, 2),
        (f64::NEG_INFINITY, 1),
    ] {
        let draws = Cell::new(0);
        let res = resolve(&r, "a/b", "", || {
            draws.set(draws.get() + 1);
            u
        })
        .expect("split");
        assert_eq!(
            (res.0, res.2, draws.get()),
            (want, Via::Traffic, 1),
            "u={u}"
        );
    }
    let zero = simple(&[1], &[], &[(1, 0)]);
    let e = resolve(&zero, "a/b", "", || panic!("refused before drawing"))
        .map(|_| ())
        .unwrap_err();
    assert!(!e.is_not_found());
    assert_eq!(e.to_string(), "Total of weights must be greater than zero");
}

#[test]
fn exact_float_int_comparison() {
    assert!(f64_lt_u64(-0.5, 0));
    assert!(!f64_lt_u64(-0.0, 0));
    assert!(!f64_lt_u64(3.0, 3));
    assert!(f64_lt_u64(2.999_999_999_999_999_6, 3));
    // 2^53 + 1 is not a float: 2^53 < 2^53 + 1 exactly, as Python says.
    assert!(f64_lt_u64(9_007_199_254_740_992.0, 9_007_199_254_740_993));
    assert!(!f64_lt_u64(18_446_744_073_709_551_616.0, u64::MAX));
    assert!(f64_lt_u64(18_446_744_073_709_549_568.0, u64::MAX));
    // In a split: running sums 1, 1, 3 (a zero weight between), x = u * 3.
    let r = simple(&[1, 2, 3], &[], &[(1, 1), (2, 0), (3, 2)]);
    let pick = |u: f64| resolve(&r, "a/b", "", || u).map(|res| res.0);
    assert_eq!(pick(1.0 / 3.0), Ok(3));
    assert_eq!(pick(0.333_333_333_333_333), Ok(1));
}

#[test]
fn last_duplicate_traffic_weight_wins() {
    let r = simple(&[1, 2], &[], &[(2, 0), (1, 5), (2, 5)]);
    assert_eq!(r.traffic, [(1, 5), (2, 5)]);
}

#[test]
fn a_split_out_of_order_is_read_sorted() {
    let sorted = simple(&[1, 2, 3], &[], &[(1, 20), (2, 30), (3, 50)]);
    let mut shuffled = sorted.clone();
    shuffled.traffic = vec![(3, 50), (1, 20), (2, 30)];
    for u in [0.0, 0.19, 0.2, 0.49, 0.5, 0.99] {
        let a = resolve(&sorted, "a/b", "", || u).map(|r| r.0);
        let b = resolve(&shuffled, "a/b", "", || u).map(|r| r.0);
        assert_eq!(a, b, "u={u}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Any number string within u64 pins exactly that version (leading zeros and
    /// surrounding whitespace allowed), and a split always lands on one of its versions.
    #[test]
    fn pins_and_splits(
        versions in prop::collection::btree_set(any::<u64>(), 1..8),
        zeros in 0usize..3,
        pad in prop::sample::select(vec!["", " ", "\t", "\u{3000}", "\x1c"]),
        weights in prop::collection::vec(1u32..1000, 1..6),
        u in 0.0f64..1.0,
    ) {
        let versions: Vec<u64> = versions.into_iter().collect();
        let traffic: Vec<(u64, u32)> = versions.iter().copied().zip(weights).collect();
        let r = Routes::new(
            versions.iter().map(|&v| (v, v)).collect::<BTreeMap<_, _>>(),
            HashMap::new(),
            traffic.clone(),
        );
        for &v in &versions {
            let req = format!("{pad}{}{v}{pad}", "0".repeat(zeros));
            let res = resolve(&r, "a/b", &req, || 0.5).expect("pinned");
            prop_assert_eq!((res.0, *res.1, res.2), (v, v, Via::Pinned));
        }
        let res = resolve(&r, "a/b", pad, || u).expect("split");
        prop_assert!(traffic.iter().any(|&(v, _)| v == res.0));
        prop_assert_eq!(res.2, Via::Traffic);
    }

    /// The split picks version i for u in [cum[i-1], cum[i]) / total (exact arithmetic).
    #[test]
    fn split_follows_cumulative_weights(
        weights in prop::collection::vec(0u32..50, 1..8),
        u in 0.0f64..1.0,
    ) {
        let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
        prop_assume!(total > 0);
        let traffic: Vec<(u64, u32)> = weights.iter().enumerate().map(|(i, &w)| (i as u64, w)).collect();
        let r = Routes::new((0..weights.len() as u64).map(|v| (v, ())).collect(), HashMap::new(), traffic);
        let x = u * total as f64;
        let mut cum = 0u64;
        let mut want = weights.len() - 1;
        for (i, &w) in weights.iter().enumerate() {
            cum += u64::from(w);
            if x < cum as f64 {
                want = i;
                break;
            }
        }
        let res = resolve(&r, "a/b", "", || u).expect("split");
        prop_assert_eq!(res.0, want as u64);
    }

    /// Resolution never panics, whatever the request.
    #[test]
    fn any_request_resolves_or_errs(requested in "\\PC{0,12}|[0-9²٣ ]{0,30}") {
        let r = simple(&[0, 1, 7], &[("stable", 9)], &[]);
        let _ = resolve(&r, "a/b", &requested, || 0.5).map(|_| ()).map_err(|e| e.to_string());
    }
}

//! Version resolution: which version of `tenant/name` answers a request.
//!
//! TEMPORARY STAND-IN so the gateway builds; replaced by the real implementation from the
//! `shard` branch.

use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone)]
pub struct Routes<V> {
    pub versions: BTreeMap<u64, V>,
    pub aliases: HashMap<String, u64>,
    pub traffic: Vec<(u64, u32)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Pinned,
    Alias,
    Traffic,
    Latest,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ResolveError(pub String);

pub fn resolve<'a, V>(
    routes: &'a Routes<V>,
    name: &str,
    requested: &str,
    draw: impl FnOnce() -> f64,
) -> Result<(u64, &'a V, Via), ResolveError> {
    let requested = requested.trim();
    if !requested.is_empty() && requested.bytes().all(|b| b.is_ascii_digit()) {
        let v: u64 = requested.parse().unwrap_or(u64::MAX);
        return routes
            .versions
            .get(&v)
            .map(|x| (v, x, Via::Pinned))
            .ok_or_else(|| ResolveError(format!("model {name} has no version {requested}")));
    }
    if !requested.is_empty() {
        let v = routes
            .aliases
            .get(requested)
            .ok_or_else(|| ResolveError(format!("model {name} has no alias '{requested}'")))?;
        return routes
            .versions
            .get(v)
            .map(|x| (*v, x, Via::Alias))
            .ok_or_else(|| ResolveError(format!("missing {v}")));
    }
    if !routes.traffic.is_empty() {
        let total: u32 = routes.traffic.iter().map(|t| t.1).sum();
        let u = draw() * total as f64;
        let mut cum = 0.0;
        for (v, w) in &routes.traffic {
            cum += *w as f64;
            if u < cum {
                return routes
                    .versions
                    .get(v)
                    .map(|x| (*v, x, Via::Traffic))
                    .ok_or_else(|| ResolveError(format!("missing {v}")));
            }
        }
    }
    if let Some(v) = routes.aliases.get("stable") {
        return routes
            .versions
            .get(v)
            .map(|x| (*v, x, Via::Alias))
            .ok_or_else(|| ResolveError(format!("missing {v}")));
    }
    routes
        .versions
        .iter()
        .next_back()
        .map(|(v, x)| (*v, x, Via::Latest))
        .ok_or_else(|| ResolveError(format!("model {name} has no versions")))
}

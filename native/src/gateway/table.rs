//! The routing table: what the gateway knows of the cluster, pushed by Python's etcd view.
//!
//! Python sends changes as `(etcd key, value or None)` with the values exactly as etcd holds
//! them (the JSON of `shoal/records.py`); the key's prefix says what it is. Readers take no
//! lock: models live in a sharded map whose shards are immutable maps swapped whole
//! (`ArcSwap`), tenants and pools in immutable maps swapped whole. A request therefore sees
//! one record either before or after an update, never half of one. Writers (Python's control
//! thread) are serialised by a mutex.
//!
//! Pools are derived state: a pool's view (members, their shard hashes, which are live) is
//! rebuilt whenever its snapshot, the cluster salt or the pool's worker leases change.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Deserialize;

use crate::resolve::Routes;
use crate::shard;

pub const MODELS: &str = "/shoal/models/";
pub const TENANTS: &str = "/shoal/tenants/";
pub const WORKERS: &str = "/shoal/workers/";
pub const PLACEMENT: &str = "/shoal/placement/";
pub const CLUSTER: &str = "/shoal/cluster";

const MODEL_SHARDS: usize = 256;

/// One tensor of a signature: (name, datatype, shape with -1 for variable dimensions).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Tensor(pub String, pub String, pub Vec<i64>);

#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Signature {
    #[serde(default)]
    pub inputs: Vec<Tensor>,
    #[serde(default)]
    pub outputs: Vec<Tensor>,
}

/// What the gateway needs of one model version.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Version {
    pub version: u64,
    pub pool: String,
    pub framework: String,
    #[serde(default)]
    pub signature: Signature,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Shadow {
    pub version: u64,
    pub percent: f64,
}

#[derive(Deserialize)]
struct ModelJson {
    tenant: String,
    name: String,
    #[serde(default)]
    versions: Vec<Version>,
    #[serde(default)]
    aliases: HashMap<String, u64>,
    #[serde(default)]
    traffic: BTreeMap<String, u32>,
    #[serde(default)]
    shadow: Option<Shadow>,
}

/// One model of one tenant, ready for resolution.
#[derive(Debug)]
pub struct Model {
    pub tenant: String,
    /// `tenant/name`
    pub full_name: String,
    pub routes: Routes<Version>,
    pub shadow: Option<Shadow>,
}

impl Model {
    pub fn decode(value: &[u8]) -> Result<Model, String> {
        let m: ModelJson = serde_json::from_slice(value).map_err(|e| e.to_string())?;
        let mut traffic = Vec::with_capacity(m.traffic.len());
        for (v, pct) in m.traffic {
            let v: u64 = v
                .parse()
                .map_err(|_| format!("traffic version {v:?} is not a number"))?;
            traffic.push((v, pct));
        }
        Ok(Model {
            full_name: format!("{}/{}", m.tenant, m.name),
            tenant: m.tenant,
            routes: Routes::new(
                m.versions.into_iter().map(|v| (v.version, v)).collect(),
                m.aliases,
                traffic,
            ),
            shadow: m.shadow,
        })
    }
}

/// A stored API key entry: `key_id:salt_hex:sha256_hex`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    pub key_id: String,
    pub salt: Vec<u8>,
    pub digest: [u8; 32],
}

impl KeyEntry {
    /// None for an entry that is not of that shape (it can never verify a key).
    pub fn parse(entry: &str) -> Option<KeyEntry> {
        let (key_id, rest) = entry.split_once(':')?;
        let (salt, digest) = rest.split_once(':')?;
        let mut d = [0u8; 32];
        hex::decode_to_slice(digest, &mut d).ok()?;
        Some(KeyEntry {
            key_id: key_id.to_string(),
            salt: hex::decode(salt).ok()?,
            digest: d,
        })
    }
}

#[derive(Deserialize)]
struct TenantJson {
    #[serde(default)]
    shard_size: usize,
    #[serde(default)]
    members: Vec<String>,
    #[serde(default)]
    key_hashes: Vec<String>,
    #[serde(default)]
    rate_limit: f64,
    #[serde(default)]
    max_in_flight: u32,
}

/// Per-tenant settings: shard overrides, API keys, quotas.
#[derive(Debug, Default)]
pub struct Tenant {
    pub shard_size: usize,
    pub members: Vec<String>,
    pub keys: Vec<KeyEntry>,
    pub rate_limit: f64,
    pub max_in_flight: u32,
}

impl Tenant {
    pub fn decode(value: &[u8]) -> Result<Tenant, String> {
        let t: TenantJson = serde_json::from_slice(value).map_err(|e| e.to_string())?;
        Ok(Tenant {
            shard_size: t.shard_size,
            members: t.members,
            keys: t
                .key_hashes
                .iter()
                .filter_map(|e| KeyEntry::parse(e))
                .collect(),
            rate_limit: if t.rate_limit.is_finite() {
                t.rate_limit.max(0.0)
            } else {
                0.0
            },
            max_in_flight: t.max_in_flight,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Member {
    pub worker_id: String,
    pub address: String,
    #[serde(default)]
    pub zone: String,
}

#[derive(Debug, Clone, Deserialize)]
struct SnapshotJson {
    epoch: u64,
    members: Vec<Member>,
    shard_size: usize,
}

#[derive(Debug, Clone, Deserialize)]
struct WorkerJson {
    worker_id: String,
    #[serde(default)]
    draining: bool,
}

#[derive(Debug, Clone, Deserialize)]
struct ClusterJson {
    salt: String,
}

/// One pool as requests see it: the published members and which of them are live.
#[derive(Debug)]
pub struct PoolView {
    pub name: String,
    pub epoch: u64,
    pub members: Vec<Member>,
    /// Per member: its lease is alive and it is not draining.
    pub live: Vec<bool>,
    pub shard: shard::Pool,
}

thread_local! {
    /// The shard function's buffers, reused by every request on this thread.
    static SCRATCH: std::cell::RefCell<shard::Scratch> = std::cell::RefCell::default();
}

impl PoolView {
    /// Member indices best first and the shard size k for `tenant` (its overrides applied:
    /// explicit members first, else its shard size, else the pool's).
    pub fn ranked(&self, tenant: &str, cfg: Option<&Tenant>) -> (Vec<usize>, usize) {
        let pinned;
        let ov = match cfg {
            Some(t) if !t.members.is_empty() => {
                pinned = self.shard.pinned(&t.members);
                shard::Override::Members(&pinned)
            }
            Some(t) if t.shard_size > 0 => shard::Override::ShardSize(t.shard_size),
            _ => shard::Override::Default,
        };
        let h_t = self.shard.tenant_hash(tenant);
        let mut out = Vec::with_capacity(self.members.len());
        let k = SCRATCH.with(|s| match s.try_borrow_mut() {
            Ok(mut scratch) => self.shard.ranked_into(h_t, ov, &mut scratch, &mut out),
            Err(_) => self
                .shard
                .ranked_into(h_t, ov, &mut shard::Scratch::default(), &mut out),
        });
        (out, k)
    }
}

/// Inputs of the derived pool views, kept by the writer.
#[derive(Default)]
struct Inputs {
    snapshots: HashMap<String, SnapshotJson>,
    /// etcd key -> (pool, worker id, draining)
    workers: HashMap<String, (String, String, bool)>,
    salt: Option<Vec<u8>>,
}

type Map<V> = HashMap<Box<str>, Arc<V>>;
/// Changes to one map: key -> new value (None: delete).
type Changes<V> = Vec<(Box<str>, Option<Arc<V>>)>;

/// The table. `apply` is the only writer.
pub struct Table {
    models: Box<[ArcSwap<Map<Model>>]>,
    tenants: ArcSwap<Map<Tenant>>,
    pools: ArcSwap<Map<PoolView>>,
    /// Bumped on every tenant change (the key cache keys on it).
    tenants_epoch: std::sync::atomic::AtomicU64,
    inputs: Mutex<Inputs>,
}

impl Default for Table {
    fn default() -> Self {
        Table::new()
    }
}

fn shard_of(key: &str) -> usize {
    // FNV-1a: cheap, and only spreads keys over shards.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in key.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    (h % MODEL_SHARDS as u64) as usize
}

impl Table {
    pub fn new() -> Table {
        Table {
            models: (0..MODEL_SHARDS)
                .map(|_| ArcSwap::from_pointee(Map::new()))
                .collect(),
            tenants: ArcSwap::from_pointee(Map::new()),
            pools: ArcSwap::from_pointee(Map::new()),
            tenants_epoch: std::sync::atomic::AtomicU64::new(0),
            inputs: Mutex::new(Inputs::default()),
        }
    }

    /// The model `tenant/name`.
    pub fn model(&self, full_name: &str) -> Option<Arc<Model>> {
        self.models[shard_of(full_name)]
            .load()
            .get(full_name)
            .cloned()
    }

    pub fn tenant(&self, tenant: &str) -> Option<Arc<Tenant>> {
        self.tenants.load().get(tenant).cloned()
    }

    pub fn tenants_epoch(&self) -> u64 {
        self.tenants_epoch
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Every pool's view.
    pub fn pools(&self) -> Vec<Arc<PoolView>> {
        self.pools.load().values().cloned().collect()
    }

    pub fn pool(&self, pool: &str) -> Option<Arc<PoolView>> {
        self.pools.load().get(pool).cloned()
    }

    /// Every model (of `tenant` only, when given), in no particular order.
    pub fn models(&self, tenant: Option<&str>) -> Vec<Arc<Model>> {
        let mut out = Vec::new();
        for shard in self.models.iter() {
            let shard = shard.load();
            out.extend(
                shard
                    .values()
                    .filter(|m| tenant.map_or(true, |t| m.tenant == t))
                    .cloned(),
            );
        }
        out
    }

    pub fn model_count(&self) -> usize {
        self.models.iter().map(|s| s.load().len()).sum()
    }

    /// Apply a batch of etcd changes; returns the keys whose values could not be decoded
    /// (with why), which are dropped from the table like deletions, as the Python mirror
    /// skips them.
    pub fn apply(&self, changes: &[(String, Option<Vec<u8>>)]) -> Vec<(String, String)> {
        let mut inputs = match self.inputs.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut bad = Vec::new();
        let mut model_changes: Vec<Changes<Model>> =
            (0..MODEL_SHARDS).map(|_| Vec::new()).collect();
        let mut tenant_changes: Changes<Tenant> = Vec::new();
        let mut pools_dirty = false;
        for (key, value) in changes {
            if let Some(rest) = key.strip_prefix(MODELS) {
                let decoded = match value.as_deref().map(Model::decode) {
                    None => None,
                    Some(Ok(m)) if m.full_name == rest => Some(Arc::new(m)),
                    Some(Ok(m)) => {
                        bad.push((key.clone(), format!("record names {}", m.full_name)));
                        None
                    }
                    Some(Err(e)) => {
                        bad.push((key.clone(), e));
                        None
                    }
                };
                model_changes[shard_of(rest)].push((rest.into(), decoded));
            } else if let Some(rest) = key.strip_prefix(TENANTS) {
                let decoded = match value.as_deref().map(Tenant::decode) {
                    None => None,
                    Some(Ok(t)) => Some(Arc::new(t)),
                    Some(Err(e)) => {
                        bad.push((key.clone(), e));
                        None
                    }
                };
                tenant_changes.push((rest.into(), decoded));
            } else if let Some(pool) = key.strip_prefix(PLACEMENT) {
                pools_dirty = true;
                match value.as_deref().map(serde_json::from_slice::<SnapshotJson>) {
                    Some(Ok(s)) => {
                        inputs.snapshots.insert(pool.to_string(), s);
                    }
                    Some(Err(e)) => {
                        bad.push((key.clone(), e.to_string()));
                        inputs.snapshots.remove(pool);
                    }
                    None => {
                        inputs.snapshots.remove(pool);
                    }
                }
            } else if let Some(rest) = key.strip_prefix(WORKERS) {
                pools_dirty = true;
                let pool = rest
                    .split_once('/')
                    .map(|(p, _)| p.to_string())
                    .unwrap_or_default();
                match value.as_deref().map(serde_json::from_slice::<WorkerJson>) {
                    Some(Ok(w)) => {
                        inputs
                            .workers
                            .insert(key.clone(), (pool, w.worker_id, w.draining));
                    }
                    Some(Err(e)) => {
                        bad.push((key.clone(), e.to_string()));
                        inputs.workers.remove(key);
                    }
                    None => {
                        inputs.workers.remove(key);
                    }
                }
            } else if key == CLUSTER {
                pools_dirty = true;
                inputs.salt = match value.as_deref().map(serde_json::from_slice::<ClusterJson>) {
                    Some(Ok(c)) => match hex::decode(&c.salt) {
                        Ok(s) => Some(s),
                        Err(e) => {
                            bad.push((key.clone(), format!("salt is not hex: {e}")));
                            None
                        }
                    },
                    Some(Err(e)) => {
                        bad.push((key.clone(), e.to_string()));
                        None
                    }
                    None => None,
                };
            }
        }
        for (shard, batch) in model_changes.into_iter().enumerate() {
            if batch.is_empty() {
                continue;
            }
            let mut map = Map::clone(&self.models[shard].load());
            for (k, v) in batch {
                match v {
                    Some(m) => map.insert(k, m),
                    None => map.remove(&k),
                };
            }
            self.models[shard].store(Arc::new(map));
        }
        if !tenant_changes.is_empty() {
            let mut map = Map::clone(&self.tenants.load());
            for (k, v) in tenant_changes {
                match v {
                    Some(t) => map.insert(k, t),
                    None => map.remove(&k),
                };
            }
            self.tenants.store(Arc::new(map));
            self.tenants_epoch
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        if pools_dirty {
            self.pools.store(Arc::new(build_pools(&inputs, &mut bad)));
        }
        bad
    }
}

fn build_pools(inputs: &Inputs, bad: &mut Vec<(String, String)>) -> Map<PoolView> {
    let mut out = Map::new();
    let Some(salt) = inputs.salt.as_deref() else {
        return out;
    };
    for (name, snap) in &inputs.snapshots {
        if snap.members.is_empty() {
            continue;
        }
        let live_ids: std::collections::HashSet<&str> = inputs
            .workers
            .values()
            .filter(|(pool, _, draining)| pool == name && !draining)
            .map(|(_, id, _)| id.as_str())
            .collect();
        let ids: Vec<&str> = snap.members.iter().map(|m| m.worker_id.as_str()).collect();
        let zones: Vec<&str> = snap.members.iter().map(|m| m.zone.as_str()).collect();
        let shard = match shard::Pool::new(&ids, &zones, salt, snap.shard_size) {
            Ok(p) => p,
            Err(e) => {
                bad.push((format!("{PLACEMENT}{name}"), e.to_string()));
                continue;
            }
        };
        let view = PoolView {
            name: name.clone(),
            epoch: snap.epoch,
            live: snap
                .members
                .iter()
                .map(|m| live_ids.contains(m.worker_id.as_str()))
                .collect(),
            shard,
            members: snap.members.clone(),
        };
        out.insert(name.as_str().into(), Arc::new(view));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model_json(tenant: &str, name: &str) -> Vec<u8> {
        format!(
            r#"{{"aliases":{{"stable":1}},"name":"{name}","next_version":3,"shadow":{{"percent":50.0,"version":2}},"tenant":"{tenant}","traffic":{{"2":10,"1":90}},"versions":[{{"created_at":0.0,"format":"xgboost-json","framework":"xgboost","labels":{{}},"pool":"cpu","sha256":"00","signature":{{"inputs":[["input__0","FP32",[-1,30]]],"outputs":[["output__0","FP32",[-1]]]}},"size":10,"uri":"a","version":1}},{{"created_at":0.0,"format":"onnx","framework":"onnx","labels":{{}},"pool":"gpu","sha256":"11","signature":{{"inputs":[],"outputs":[]}},"size":10,"uri":"b","version":2}}]}}"#
        )
        .into_bytes()
    }

    #[test]
    fn models_decode_from_their_etcd_json() {
        let t = Table::new();
        let bad = t.apply(&[(
            "/shoal/models/acme/churn".into(),
            Some(model_json("acme", "churn")),
        )]);
        assert!(bad.is_empty(), "{bad:?}");
        let m = t.model("acme/churn").unwrap();
        assert_eq!(m.full_name, "acme/churn");
        assert_eq!(m.routes.traffic, vec![(1, 90), (2, 10)]);
        assert_eq!(m.routes.aliases.get("stable"), Some(&1));
        assert_eq!(m.routes.versions[&2].pool, "gpu");
        assert_eq!(
            m.routes.versions[&1].signature.inputs,
            vec![Tensor("input__0".into(), "FP32".into(), vec![-1, 30])]
        );
        assert_eq!(
            m.shadow,
            Some(Shadow {
                version: 2,
                percent: 50.0
            })
        );
        t.apply(&[("/shoal/models/acme/churn".into(), None)]);
        assert!(t.model("acme/churn").is_none());
    }

    #[test]
    fn undecodable_values_are_reported_and_dropped() {
        let t = Table::new();
        t.apply(&[(
            "/shoal/models/acme/churn".into(),
            Some(model_json("acme", "churn")),
        )]);
        let bad = t.apply(&[
            (
                "/shoal/models/acme/churn".into(),
                Some(b"{not json".to_vec()),
            ),
            (
                "/shoal/models/acme/other".into(),
                Some(model_json("acme", "churn")),
            ),
        ]);
        assert_eq!(bad.len(), 2);
        assert!(t.model("acme/churn").is_none());
        assert!(t.model("acme/other").is_none());
    }

    #[test]
    fn a_reader_keeps_the_record_it_loaded() {
        let t = Table::new();
        t.apply(&[(
            "/shoal/models/acme/churn".into(),
            Some(model_json("acme", "churn")),
        )]);
        let held = t.model("acme/churn").unwrap();
        t.apply(&[("/shoal/models/acme/churn".into(), None)]);
        assert_eq!(held.routes.versions.len(), 2);
    }

    #[test]
    fn tenants_carry_keys_and_quotas() {
        let t = Table::new();
        let salt = "ab".repeat(16);
        let digest = "cd".repeat(32);
        let value = format!(
            r#"{{"hot_until":0.0,"key_hashes":["k1:{salt}:{digest}","broken"],"max_in_flight":4,"members":[],"rate_limit":2.5,"shard_size":3,"tenant":"acme"}}"#
        );
        let e0 = t.tenants_epoch();
        t.apply(&[("/shoal/tenants/acme".into(), Some(value.into_bytes()))]);
        assert!(t.tenants_epoch() > e0);
        let cfg = t.tenant("acme").unwrap();
        assert_eq!(
            (cfg.shard_size, cfg.max_in_flight, cfg.rate_limit),
            (3, 4, 2.5)
        );
        assert_eq!(cfg.keys.len(), 1);
        assert_eq!(cfg.keys[0].key_id, "k1");
    }

    #[test]
    fn pools_need_a_snapshot_and_the_salt_and_track_live_workers() {
        let t = Table::new();
        let snap = br#"{"epoch":3,"members":[{"address":"127.0.0.1:1","worker_id":"w0","zone":""},{"address":"127.0.0.1:2","worker_id":"w1","zone":""}],"pool":"cpu","published_at":0.0,"shard_size":2}"#;
        t.apply(&[("/shoal/placement/cpu".into(), Some(snap.to_vec()))]);
        assert!(t.pool("cpu").is_none(), "no salt yet");
        t.apply(&[
            (
                "/shoal/cluster".into(),
                Some(br#"{"default_shard_size":2,"salt":"abab"}"#.to_vec()),
            ),
            (
                "/shoal/workers/cpu/w0".into(),
                Some(
                    br#"{"address":"127.0.0.1:1","draining":false,"pool":"cpu","worker_id":"w0"}"#
                        .to_vec(),
                ),
            ),
            (
                "/shoal/workers/cpu/w1".into(),
                Some(
                    br#"{"address":"127.0.0.1:2","draining":true,"pool":"cpu","worker_id":"w1"}"#
                        .to_vec(),
                ),
            ),
        ]);
        let p = t.pool("cpu").unwrap();
        assert_eq!(p.epoch, 3);
        assert_eq!(p.live, vec![true, false]);
        t.apply(&[("/shoal/workers/cpu/w0".into(), None)]);
        assert_eq!(t.pool("cpu").unwrap().live, vec![false, false]);
    }
}

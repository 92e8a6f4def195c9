//! Resident model versions the front serves natively, as Python pushes them (a load made a
//! model resident; an eviction or a quarantine removed it), and the misses under way.
//!
//! An entry is an `Arc`: a prediction running when its model is removed keeps the runner
//! (and the native booster it owns) alive until it ends.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use tokio::sync::watch;

use super::model::Resident;
use crate::gateway::table::Model;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

type Key = (String, u64);

#[derive(Default)]
pub struct Table {
    models: RwLock<HashMap<Key, Arc<Resident>>>,
    misses: Arc<Mutex<Misses>>,
    /// Versions Python answered without making them native (ONNX, GPU models, fault drills):
    /// their requests go straight to Python, without waiting for one another.
    python: RwLock<HashSet<Key>>,
    /// Model records as Python's catalog holds them while they are fresh (etcd watched):
    /// aliases and the empty version resolve here by the one rule (`crate::resolve`).
    records: RwLock<HashMap<String, Arc<Model>>>,
}

/// Versions remembered in `Table::python` at most (then forgotten all at once: their next
/// requests only wait for one another once more).
const PYTHON_KEYS: usize = 100_000;

type Misses = HashMap<Key, watch::Receiver<bool>>;

/// The first request of a miss holds this while Python answers it; dropping it wakes the
/// requests that waited.
pub struct Miss {
    misses: Arc<Mutex<Misses>>,
    key: Key,
    done: watch::Sender<bool>,
}

impl Drop for Miss {
    fn drop(&mut self) {
        lock(&self.misses).remove(&self.key);
        let _ = self.done.send(true);
    }
}

/// What a request for a model version that is not resident should do.
pub enum Lookup {
    Resident(Arc<Resident>),
    /// First miss: ask Python, holding the guard until it answers.
    Ask(Miss),
    /// Another request is asking: wait for it, then look again.
    Wait(watch::Receiver<bool>),
    /// Python serves this version: ask it.
    Python,
}

impl Table {
    /// The resident entry, or what to do about its absence.
    pub fn lookup(&self, model: &str, version: u64) -> Lookup {
        if let Some(r) = self.get_fast(model, version) {
            return Lookup::Resident(r);
        }
        let key = (model.to_string(), version);
        if self
            .python
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&key)
        {
            return Lookup::Python;
        }
        let mut misses = lock(&self.misses);
        // Pushed between the first look and taking the lock.
        if let Some(r) = self.get_fast(model, version) {
            return Lookup::Resident(r);
        }
        if let Some(rx) = misses.get(&key) {
            return Lookup::Wait(rx.clone());
        }
        let (tx, rx) = watch::channel(false);
        misses.insert(key.clone(), rx);
        Lookup::Ask(Miss {
            misses: self.misses.clone(),
            key,
            done: tx,
        })
    }

    fn get_fast(&self, model: &str, version: u64) -> Option<Arc<Resident>> {
        let key = (model.to_string(), version);
        let models = self.models.read().unwrap_or_else(|p| p.into_inner());
        models.get(&key).cloned()
    }

    /// The resident versions of `model` (every model when empty; one version when given).
    pub fn residents(&self, model: &str, version: Option<u64>) -> Vec<Arc<Resident>> {
        let models = self.models.read().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<Arc<Resident>> = models
            .iter()
            .filter(|((m, v), _)| {
                (model.is_empty() || m == model) && version.map_or(true, |want| *v == want)
            })
            .map(|(_, r)| r.clone())
            .collect();
        out.sort_by(|a, b| a.label.cmp(&b.label));
        out
    }

    /// Python answered a miss for this version and did not make it native.
    pub fn served_by_python(&self, model: &str, version: u64) {
        if self.get_fast(model, version).is_some() {
            return;
        }
        let mut python = self.python.write().unwrap_or_else(|p| p.into_inner());
        if python.len() >= PYTHON_KEYS {
            python.clear();
        }
        python.insert((model.to_string(), version));
    }

    pub fn insert(&self, resident: Resident) {
        let key = (resident.name.clone(), resident.version);
        self.python
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key);
        self.models
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, Arc::new(resident));
    }

    /// Remove a version (evicted, quarantined); true if it was there.
    pub fn remove(&self, model: &str, version: u64) -> bool {
        self.models
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(model.to_string(), version))
            .is_some()
    }

    /// A fresh record of `model` (`tenant/name`), its etcd JSON; None forgets it. A record
    /// that does not decode is forgotten too (Python answers for it).
    pub fn set_record(&self, model: &str, value: Option<&[u8]>) -> Result<(), String> {
        let mut records = self.records.write().unwrap_or_else(|p| p.into_inner());
        records.remove(model);
        if let Some(v) = value {
            records.insert(model.to_string(), Arc::new(Model::decode(v)?));
        }
        Ok(())
    }

    /// Every record stopped being fresh (the catalog's watch broke).
    pub fn clear_records(&self) {
        self.records
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    pub fn record(&self, model: &str) -> Option<Arc<Model>> {
        self.records
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(model)
            .cloned()
    }

    pub fn contains(&self, model: &str, version: u64) -> bool {
        self.get_fast(model, version).is_some()
    }

    pub fn len(&self) -> usize {
        self.models.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Versions served natively since the last call (their cache recency, for Python).
    pub fn take_touched(&self) -> Vec<(String, u64)> {
        let models = self.models.read().unwrap_or_else(|p| p.into_inner());
        models
            .values()
            .filter(|r| r.touched.swap(false, Ordering::AcqRel))
            .map(|r| (r.name.clone(), r.version))
            .collect()
    }
}

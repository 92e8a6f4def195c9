//! API keys, checked as `shoal/auth.py` stores them.
//!
//! A key reads `shoal.<tenant>.<key_id>.<secret>` (split from the right: tenant ids may hold
//! dots). The tenant's record stores `key_id:salt:sha256(salt || key)`; a key is valid when an
//! entry with its id has the same digest, compared in constant time. Admin keys belong to the
//! reserved tenant `_admin`. Verified keys are cached (at most `CACHE` of them); the cache is
//! dropped whenever any tenant record changes, so a revoked key is refused as soon as the
//! change reaches the table.

use std::collections::HashMap;
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::table::Table;

pub const ADMIN: &str = "_admin";
const PREFIX: &str = "shoal.";
const CACHE: usize = 10_000;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: String,
    pub key_id: String,
}

impl Principal {
    pub fn admin(&self) -> bool {
        self.tenant == ADMIN
    }
}

/// Why a call is not authenticated; the texts are the Python router's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing API key: send 'authorization: Bearer <key>'")]
    Missing,
    #[error("not a Shoal API key")]
    NotAKey,
    #[error("malformed API key")]
    Malformed,
    #[error("invalid or revoked API key")]
    Invalid,
}

/// The token of an `authorization: Bearer <token>` header value (scheme case-insensitive).
pub fn bearer(value: Option<&[u8]>) -> Option<&str> {
    let value = std::str::from_utf8(value?).ok()?;
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// (tenant, key_id) of a key shaped like one.
pub fn parse_key(key: &str) -> Result<(&str, &str), AuthError> {
    let rest = key.strip_prefix(PREFIX).ok_or(AuthError::NotAKey)?;
    let mut parts = rest.rsplitn(3, '.');
    let (secret, key_id, tenant) = (parts.next(), parts.next(), parts.next());
    match (tenant, key_id, secret) {
        (Some(t), Some(k), Some(s)) if !t.is_empty() && !k.is_empty() && !s.is_empty() => {
            Ok((t, k))
        }
        _ => Err(AuthError::Malformed),
    }
}

/// Verifies keys against the table's tenant records, with a cache of verified keys.
#[derive(Default)]
pub struct KeyChecker {
    /// (tenants epoch the entries were verified at, key -> principal)
    cache: Mutex<(u64, HashMap<String, Principal>)>,
}

impl KeyChecker {
    pub fn check(&self, table: &Table, key: Option<&str>) -> Result<Principal, AuthError> {
        let key = key.ok_or(AuthError::Missing)?;
        let epoch = table.tenants_epoch();
        if let Ok(cache) = self.cache.lock() {
            if cache.0 == epoch {
                if let Some(p) = cache.1.get(key) {
                    return Ok(p.clone());
                }
            }
        }
        let (tenant, key_id) = parse_key(key)?;
        let cfg = table.tenant(tenant).ok_or(AuthError::Invalid)?;
        let found = cfg.keys.iter().any(|e| {
            if e.key_id != key_id {
                return false;
            }
            let mut h = Sha256::new();
            h.update(&e.salt);
            h.update(key.as_bytes());
            let digest: [u8; 32] = h.finalize().into();
            bool::from(digest.ct_eq(&e.digest))
        });
        if !found {
            return Err(AuthError::Invalid);
        }
        let principal = Principal {
            tenant: tenant.to_string(),
            key_id: key_id.to_string(),
        };
        if let Ok(mut cache) = self.cache.lock() {
            if cache.0 != epoch || cache.1.len() >= CACHE {
                // A tenant changed (a key may be revoked), or the cache is full: start over.
                *cache = (epoch, HashMap::new());
            }
            cache.1.insert(key.to_string(), principal.clone());
        }
        Ok(principal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, key_id: &str) -> String {
        let salt = [7u8; 16];
        let mut h = Sha256::new();
        h.update(salt);
        h.update(key.as_bytes());
        format!(
            "{key_id}:{}:{}",
            hex::encode(salt),
            hex::encode(h.finalize())
        )
    }

    fn tenant_json(tenant: &str, entries: &[String]) -> Vec<u8> {
        let list: Vec<String> = entries.iter().map(|e| format!("\"{e}\"")).collect();
        format!(
            r#"{{"tenant":"{tenant}","key_hashes":[{}]}}"#,
            list.join(",")
        )
        .into_bytes()
    }

    #[test]
    fn bearer_tokens_are_read_like_the_python_router() {
        assert_eq!(bearer(Some(b"Bearer abc")), Some("abc"));
        assert_eq!(bearer(Some(b"bearer   abc  ")), Some("abc"));
        assert_eq!(bearer(Some(b"Basic abc")), None);
        assert_eq!(bearer(Some(b"Bearer ")), None);
        assert_eq!(bearer(Some(b"Bearer")), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn keys_split_from_the_right() {
        assert_eq!(parse_key("shoal.a.b.c.kid.secret"), Ok(("a.b.c", "kid")));
        assert_eq!(parse_key("other.a.kid.s"), Err(AuthError::NotAKey));
        assert_eq!(parse_key("shoal.kid.secret"), Err(AuthError::Malformed));
        assert_eq!(parse_key("shoal..kid.secret"), Err(AuthError::Malformed));
        assert_eq!(parse_key("shoal.a.kid."), Err(AuthError::Malformed));
    }

    #[test]
    fn a_key_verifies_until_it_is_revoked() {
        let table = Table::new();
        let key = "shoal.acme.k1.s3cret";
        table.apply(&[(
            "/shoal/tenants/acme".into(),
            Some(tenant_json("acme", &[entry(key, "k1")])),
        )]);
        let checker = KeyChecker::default();
        let p = checker.check(&table, Some(key)).unwrap();
        assert_eq!(
            (p.tenant.as_str(), p.key_id.as_str(), p.admin()),
            ("acme", "k1", false)
        );
        assert_eq!(checker.check(&table, Some(key)), Ok(p));
        assert_eq!(
            checker.check(&table, Some("shoal.acme.k1.wrong")),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            checker.check(&table, Some("shoal.acme.k2.s3cret")),
            Err(AuthError::Invalid)
        );
        assert_eq!(checker.check(&table, None), Err(AuthError::Missing));
        // Revocation: the entry goes, and the cached verification with it.
        table.apply(&[("/shoal/tenants/acme".into(), Some(tenant_json("acme", &[])))]);
        assert_eq!(checker.check(&table, Some(key)), Err(AuthError::Invalid));
    }

    #[test]
    fn admin_keys_live_under_the_reserved_tenant() {
        let table = Table::new();
        let key = "shoal._admin.a1.top";
        table.apply(&[(
            "/shoal/tenants/_admin".into(),
            Some(tenant_json("_admin", &[entry(key, "a1")])),
        )]);
        assert!(KeyChecker::default()
            .check(&table, Some(key))
            .unwrap()
            .admin());
    }
}

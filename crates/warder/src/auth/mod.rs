//! Authentication of API keys, with an in-process cache of results.
//!
//! A warm request is authenticated from memory: the cache maps a key's public
//! id to its stored record. The first secret presented for it is checked
//! against the stored SHA-256 hash; once it matched, the entry also keeps a
//! keyed 128-bit SipHash tag of it (the key is random per process), and a
//! later request whose secret has that tag is recognised without hashing
//! again: SHA-256 cost a twentieth of a warm predict's instructions, the tag
//! a fraction of that. Any other secret still goes to the stored hash. Both
//! comparisons are in constant time, and neither the tag nor the hash lets
//! the secret be recovered from memory. Revocation and key changes made
//! through this node drop the entry at once; entries also expire after
//! `auth_cache_ttl_s`. This module knows nothing about HTTP.

use crate::cluster::authcache::AuthL2;
use crate::telemetry::metrics::{CacheLabels, Metrics};
use crate::ttl_cache::TtlCache;
use prometheus_client::metrics::counter::Counter;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use subtle::ConstantTimeEq;
use warder_core::{now_ms, ApiKey, KeyId, KeyRecord, Scope, Store, StoreError};

/// Who is calling: the result of a successful authentication.
#[derive(Debug, Clone)]
pub struct Principal {
    /// Public id of the key used.
    pub key_id: Arc<str>,
    /// Owner of the key.
    pub user_id: Arc<str>,
    /// May call `/admin`.
    pub admin: bool,
    /// May call `predict_internal`.
    pub internal: bool,
}

/// Why a key was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("missing API key: send 'Authorization: Api-Key <key>'")]
    Missing,
    /// The header or key does not have the documented shape.
    #[error("malformed API key")]
    Malformed,
    /// No such key, or a wrong secret.
    #[error("invalid API key")]
    Invalid,
    /// The key was revoked.
    #[error("API key revoked")]
    Revoked,
    /// The key is past its expiry.
    #[error("API key expired")]
    Expired,
    /// The store could not be asked.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What the cache holds for a public id.
#[derive(Debug)]
#[expect(clippy::large_enum_variant, reason = "always held behind an Arc")]
enum Cached {
    Known {
        record: KeyRecord,
        principal: Arc<Principal>,
        /// The stored hash, decoded.
        digest: Option<[u8; 32]>,
        /// The keyed tag of the secret that matched `digest`.
        verified: OnceLock<[u8; 16]>,
    },
    Unknown,
}

/// Authenticates keys; cheap to clone.
#[derive(Clone)]
pub struct AuthService {
    store: Arc<dyn Store>,
    cache: TtlCache<KeyId, Arc<Cached>>,
    l2: Option<AuthL2>,
    metrics: Arc<Metrics>,
    /// The process's random key for [`ApiKey::keyed_tag`].
    tag_key: [u8; 16],
    /// `warder_auth_cache_total{result="hit"}`, resolved once: counted on
    /// every request.
    hits: Counter,
    /// `warder_auth_cache_total{result="miss"}`.
    misses: Counter,
}

impl AuthService {
    /// A service over `store` caching results for `ttl`.
    pub fn new(store: Arc<dyn Store>, ttl: Duration, metrics: Arc<Metrics>) -> AuthService {
        AuthService {
            store,
            cache: TtlCache::new(100_000, ttl),
            l2: None,
            tag_key: rand::random(),
            hits: cache_counter(&metrics, "hit"),
            misses: cache_counter(&metrics, "miss"),
            metrics,
        }
    }

    /// Adds the shared L2 cache (cluster mode).
    pub fn with_l2(mut self, l2: AuthL2) -> AuthService {
        self.l2 = Some(l2);
        self
    }

    /// The L2 cache, if clustered.
    pub fn l2(&self) -> Option<&AuthL2> {
        self.l2.as_ref()
    }

    /// L2 (when clustered), then the store; a record read from the store is
    /// written to L2. Redis trouble falls back to the store.
    async fn load(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        if let Some(l2) = &self.l2 {
            match l2.get(id.as_str()).await {
                Ok(Some(record)) => {
                    self.count_l2("hit");
                    return Ok(Some(record));
                }
                Ok(None) => self.count_l2("miss"),
                Err(_) => self.count_l2("error"),
            }
        }
        let record = self.store.get_key(id.as_str()).await?;
        if let (Some(l2), Some(r)) = (&self.l2, &record) {
            let _ = l2.put(r).await;
        }
        Ok(record)
    }

    fn count_l2(&self, result: &str) {
        self.metrics
            .auth_l2
            .get_or_create(&CacheLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Parses an `Authorization` header value: `Api-Key <key>` or `Bearer <key>`.
    pub fn parse_header(value: Option<&str>) -> Result<ApiKey<&str>, AuthError> {
        let value = value.ok_or(AuthError::Missing)?.trim();
        let (scheme, key) = value.split_once(' ').ok_or(AuthError::Malformed)?;
        if !(scheme.eq_ignore_ascii_case("api-key") || scheme.eq_ignore_ascii_case("bearer")) {
            return Err(AuthError::Malformed);
        }
        ApiKey::parse_borrowed(key.trim()).ok_or(AuthError::Malformed)
    }

    /// Checks a key: cache first, then the store.
    pub async fn authenticate(&self, key: &ApiKey<&str>) -> Result<Arc<Principal>, AuthError> {
        let cached = match self.cache.get(key.id()) {
            Some(c) => {
                self.hits.inc();
                c
            }
            None => {
                self.misses.inc();
                // Boxed: the store lookup is rare and would otherwise set
                // the size of this future, copied on every call.
                let found = match Box::pin(self.load(key.id())).await? {
                    Some(record) => {
                        let principal = Arc::new(principal_of(&record));
                        let digest = ApiKey::decode_hash(&record.secret_hash);
                        Cached::Known {
                            record,
                            principal,
                            digest,
                            verified: OnceLock::new(),
                        }
                    }
                    None => Cached::Unknown,
                };
                let found = Arc::new(found);
                self.cache.insert(*key.id(), found.clone());
                found
            }
        };
        let Cached::Known {
            record,
            principal,
            digest,
            verified,
        } = &*cached
        else {
            return Err(AuthError::Invalid);
        };
        // The secret is checked before anything about the key is revealed.
        let tag = key.keyed_tag(&self.tag_key);
        let seen = verified
            .get()
            .is_some_and(|known| bool::from(known.ct_eq(&tag)));
        if !seen {
            if !digest.as_ref().is_some_and(|d| key.matches_digest(d)) {
                return Err(AuthError::Invalid);
            }
            let _ = verified.set(tag);
        }
        if record.revoked_at.is_some() {
            return Err(AuthError::Revoked);
        }
        if !record.is_usable_at(now_ms()) {
            return Err(AuthError::Expired);
        }
        Ok(principal.clone())
    }

    /// Drops a key's cached result (after revocation or creation).
    pub fn invalidate(&self, key_id: &str) {
        if let Some(id) = KeyId::parse(key_id) {
            self.cache.invalidate(&id);
        }
    }

    /// Drops every cached result.
    pub fn invalidate_all(&self) {
        self.cache.invalidate_all();
    }
}

fn cache_counter(metrics: &Metrics, result: &str) -> Counter {
    metrics
        .auth_cache
        .get_or_create(&CacheLabels {
            result: result.to_owned(),
        })
        .clone()
}

fn principal_of(record: &KeyRecord) -> Principal {
    Principal {
        key_id: Arc::from(record.id.as_str()),
        user_id: Arc::from(record.user_id.as_str()),
        admin: record.has_scope(Scope::Admin),
        internal: record.has_scope(Scope::Internal),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_schemes() {
        let key = ApiKey::generate().expose();
        assert!(AuthService::parse_header(Some(&format!("Api-Key {key}"))).is_ok());
        assert!(AuthService::parse_header(Some(&format!("Bearer {key}"))).is_ok());
        assert!(AuthService::parse_header(Some(&format!("api-key {key}"))).is_ok());
        assert!(matches!(
            AuthService::parse_header(None),
            Err(AuthError::Missing)
        ));
        assert!(matches!(
            AuthService::parse_header(Some(&format!("Basic {key}"))),
            Err(AuthError::Malformed)
        ));
        assert!(matches!(
            AuthService::parse_header(Some(&key)),
            Err(AuthError::Malformed)
        ));
    }
}

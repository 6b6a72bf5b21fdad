//! The shared L2 cache of key records (public id → record with secret hash).
//!
//! Sits under each node's in-process L1: a node that has never seen a key
//! asks Redis before the store. Only the hash of a secret is kept, never the
//! clear key. A revocation deletes the entry, and deletes it again a second
//! later, so a node that read the store just before the revocation and wrote
//! the old record back cannot keep it alive.

use super::{RedisDown, RedisLink};
use serde::{Deserialize, Serialize};
use std::time::Duration;
use warder_core::{KeyRecord, Scope, Timestamp};

#[derive(Serialize, Deserialize)]
struct Entry {
    id: String,
    user_id: String,
    name: String,
    scopes: Vec<Scope>,
    secret_hash: String,
    created_at: i64,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
}

/// The L2 auth cache.
#[derive(Clone)]
pub struct AuthL2 {
    link: RedisLink,
    ttl: Duration,
}

impl AuthL2 {
    /// An L2 cache on `link` whose entries live `ttl`.
    pub fn new(link: RedisLink, ttl: Duration) -> AuthL2 {
        AuthL2 { link, ttl }
    }

    fn redis_key(&self, key_id: &str) -> String {
        self.link.key(&format!("auth:{key_id}"))
    }

    /// The cached record, `None` on a miss.
    pub async fn get(&self, key_id: &str) -> Result<Option<KeyRecord>, RedisDown> {
        let k = self.redis_key(key_id);
        let raw: Option<String> = self
            .link
            .run("auth_get", move |mut conn| {
                Box::pin(async move { redis::cmd("GET").arg(k).query_async(&mut conn).await })
            })
            .await?;
        Ok(raw
            .and_then(|r| serde_json::from_str::<Entry>(&r).ok())
            .map(|e| KeyRecord {
                id: e.id,
                user_id: e.user_id,
                name: e.name,
                scopes: e.scopes,
                secret_hash: e.secret_hash,
                created_at: Timestamp(e.created_at),
                expires_at: e.expires_at.map(Timestamp),
                revoked_at: e.revoked_at.map(Timestamp),
            }))
    }

    /// Stores a record read from the store.
    pub async fn put(&self, record: &KeyRecord) -> Result<(), RedisDown> {
        let entry = Entry {
            id: record.id.clone(),
            user_id: record.user_id.clone(),
            name: record.name.clone(),
            scopes: record.scopes.clone(),
            secret_hash: record.secret_hash.clone(),
            created_at: record.created_at.0,
            expires_at: record.expires_at.map(|t| t.0),
            revoked_at: record.revoked_at.map(|t| t.0),
        };
        let Ok(json) = serde_json::to_string(&entry) else {
            return Ok(());
        };
        let k = self.redis_key(&record.id);
        let ttl_ms = self.ttl.as_millis() as u64;
        self.link
            .run("auth_put", move |mut conn| {
                Box::pin(async move {
                    redis::cmd("SET")
                        .arg(k)
                        .arg(json)
                        .arg("PX")
                        .arg(ttl_ms.max(1))
                        .query_async::<()>(&mut conn)
                        .await
                })
            })
            .await
    }

    /// Removes a record now and again one second later.
    pub async fn forget(&self, key_id: &str) {
        self.delete(key_id).await;
        let again = self.clone();
        let id = key_id.to_owned();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            again.delete(&id).await;
        });
    }

    async fn delete(&self, key_id: &str) {
        let k = self.redis_key(key_id);
        let done = self
            .link
            .run("auth_del", move |mut conn| {
                Box::pin(async move { redis::cmd("DEL").arg(k).query_async::<()>(&mut conn).await })
            })
            .await;
        if let Err(e) = done {
            tracing::warn!(error = %e, "auth L2 entry not deleted; it expires with its TTL");
        }
    }
}

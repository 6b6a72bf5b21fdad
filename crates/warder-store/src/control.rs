//! The control plane's storage traits over SQL: [`UserStore`],
//! [`KeyStore`], [`ModelStore`], [`AccessStore`] and [`UsageStore`] for
//! [`SqlStore`]. Portable SQL only, one body for both dialects; rows are
//! decoded in `rows`. Stores what it is given and decides no policy.

use crate::rows;
use crate::sql::{map_err, SqlStore};
use async_trait::async_trait;
use warder_core::*;

fn opt_u64(v: Option<u64>) -> Option<i64> {
    v.map(|v| v.min(i64::MAX as u64) as i64)
}

#[async_trait]
impl UserStore for SqlStore {
    async fn create_user(&self, user: NewUser) -> StoreResult<User> {
        let created = User {
            id: new_id(12),
            name: user.name,
            email: user.email,
            role: user.role,
            created_at: Timestamp::now(),
        };
        sqlx::query(
            "INSERT INTO users (id, name, email, role, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&created.id)
        .bind(&created.name)
        .bind(&created.email)
        .bind(created.role.as_str())
        .bind(created.created_at.0)
        .execute(self.pool())
        .await
        .map_err(map_err)?;
        Ok(created)
    }

    async fn get_user(&self, id: &str) -> StoreResult<Option<User>> {
        self.fetch_optional(
            sqlx::query("SELECT * FROM users WHERE id = $1").bind(id),
            rows::user,
        )
        .await
    }

    async fn find_user_by_name(&self, name: &str) -> StoreResult<Option<User>> {
        self.fetch_optional(
            sqlx::query("SELECT * FROM users WHERE name = $1").bind(name),
            rows::user,
        )
        .await
    }

    async fn list_users(&self) -> StoreResult<Vec<User>> {
        self.fetch_all(
            sqlx::query("SELECT * FROM users ORDER BY created_at, id"),
            rows::user,
        )
        .await
    }
}

#[async_trait]
impl KeyStore for SqlStore {
    async fn insert_key(&self, key: KeyRecord) -> StoreResult<()> {
        let scopes: Vec<&str> = key.scopes.iter().map(|s| s.as_str()).collect();
        sqlx::query(
            "INSERT INTO api_keys (id, user_id, name, scopes, secret_hash, created_at, expires_at, revoked_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&key.id)
        .bind(&key.user_id)
        .bind(&key.name)
        .bind(scopes.join(","))
        .bind(&key.secret_hash)
        .bind(key.created_at.0)
        .bind(key.expires_at.map(|t| t.0))
        .bind(key.revoked_at.map(|t| t.0))
        .execute(self.pool())
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn get_key(&self, id: &str) -> StoreResult<Option<KeyRecord>> {
        self.fetch_optional(
            sqlx::query("SELECT * FROM api_keys WHERE id = $1").bind(id),
            rows::key,
        )
        .await
    }

    async fn list_keys(&self, user_id: &str) -> StoreResult<Vec<KeyRecord>> {
        self.fetch_all(
            sqlx::query("SELECT * FROM api_keys WHERE user_id = $1 ORDER BY created_at, id")
                .bind(user_id),
            rows::key,
        )
        .await
    }

    async fn revoke_key(&self, id: &str, at: Timestamp) -> StoreResult<bool> {
        let done =
            sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2")
                .bind(at.0)
                .bind(id)
                .execute(self.pool())
                .await
                .map_err(map_err)?;
        Ok(done.rows_affected() > 0)
    }
}

#[async_trait]
impl ModelStore for SqlStore {
    async fn create_model(&self, model: NewModel) -> StoreResult<Model> {
        let created = Model {
            id: new_id(8),
            name: model.name,
            description: model.description,
            created_at: Timestamp::now(),
        };
        sqlx::query(
            "INSERT INTO models (id, name, description, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(&created.id)
        .bind(&created.name)
        .bind(&created.description)
        .bind(created.created_at.0)
        .execute(self.pool())
        .await
        .map_err(map_err)?;
        Ok(created)
    }

    async fn find_model(&self, id_or_name: &str) -> StoreResult<Option<Model>> {
        // An id match wins over a name match, so a model named like another
        // model's id cannot shadow it.
        self.fetch_optional(
            sqlx::query(
                "SELECT * FROM models WHERE id = $1 OR name = $1 \
                 ORDER BY CASE WHEN id = $1 THEN 0 ELSE 1 END LIMIT 1",
            )
            .bind(id_or_name),
            rows::model,
        )
        .await
    }

    async fn list_models(&self) -> StoreResult<Vec<Model>> {
        self.fetch_all(
            sqlx::query("SELECT * FROM models ORDER BY created_at, id"),
            rows::model,
        )
        .await
    }

    async fn insert_version(&self, v: ModelVersion) -> StoreResult<()> {
        let mut tx = self.pool().begin().await.map_err(map_err)?;
        sqlx::query(
            "INSERT INTO model_versions (id, model_id, upstream_url, timeout_ms, max_concurrency, \
             input_schema, cache_ttl_s, response, state, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&v.id)
        .bind(&v.model_id)
        .bind(&v.upstream_url)
        .bind(v.timeout_ms as i64)
        .bind(v.max_concurrency.map(i64::from))
        .bind(v.input_schema.as_ref().map(|s| s.to_string()))
        .bind(opt_u64(v.cache_ttl_s))
        .bind(v.response.as_str())
        .bind(v.state.as_str())
        .bind(v.created_at.0)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        sqlx::query(
            "INSERT INTO environments (model_id, name, version_id, updated_at) \
             VALUES ($1, 'production', $2, $3) ON CONFLICT (model_id, name) DO NOTHING",
        )
        .bind(&v.model_id)
        .bind(&v.id)
        .bind(v.created_at.0)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }

    async fn get_version(&self, id: &str) -> StoreResult<Option<ModelVersion>> {
        self.fetch_optional(
            sqlx::query("SELECT * FROM model_versions WHERE id = $1").bind(id),
            rows::version,
        )
        .await
    }

    async fn list_versions(&self, model_id: &str) -> StoreResult<Vec<ModelVersion>> {
        self.fetch_all(
            sqlx::query("SELECT * FROM model_versions WHERE model_id = $1 ORDER BY created_at, id")
                .bind(model_id),
            rows::version,
        )
        .await
    }

    async fn update_version(
        &self,
        id: &str,
        patch: VersionPatch,
    ) -> StoreResult<Option<ModelVersion>> {
        let Some(mut v) = self.get_version(id).await? else {
            return Ok(None);
        };
        if let Some(u) = patch.upstream_url {
            v.upstream_url = u;
        }
        if let Some(t) = patch.timeout_ms {
            v.timeout_ms = t;
        }
        if let Some(c) = patch.max_concurrency {
            v.max_concurrency = c;
        }
        if let Some(s) = patch.input_schema {
            v.input_schema = s;
        }
        if let Some(c) = patch.cache_ttl_s {
            v.cache_ttl_s = c;
        }
        if let Some(r) = patch.response {
            v.response = r;
        }
        if let Some(s) = patch.state {
            v.state = s;
        }
        sqlx::query(
            "UPDATE model_versions SET upstream_url = $1, timeout_ms = $2, max_concurrency = $3, \
             input_schema = $4, cache_ttl_s = $5, response = $6, state = $7 WHERE id = $8",
        )
        .bind(&v.upstream_url)
        .bind(v.timeout_ms as i64)
        .bind(v.max_concurrency.map(i64::from))
        .bind(v.input_schema.as_ref().map(|s| s.to_string()))
        .bind(opt_u64(v.cache_ttl_s))
        .bind(v.response.as_str())
        .bind(v.state.as_str())
        .bind(id)
        .execute(self.pool())
        .await
        .map_err(map_err)?;
        Ok(Some(v))
    }

    async fn set_environment(
        &self,
        model_id: &str,
        name: &str,
        version_id: &str,
    ) -> StoreResult<Environment> {
        let env = Environment {
            model_id: model_id.to_owned(),
            name: name.to_owned(),
            version_id: version_id.to_owned(),
            updated_at: Timestamp::now(),
        };
        sqlx::query(
            "INSERT INTO environments (model_id, name, version_id, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (model_id, name) DO UPDATE SET version_id = excluded.version_id, \
             updated_at = excluded.updated_at",
        )
        .bind(&env.model_id)
        .bind(&env.name)
        .bind(&env.version_id)
        .bind(env.updated_at.0)
        .execute(self.pool())
        .await
        .map_err(map_err)?;
        Ok(env)
    }

    async fn get_environment(
        &self,
        model_id: &str,
        name: &str,
    ) -> StoreResult<Option<Environment>> {
        self.fetch_optional(
            sqlx::query("SELECT * FROM environments WHERE model_id = $1 AND name = $2")
                .bind(model_id)
                .bind(name),
            rows::environment,
        )
        .await
    }

    async fn list_environments(&self, model_id: &str) -> StoreResult<Vec<Environment>> {
        self.fetch_all(
            sqlx::query("SELECT * FROM environments WHERE model_id = $1 ORDER BY name")
                .bind(model_id),
            rows::environment,
        )
        .await
    }
}

#[async_trait]
impl AccessStore for SqlStore {
    async fn create_policy(&self, p: NewPolicy) -> StoreResult<Policy> {
        let created = Policy {
            id: new_id(10),
            name: p.name,
            rate_limit_per_second: p.rate_limit_per_second,
            burst: p.burst,
            daily_calls: p.daily_calls,
            monthly_calls: p.monthly_calls,
            created_at: Timestamp::now(),
        };
        sqlx::query(
            "INSERT INTO policies (id, name, rate_limit_per_second, burst, daily_calls, monthly_calls, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&created.id)
        .bind(&created.name)
        .bind(created.rate_limit_per_second)
        .bind(created.burst.map(i64::from))
        .bind(opt_u64(created.daily_calls))
        .bind(opt_u64(created.monthly_calls))
        .bind(created.created_at.0)
        .execute(self.pool())
        .await
        .map_err(map_err)?;
        Ok(created)
    }

    async fn get_policy(&self, id: &str) -> StoreResult<Option<Policy>> {
        self.fetch_optional(
            sqlx::query("SELECT * FROM policies WHERE id = $1").bind(id),
            rows::policy,
        )
        .await
    }

    async fn list_policies(&self) -> StoreResult<Vec<Policy>> {
        self.fetch_all(
            sqlx::query("SELECT * FROM policies ORDER BY created_at, id"),
            rows::policy,
        )
        .await
    }

    async fn create_grant(
        &self,
        user_id: &str,
        model_id: &str,
        policy_id: Option<&str>,
    ) -> StoreResult<Grant> {
        let created = Grant {
            id: new_id(10),
            user_id: user_id.to_owned(),
            model_id: model_id.to_owned(),
            policy_id: policy_id.map(str::to_owned),
            created_at: Timestamp::now(),
        };
        sqlx::query(
            "INSERT INTO grants (id, user_id, model_id, policy_id, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&created.id)
        .bind(&created.user_id)
        .bind(&created.model_id)
        .bind(&created.policy_id)
        .bind(created.created_at.0)
        .execute(self.pool())
        .await
        .map_err(map_err)?;
        Ok(created)
    }

    async fn find_grant(&self, user_id: &str, model_id: &str) -> StoreResult<Option<Grant>> {
        self.fetch_optional(
            sqlx::query("SELECT * FROM grants WHERE user_id = $1 AND model_id = $2")
                .bind(user_id)
                .bind(model_id),
            rows::grant,
        )
        .await
    }

    async fn get_grant(&self, id: &str) -> StoreResult<Option<Grant>> {
        self.fetch_optional(
            sqlx::query("SELECT * FROM grants WHERE id = $1").bind(id),
            rows::grant,
        )
        .await
    }

    async fn list_grants(&self, user_id: Option<&str>) -> StoreResult<Vec<Grant>> {
        match user_id {
            Some(u) => {
                self.fetch_all(
                    sqlx::query("SELECT * FROM grants WHERE user_id = $1 ORDER BY created_at, id")
                        .bind(u),
                    rows::grant,
                )
                .await
            }
            None => {
                self.fetch_all(
                    sqlx::query("SELECT * FROM grants ORDER BY created_at, id"),
                    rows::grant,
                )
                .await
            }
        }
    }

    async fn delete_grant(&self, id: &str) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM grants WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await
            .map_err(map_err)?;
        Ok(done.rows_affected() > 0)
    }
}

#[async_trait]
impl UsageStore for SqlStore {
    async fn add_usage(&self, batch: &[(UsageKey, u64)]) -> StoreResult<()> {
        let mut tx = self.pool().begin().await.map_err(map_err)?;
        for (k, calls) in batch {
            sqlx::query(
                "INSERT INTO usage_daily (user_id, key_id, model_id, day, calls) VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT (key_id, model_id, day) DO UPDATE SET calls = usage_daily.calls + excluded.calls",
            )
            .bind(&k.user_id)
            .bind(&k.key_id)
            .bind(&k.model_id)
            .bind(&k.day)
            .bind(*calls as i64)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    }

    async fn usage(&self, f: UsageFilter) -> StoreResult<Vec<UsageRow>> {
        // Absent filters bind as NULL and match everything, so one statement
        // serves every combination.
        self.fetch_all(
            sqlx::query(
                "SELECT user_id, key_id, model_id, day, calls FROM usage_daily \
                 WHERE ($1 IS NULL OR user_id = $1) AND ($2 IS NULL OR model_id = $2) \
                 AND ($3 IS NULL OR day >= $3) AND ($4 IS NULL OR day <= $4) \
                 ORDER BY day, user_id, model_id, key_id",
            )
            .bind(f.user_id)
            .bind(f.model_id)
            .bind(f.from)
            .bind(f.to),
            rows::usage,
        )
        .await
    }

    async fn calls_between(
        &self,
        key_id: &str,
        model_id: &str,
        from: &str,
        to: &str,
    ) -> StoreResult<u64> {
        self.count_read();
        let n: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(calls), 0) AS BIGINT) FROM usage_daily \
             WHERE key_id = $1 AND model_id = $2 AND day >= $3 AND day <= $4",
        )
        .bind(key_id)
        .bind(model_id)
        .bind(from)
        .bind(to)
        .fetch_one(self.pool())
        .await
        .map_err(map_err)?;
        Ok(n.max(0) as u64)
    }
}

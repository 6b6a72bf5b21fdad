//! Webhook signing secrets over SQL ([`WebhookSecretStore`] for
//! [`SqlStore`]): sealed by the caller, stored as given.

use crate::sql::{map_err, SqlStore};
use async_trait::async_trait;
use warder_core::*;

#[async_trait]
impl WebhookSecretStore for SqlStore {
    async fn rotate_webhook_secret(
        &self,
        user_id: &str,
        sealed_secret: &str,
        now: Timestamp,
        previous_valid_until: Timestamp,
    ) -> StoreResult<()> {
        let mut tx = self.writer().begin().await.map_err(map_err)?;
        sqlx::query(
            "UPDATE webhook_secrets SET valid_until = $1 WHERE user_id = $2 AND valid_until IS NULL",
        )
        .bind(previous_valid_until.0)
        .bind(user_id)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        sqlx::query(
            "INSERT INTO webhook_secrets (id, user_id, created_at, sealed_secret, valid_until) \
             VALUES ($1, $2, $3, $4, NULL)",
        )
        .bind(new_id(16))
        .bind(user_id)
        .bind(now.0)
        .bind(sealed_secret)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        tx.commit().await.map_err(map_err)
    }

    async fn webhook_secrets(&self, user_id: &str, now: Timestamp) -> StoreResult<Vec<String>> {
        sqlx::query_scalar(
            "SELECT sealed_secret FROM webhook_secrets WHERE user_id = $1 \
             AND (valid_until IS NULL OR valid_until > $2) ORDER BY created_at DESC, id",
        )
        .bind(user_id)
        .bind(now.0)
        .fetch_all(self.pool())
        .await
        .map_err(map_err)
    }
}

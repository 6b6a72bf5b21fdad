//! A [`Store`] that records the name of every trait method called on it,
//! then forwards to the real store. Tests use it to say which calls a code
//! path makes, not only how many reads the backend counted.
//!
//! Every method of every supertrait is listed: a method missing here would
//! not compile, so a new store method cannot slip past the count.

use async_trait::async_trait;
use std::sync::{Arc, Mutex};
use warder_core::*;

/// The store wrapper; clone the `Arc` to read the log while the app runs.
pub struct CountingStore {
    inner: Arc<dyn Store>,
    calls: Mutex<Vec<&'static str>>,
}

impl CountingStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Store>) -> Arc<CountingStore> {
        Arc::new(CountingStore {
            inner,
            calls: Mutex::new(Vec::new()),
        })
    }

    fn record(&self, name: &'static str) {
        self.calls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(name);
    }

    /// How many calls were made so far (a mark for [`CountingStore::since`]).
    pub fn mark(&self) -> usize {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The names of the calls made after `mark`, in order.
    pub fn since(&self, mark: usize) -> Vec<&'static str> {
        let calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        calls.get(mark..).unwrap_or_default().to_vec()
    }

    /// How many calls to `name` were made so far.
    pub fn count_of(&self, name: &str) -> usize {
        let calls = self.calls.lock().unwrap_or_else(|e| e.into_inner());
        calls.iter().filter(|c| **c == name).count()
    }
}

/// Implements one store trait by recording the method's name and forwarding.
macro_rules! counted {
    ($trait:ident { $(fn $name:ident(&self $(, $arg:ident: $ty:ty)* $(,)?) -> $ret:ty;)* }) => {
        #[async_trait]
        impl $trait for CountingStore {
            $(async fn $name(&self $(, $arg: $ty)*) -> $ret {
                self.record(stringify!($name));
                self.inner.$name($($arg),*).await
            })*
        }
    };
}

counted!(UserStore {
    fn create_user(&self, user: NewUser) -> StoreResult<User>;
    fn get_user(&self, id: &str) -> StoreResult<Option<User>>;
    fn find_user_by_name(&self, name: &str) -> StoreResult<Option<User>>;
    fn list_users(&self) -> StoreResult<Vec<User>>;
});

counted!(KeyStore {
    fn insert_key(&self, key: KeyRecord) -> StoreResult<()>;
    fn get_key(&self, id: &str) -> StoreResult<Option<KeyRecord>>;
    fn list_keys(&self, user_id: &str) -> StoreResult<Vec<KeyRecord>>;
    fn revoke_key(&self, id: &str, at: Timestamp) -> StoreResult<bool>;
});

counted!(ModelStore {
    fn create_model(&self, model: NewModel) -> StoreResult<Model>;
    fn find_model(&self, id_or_name: &str) -> StoreResult<Option<Model>>;
    fn list_models(&self) -> StoreResult<Vec<Model>>;
    fn insert_version(&self, version: ModelVersion) -> StoreResult<()>;
    fn get_version(&self, id: &str) -> StoreResult<Option<ModelVersion>>;
    fn list_versions(&self, model_id: &str) -> StoreResult<Vec<ModelVersion>>;
    fn update_version(&self, id: &str, patch: VersionPatch) -> StoreResult<Option<ModelVersion>>;
    fn set_environment(
        &self,
        model_id: &str,
        name: &str,
        version_id: &str,
    ) -> StoreResult<Environment>;
    fn get_environment(&self, model_id: &str, name: &str) -> StoreResult<Option<Environment>>;
    fn list_environments(&self, model_id: &str) -> StoreResult<Vec<Environment>>;
});

counted!(AccessStore {
    fn create_policy(&self, policy: NewPolicy) -> StoreResult<Policy>;
    fn get_policy(&self, id: &str) -> StoreResult<Option<Policy>>;
    fn list_policies(&self) -> StoreResult<Vec<Policy>>;
    fn create_grant(
        &self,
        user_id: &str,
        model_id: &str,
        policy_id: Option<&str>,
    ) -> StoreResult<Grant>;
    fn find_grant(&self, user_id: &str, model_id: &str) -> StoreResult<Option<Grant>>;
    fn get_grant(&self, id: &str) -> StoreResult<Option<Grant>>;
    fn list_grants(&self, user_id: Option<&str>) -> StoreResult<Vec<Grant>>;
    fn delete_grant(&self, id: &str) -> StoreResult<bool>;
});

counted!(UsageStore {
    fn add_usage(&self, batch: &[(UsageKey, u64)]) -> StoreResult<()>;
    fn usage(&self, filter: UsageFilter) -> StoreResult<Vec<UsageRow>>;
    fn calls_between(&self, key_id: &str, model_id: &str, from: &str, to: &str) -> StoreResult<u64>;
});

counted!(JobQueue {
    fn enqueue_job(&self, job: NewJob) -> StoreResult<Enqueued>;
    fn enqueue_jobs(&self, jobs: &[NewJob]) -> StoreResult<Vec<StoreResult<Enqueued>>>;
    fn job_by_idempotency_key(&self, user_id: &str, key: &str) -> StoreResult<Option<String>>;
    fn get_job(&self, id: &str) -> StoreResult<Option<AsyncJob>>;
    fn list_jobs(&self, filter: JobFilter) -> StoreResult<Vec<AsyncJob>>;
    fn queue_counts(&self, model_id: &str) -> StoreResult<QueueCounts>;
    fn depth_by_model(&self) -> StoreResult<Vec<(String, JobStatus, u64)>>;
    fn claim_jobs(
        &self,
        owner: &str,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<Lease>>;
    fn heartbeat(&self, owner: &str, ids: &[String], lease_until: Timestamp) -> StoreResult<Vec<String>>;
    fn finish_jobs(
        &self,
        items: &[Finish],
        now: Timestamp,
        retain_until: Timestamp,
    ) -> StoreResult<Vec<bool>>;
    fn cancel_job(
        &self,
        id: &str,
        now: Timestamp,
        retain_until: Timestamp,
    ) -> StoreResult<CancelResult>;
    fn expire_overdue(&self, now: Timestamp, retain_until: Timestamp) -> StoreResult<Vec<String>>;
    fn rescue_expired_leases(&self, now: Timestamp, retain_until: Timestamp) -> StoreResult<u64>;
    fn purge_expired(&self, now: Timestamp) -> StoreResult<u64>;
    fn claim_deliveries(
        &self,
        now: Timestamp,
        lease_until: Timestamp,
        limit: u32,
    ) -> StoreResult<Vec<AsyncJob>>;
    fn record_delivery(&self, delivery: Delivery, next: DeliveryNext) -> StoreResult<()>;
    fn list_deliveries(&self, id: &str) -> StoreResult<Vec<Delivery>>;
    fn redeliver(&self, id: &str, now: Timestamp) -> StoreResult<bool>;
});

counted!(WebhookSecretStore {
    fn rotate_webhook_secret(
        &self,
        user_id: &str,
        sealed_secret: &str,
        now: Timestamp,
        previous_valid_until: Timestamp,
    ) -> StoreResult<()>;
    fn webhook_secrets(&self, user_id: &str, now: Timestamp) -> StoreResult<Vec<String>>;
});

#[async_trait]
impl Store for CountingStore {
    async fn ping(&self) -> StoreResult<()> {
        self.record("ping");
        self.inner.ping().await
    }

    fn read_count(&self) -> u64 {
        self.record("read_count");
        self.inner.read_count()
    }

    fn backend(&self) -> &'static str {
        self.record("backend");
        self.inner.backend()
    }
}

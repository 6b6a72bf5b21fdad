//! The async worker: claims jobs, calls the model, records the outcome,
//! delivers webhooks and sweeps the queue.
//!
//! One [`Worker`] runs inside `serve` (unless disabled) and in each
//! `warder worker` process; any number may share a store. Its loops:
//! - **claim**: takes batches of ready jobs up to its free capacity, woken
//!   by submits, finished attempts, NOTIFY or a poll timer;
//! - **attempts**: one task per job, through the same upstream client and
//!   per-version concurrency slots as sync predict; a cancel aborts the
//!   model call by dropping it (the upstream sees the connection close);
//! - **completer**: writes outcomes in batches (one transaction per batch),
//!   each fenced by the lease token;
//! - **heartbeat**: renews the leases of the attempts running here and
//!   picks up cancels, on shutdown until the last of them has ended;
//! - **sweeper**: expires overdue queued jobs, rescues lost leases, purges
//!   finished jobs past retention and refreshes the depth gauges;
//! - **deliveries**: [`crate::webhooks::Webhooks::run`].
//!
//! The worker must never write a job it no longer holds: every write names
//! its lease token, and the store refuses stale ones.

use crate::catalog::{Catalog, ResolveError, Selector};
use crate::config::Config;
use crate::queue::Signals;
use crate::telemetry::lifecycle;
use crate::telemetry::metrics::{Metrics, ModelLabels, QueueLabels};
use crate::upstream::UpstreamClient;
use crate::webhooks::Webhooks;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;
use warder_core::*;

mod attempt;

use attempt::{jittered, Attempt};

/// How long the claim loop lets freed slots gather while jobs are waiting
/// (short against the queue-latency budget of 50 ms).
const CLAIM_GATHER: Duration = Duration::from_millis(2);

/// What a worker needs from the process it runs in.
#[derive(Clone)]
pub struct WorkerDeps {
    /// The queue.
    pub store: Arc<dyn Store>,
    /// Version lookup and the per-version concurrency slots shared with sync predict.
    pub catalog: Arc<Catalog>,
    /// The upstream client shared with sync predict.
    pub upstream: UpstreamClient,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Configuration.
    pub config: Arc<Config>,
    /// Wake-ups.
    pub signals: Arc<Signals>,
    /// Webhook delivery.
    pub webhooks: Arc<Webhooks>,
}

type Completion = (Finish, oneshot::Sender<bool>);

/// One worker process's share of the queue.
pub struct Worker {
    deps: WorkerDeps,
    owner: String,
    running: Mutex<HashMap<String, Arc<Notify>>>,
    capacity: Arc<Semaphore>,
    completions: mpsc::Sender<Completion>,
    /// The completer's input, until [`Worker::run`] takes it.
    inbox: Mutex<Option<mpsc::Receiver<Completion>>>,
    /// Whether submits may be handed to this worker: it runs, and its last
    /// claim found no more ready jobs than it asked for.
    drained: AtomicBool,
}

/// Slots of a worker taken for submits ([`Worker::take_slots`]).
pub struct Slots {
    /// The lease the submits are stored under.
    pub lease: SubmitLease,
    /// One per submit that may be handed over.
    pub permits: Vec<OwnedSemaphorePermit>,
}

impl Worker {
    /// A worker with a fresh owner id, not yet running.
    pub fn new(deps: WorkerDeps) -> Arc<Worker> {
        let (tx, rx) = mpsc::channel(4096);
        let capacity = Arc::new(Semaphore::new(
            deps.config.async_queue.worker_concurrency as usize,
        ));
        Arc::new(Worker {
            owner: format!("w-{}", new_id(12)),
            deps,
            running: Mutex::new(HashMap::new()),
            capacity,
            completions: tx,
            inbox: Mutex::new(Some(rx)),
            drained: AtomicBool::new(false),
        })
    }

    /// Takes free slots for up to `n` submits, to store them already leased
    /// to this worker and run them at once ([`Worker::start`]), instead of
    /// queueing each for a claim: one write per job fewer, and no wait.
    ///
    /// Only while this worker runs and its last claim succeeded and left no
    /// ready job behind, so a hand-off does not overtake the queue, bar
    /// jobs queued since that claim (by another process, or while this
    /// worker was full), which its next claim takes. None otherwise.
    pub fn take_slots(&self, n: usize) -> Option<Slots> {
        if n == 0 || !self.drained.load(Ordering::Acquire) {
            return None;
        }
        let permits: Vec<_> = (0..n)
            .map_while(|_| self.capacity.clone().try_acquire_owned().ok())
            .collect();
        if permits.is_empty() {
            return None;
        }
        let lease_ms = self.deps.config.async_queue.lease_ms as i64;
        Some(Slots {
            lease: SubmitLease {
                owner: self.owner.clone(),
                until: Timestamp(now_ms() + lease_ms),
            },
            permits,
        })
    }

    /// Runs the attempt of `lease` in a slot of this worker.
    pub fn start(self: &Arc<Self>, lease: Lease, permit: OwnedSemaphorePermit) {
        let cancel = Arc::new(Notify::new());
        if let Ok(mut r) = self.running.lock() {
            r.insert(lease.job.id.clone(), cancel.clone());
        }
        let this = self.clone();
        tokio::spawn(async move {
            this.run_job(lease, cancel).await;
            drop(permit);
        });
    }

    /// Runs every loop until `shutdown` resolves, then lets running
    /// attempts finish (up to the drain timeout). A worker runs once.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()> + Send + 'static) {
        let worker = self;
        let Some(completions) = worker.inbox.lock().ok().and_then(|mut i| i.take()) else {
            tracing::error!(worker = %worker.owner, "async worker started twice");
            return;
        };
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let stop = move || {
            let mut rx = stop_rx.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        // The heartbeat outlives the claim loop: attempts that run on while
        // the worker drains keep their leases (and hear cancels) until they
        // end, instead of being rescued and run again elsewhere.
        let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
        tracing::info!(worker = %worker.owner, "async worker started");
        let d = &worker.deps;
        let poll = Duration::from_millis(d.config.async_queue.poll_ms);
        let mut tasks = vec![
            tokio::spawn(worker.clone().completer(completions)),
            tokio::spawn(worker.clone().heartbeat(async {
                let _ = drained_rx.await;
            })),
            tokio::spawn(worker.clone().sweeper(stop())),
            tokio::spawn(d.webhooks.clone().run(d.signals.clone(), poll, stop())),
        ];
        let url = d.config.effective_database_url();
        if url.starts_with("postgres") {
            tasks.push(tokio::spawn(listen(url, d.signals.clone())));
        }
        let claim = worker.clone().claim_loop(stop());
        let trigger = async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        };
        tokio::join!(claim, trigger);
        worker.drained.store(false, Ordering::Release);
        let drain = Duration::from_secs(worker.deps.config.drain_timeout_s);
        let all = worker.deps.config.async_queue.worker_concurrency;
        let drained = tokio::time::timeout(drain, worker.capacity.acquire_many(all)).await;
        // No slot for anyone from now on: a submit that read `drained`
        // before the store above cannot hand a job to a stopped worker.
        worker.capacity.close();
        let _ = drained_tx.send(());
        match drained {
            Ok(_) => tracing::info!(worker = %worker.owner, "async worker drained"),
            Err(_) => tracing::warn!(
                worker = %worker.owner,
                "async worker drain timed out; unfinished jobs will be rescued after their lease"
            ),
        }
        for t in tasks {
            t.abort();
        }
        tracing::info!(worker = %worker.owner, "async worker stopped");
    }

    async fn claim_loop(self: Arc<Self>, stop: impl Future<Output = ()>) {
        let q = &self.deps.config.async_queue;
        let poll = Duration::from_millis(q.poll_ms);
        // Under a backlog, a claim for the one slot an attempt just freed is
        // a whole transaction for one job: gather a few freed slots first.
        let gather = (q.claim_batch.min(q.worker_concurrency) / 4).max(1);
        let mut backlog = false;
        tokio::pin!(stop);
        loop {
            let mut free = self.capacity.available_permits() as u32;
            if free == 0 {
                // Wait for a running attempt to end.
                tokio::select! {
                    p = self.capacity.acquire() => drop(p),
                    _ = &mut stop => return,
                }
                continue;
            }
            if backlog && free < gather {
                tokio::select! {
                    _ = tokio::time::sleep(CLAIM_GATHER) => {}
                    _ = &mut stop => return,
                }
                free = self.capacity.available_permits() as u32;
                if free == 0 {
                    continue;
                }
            }
            // Slots first: a submit handed over meanwhile cannot take the
            // slot of a job this claim leases.
            let permits: Vec<_> = (0..free.min(q.claim_batch))
                .map_while(|_| self.capacity.clone().try_acquire_owned().ok())
                .collect();
            let want = permits.len() as u32;
            if want == 0 {
                continue;
            }
            let now = Timestamp::now();
            let until = Timestamp(now.0 + q.lease_ms as i64);
            let claimed = match self
                .deps
                .store
                .claim_jobs(&self.owner, now, until, want)
                .await
            {
                Ok(c) => Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "claiming async jobs failed");
                    None
                }
            };
            // Unknown after a failed claim: no hand-off until one succeeds.
            let drained = claimed.as_ref().is_some_and(|c| (c.len() as u32) < want);
            self.drained.store(drained, Ordering::Release);
            let claimed = claimed.unwrap_or_default();
            let got = claimed.len() as u32;
            backlog = got == want;
            for (lease, permit) in claimed.into_iter().zip(permits) {
                self.start(lease, permit);
            }
            if got == want {
                continue;
            }
            tokio::select! {
                _ = self.deps.signals.work.notified() => {}
                _ = tokio::time::sleep(poll) => {}
                _ = &mut stop => return,
            }
        }
    }

    async fn run_job(self: Arc<Self>, lease: Lease, cancel: Arc<Notify>) {
        let job = &lease.job;
        // The line written for every job is written by `lifecycle`, in the
        // shape of a line in this span. The span itself exists around the
        // model call only when this module logs at debug, and is made for
        // the rare lines below.
        let debug_span = tracing::debug_span!(
            "async.attempt",
            trace_id = %job.id,
            request_id = %job.id,
            model = %job.model_id,
            attempt = job.attempts,
        );
        let m = &self.deps.metrics;
        if job.attempts == 1 {
            m.async_time_in_queue
                .get_or_create(&ModelLabels {
                    model: crate::telemetry::metrics::Label::new(&job.model_id),
                })
                .observe((now_ms() - job.created_at.0).max(0) as f64 / 1000.0);
        }
        let target = self
            .deps
            .catalog
            .resolve(&Selector::Version {
                version: job.version_id.clone(),
            })
            .await;
        let capped = matches!(&target, Ok(t) if t.version.max_concurrency.is_some());
        let attempt = async {
            let target = match target {
                Ok(t) => t,
                Err(ResolveError::NotFound(m)) => {
                    return Attempt::Fatal(JobError::new(JobErrorCode::ModelNotFound, m))
                }
                Err(ResolveError::Store(e)) => {
                    return Attempt::Retryable(JobError::new(JobErrorCode::Internal, e.to_string()))
                }
            };
            tokio::select! {
                biased;
                _ = cancel.notified() => Attempt::Canceled,
                a = self.attempt(job, &target) => a,
            }
        }
        .instrument(debug_span)
        .await;
        let mut errors = job.errors.clone();
        let (outcome, label) = match attempt {
            Attempt::Succeeded(out) => (Outcome::Succeeded(out), "succeeded"),
            Attempt::Canceled => (Outcome::Canceled, "canceled"),
            Attempt::Fatal(e) => {
                errors.push(e);
                (Outcome::Failed, "failed")
            }
            Attempt::Retryable(e) => {
                errors.push(e);
                if job.attempts < job.retry.max_attempts {
                    let delay = jittered(job.retry.base_delay_ms(job.attempts));
                    let at = Timestamp(now_ms() + delay as i64);
                    (Outcome::Retry(at), "retry")
                } else {
                    (Outcome::Failed, "failed")
                }
            }
        };
        m.async_attempt(&job.model_id, label);
        let retry_at = match &outcome {
            Outcome::Retry(at) => Some(*at),
            _ => None,
        };
        let (tx, rx) = oneshot::channel();
        let finish = Finish {
            id: job.id.clone(),
            token: lease.token,
            outcome,
            errors,
            capped,
        };
        let applied =
            self.completions.send((finish, tx)).await.is_ok() && rx.await.unwrap_or(false);
        if let Ok(mut r) = self.running.lock() {
            r.remove(&job.id);
        }
        let span = || lifecycle::attempt_span(&job.id, &job.model_id, job.attempts);
        if !applied {
            span().in_scope(|| {
                tracing::warn!(
                    "the lease was lost before the result was recorded; result discarded"
                )
            });
        } else if let Some(at) = retry_at {
            span().in_scope(|| tracing::info!(outcome = label, "async attempt will be retried"));
            self.deps.signals.wake_work_at(at);
        } else {
            lifecycle::finished(&job.id, &job.model_id, job.attempts, label);
            if job.webhook_url.is_some() {
                self.deps.signals.deliveries.notify_one();
            }
        }
        // A slot of a capped version is free again: jobs of it may now be
        // claimed. (This worker's own freed slot wakes the claim loop when
        // it waits for one.)
        if capped {
            self.deps.signals.work.notify_one();
        }
    }

    /// Writes outcomes in batches; a batch that cannot be written is tried
    /// again (the leases are renewed meanwhile, so nothing is rescued).
    async fn completer(self: Arc<Self>, mut rx: mpsc::Receiver<Completion>) {
        let retention = self.deps.config.async_queue.retention_s as i64 * 1000;
        let mut batch: Vec<Completion> = Vec::with_capacity(256);
        while let Some(first) = rx.recv().await {
            batch.push(first);
            while batch.len() < 256 {
                match rx.try_recv() {
                    Ok(c) => batch.push(c),
                    Err(_) => break,
                }
            }
            let items: Vec<Finish> = batch.iter().map(|(f, _)| f.clone()).collect();
            let mut backoff = Duration::from_millis(50);
            let applied = loop {
                let now = Timestamp::now();
                match self
                    .deps
                    .store
                    .finish_jobs(&items, now, Timestamp(now.0 + retention))
                    .await
                {
                    Ok(a) => break a,
                    Err(e) => {
                        tracing::warn!(error = %e, jobs = items.len(), "recording async outcomes failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(2));
                    }
                }
            };
            for ((_, ack), ok) in batch.drain(..).zip(applied) {
                let _ = ack.send(ok);
            }
        }
    }

    /// Renews the leases of the attempts running here every `heartbeat_ms`
    /// (and at once on a cancel signal); aborts those whose owners asked for
    /// a cancel. Only those: a job stored leased to this worker that it never
    /// started (its submit's batch failed as far as it could tell) loses its
    /// lease and is rescued.
    async fn heartbeat(self: Arc<Self>, stop: impl Future<Output = ()>) {
        let q = &self.deps.config.async_queue;
        let period = Duration::from_millis(q.heartbeat_ms);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = self.deps.signals.cancel.notified() => {}
                _ = &mut stop => return,
            }
            let until = Timestamp(now_ms() + q.lease_ms as i64);
            let ids: Vec<String> = match self.running.lock() {
                Ok(r) => r.keys().cloned().collect(),
                Err(_) => continue,
            };
            if ids.is_empty() {
                continue;
            }
            match self.deps.store.heartbeat(&self.owner, &ids, until).await {
                Ok(cancels) => {
                    let Ok(running) = self.running.lock() else {
                        continue;
                    };
                    for id in cancels {
                        if let Some(n) = running.get(&id) {
                            n.notify_one();
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "async heartbeat failed"),
            }
        }
    }

    /// Deadlines, lost leases, retention and depth gauges. Every worker
    /// runs one; each step is idempotent.
    async fn sweeper(self: Arc<Self>, stop: impl Future<Output = ()>) {
        let d = &self.deps;
        let period = Duration::from_millis(d.config.async_queue.sweep_ms);
        let retention = d.config.async_queue.retention_s as i64 * 1000;
        let mut shown: HashSet<QueueLabels> = HashSet::new();
        let mut round: u64 = 0;
        tokio::pin!(stop);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = &mut stop => return,
            }
            round += 1;
            let now = Timestamp::now();
            let retain = Timestamp(now.0 + retention);
            match d.store.expire_overdue(now, retain).await {
                Ok(ids) if !ids.is_empty() => {
                    for id in &ids {
                        tracing::info!(trace_id = %id, request_id = %id, "async request expired in the queue");
                    }
                    d.signals.deliveries.notify_one();
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "expiring async jobs failed"),
            }
            match d.store.rescue_expired_leases(now, retain).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::warn!(jobs = n, "rescued async jobs whose worker lost its lease");
                    d.signals.work.notify_one();
                    d.signals.deliveries.notify_one();
                }
                Err(e) => tracing::warn!(error = %e, "rescuing async jobs failed"),
            }
            if round.is_multiple_of(60) {
                if let Err(e) = d.store.purge_expired(now).await {
                    tracing::warn!(error = %e, "purging finished async jobs failed");
                }
            }
            if let Ok(depth) = d.store.depth_by_model().await {
                let mut seen = HashSet::new();
                for (model, status, n) in depth {
                    let l = QueueLabels {
                        model,
                        status: status.as_str().to_owned(),
                    };
                    d.metrics.async_queue_depth.get_or_create(&l).set(n as i64);
                    seen.insert(l);
                }
                for gone in shown.difference(&seen) {
                    d.metrics.async_queue_depth.get_or_create(gone).set(0);
                }
                shown = seen;
            }
        }
    }
}

async fn listen(url: String, signals: Arc<Signals>) {
    loop {
        let s = signals.clone();
        let result = warder_store::listen_queue_events(&url, move |e| match e {
            warder_store::QueueEvent::Work => s.work.notify_one(),
            warder_store::QueueEvent::Cancel => s.cancel.notify_one(),
        })
        .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, "queue LISTEN connection failed; polling until it is back");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

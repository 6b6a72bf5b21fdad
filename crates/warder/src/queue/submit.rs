//! Group commit of async submits: concurrent submits are stored together, in
//! one transaction per batch, by one task.
//!
//! A submit is answered 201 only after its job is committed, so batching
//! changes no guarantee; it changes the cost. Each commit rewrites the pages
//! of the jobs table and of its indexes, and SQLite takes one writer at a
//! time: one job per transaction spent most of a submit's CPU zeroing and
//! writing WAL frames, with the pool's connections queueing on the write
//! lock. Here a submit goes in the next batch, which leaves as soon as fewer
//! than [`COMMITS_IN_FLIGHT`] batches are committing; under light load a
//! batch is a single job, so latency is that of a plain insert.
//!
//! The same task hands submits to the worker of this process while it has
//! free slots and no backlog ([`Worker::take_slots`]): they are stored
//! already leased to it and started once committed, without waiting for a
//! claim, which on PostgreSQL was a third of the writes per job.

use crate::queue::worker::Worker;
use crate::queue::Signals;
use crate::telemetry::lifecycle;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use warder_core::{Enqueued, NewJob, RequestId, Store, StoreError, StoreResult};

/// Most jobs in one transaction.
const MAX_BATCH: usize = 512;

/// Batches being committed at once. While one waits for its commit (on
/// PostgreSQL, a round trip and a WAL flush), the next is already sent,
/// instead of every submit waiting for the batch ahead of it. On SQLite the
/// second waits for the one writer connection, which costs nothing
/// measurable. `bench/`, async on PostgreSQL: 9.9 k → 10.2 k jobs/s.
const COMMITS_IN_FLIGHT: u32 = 2;

/// A submit waiting for its batch: the job, whether it may be handed to the
/// local worker (its version has no `max_concurrency`, which only a claim
/// checks across workers), and the trace the submit came in on.
type Pending = (
    NewJob,
    bool,
    RequestId,
    oneshot::Sender<StoreResult<Enqueued>>,
);

/// The submitting side, held by the request handlers; cheap to clone.
#[derive(Clone)]
pub struct Submitter {
    tx: mpsc::Sender<Pending>,
}

/// Where stored submits go next.
struct Next {
    /// Wakes this process's claim loop for queued jobs.
    signals: Arc<Signals>,
    /// The worker of this process, if it runs one: submits it has free
    /// slots for are handed to it.
    worker: Option<Arc<Worker>>,
}

impl Submitter {
    /// Starts the committing task over `store`. It ends when every
    /// `Submitter` is dropped, after storing what was sent.
    pub fn start(
        store: Arc<dyn Store>,
        signals: Arc<Signals>,
        worker: Option<Arc<Worker>>,
    ) -> Submitter {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(commit_batches(store, Next { signals, worker }, rx));
        Submitter { tx }
    }

    /// Stores `job` (or finds the owner's earlier one with its idempotency
    /// key) and answers once it is committed. A new job is queued, or, when
    /// `may_hand_off` and the local worker has a free slot and no backlog,
    /// stored leased to that worker and started at once. `trace` is the
    /// trace of the submit, named in the job's "async request queued" line.
    pub async fn enqueue(
        &self,
        job: NewJob,
        may_hand_off: bool,
        trace: RequestId,
    ) -> StoreResult<Enqueued> {
        let (done, answer) = oneshot::channel();
        self.tx
            .send((job, may_hand_off, trace, done))
            .await
            .map_err(|_| stopped())?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the submit queue has stopped".into())
}

async fn commit_batches(store: Arc<dyn Store>, next: Next, mut rx: mpsc::Receiver<Pending>) {
    let next = Arc::new(next);
    let slots = Arc::new(tokio::sync::Semaphore::new(COMMITS_IN_FLIGHT as usize));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        // `recv_many` waits for the first submit, then takes every one
        // already waiting: those that arrived while the batches in flight
        // committed.
        let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
        if rx.recv_many(&mut batch, MAX_BATCH).await == 0 {
            break;
        }
        let (store, next) = (store.clone(), next.clone());
        tokio::spawn(async move {
            commit(&*store, &next, batch).await;
            drop(permit);
        });
    }
    // Every batch taken is stored and answered before the task ends.
    let _ = slots.acquire_many(COMMITS_IN_FLIGHT).await;
}

/// Stores one batch and answers each of its submits.
async fn commit(store: &dyn Store, next: &Next, batch: Vec<Pending>) {
    let mut jobs = Vec::with_capacity(batch.len());
    let mut answers = Vec::with_capacity(batch.len());
    let mut eligible = Vec::new();
    for (job, may_hand_off, trace, answer) in batch {
        if may_hand_off {
            eligible.push(jobs.len());
        }
        jobs.push(job);
        answers.push((trace, answer));
    }
    // The first eligible jobs in priority order, up to the worker's free
    // slots, are stored leased to it; each keeps its slot in `permits`.
    eligible.sort_by_key(|&i| jobs[i].priority);
    let mut permits: Vec<_> = (0..jobs.len()).map(|_| None).collect();
    let slots = next
        .worker
        .as_ref()
        .and_then(|w| w.take_slots(eligible.len()));
    if let Some(slots) = slots {
        for (i, permit) in eligible.into_iter().zip(slots.permits) {
            jobs[i].lease = Some(slots.lease.clone());
            permits[i] = Some(permit);
        }
    }
    let results = match store.enqueue_jobs(&jobs).await {
        Ok(results) if results.len() == jobs.len() => results,
        Ok(_) => {
            let e = StoreError::Other("the store answered a batch of the wrong size".into());
            (0..jobs.len()).map(|_| Err(e.clone())).collect()
        }
        // Nothing of the batch was stored: every submit of it fails alike.
        Err(e) => (0..jobs.len()).map(|_| Err(e.clone())).collect(),
    };
    let mut queued = false;
    for (((job, (trace, answer)), permit), result) in
        jobs.iter().zip(answers).zip(permits).zip(results)
    {
        if let Ok(Enqueued::Created(id)) = &result {
            // The queue phase of the request's life, under its trace id
            // like each attempt (`async.attempt`) and delivery
            // (`async.webhook`); logged before an attempt can start.
            lifecycle::queued(id, trace.hex().as_str(), &job.model_id);
            match (job.leased(), permit, &next.worker) {
                (Some(lease), Some(permit), Some(worker)) => worker.start(lease, permit),
                _ => queued = true,
            }
        }
        // A slot of a submit not stored (a replay, an error) is freed
        // with its permit here.
        let _ = answer.send(result);
    }
    if queued {
        next.signals.work.notify_one();
    }
}

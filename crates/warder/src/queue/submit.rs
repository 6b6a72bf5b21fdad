//! Group commit of async submits: concurrent submits are stored together, in
//! one transaction, by one task.
//!
//! A submit is answered 201 only after its job is committed, so batching
//! changes no guarantee; it changes the cost. Each commit rewrites the pages
//! of the jobs table and of its indexes, and SQLite takes one writer at a
//! time: one job per transaction spent most of a submit's CPU zeroing and
//! writing WAL frames, with the pool's connections queueing on the write
//! lock. Here a submit waits for the batch in flight to commit (when there is
//! one) and goes in the next; under light load a batch is a single job, so
//! latency is that of a plain insert.

use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use warder_core::{Enqueued, NewJob, Store, StoreError, StoreResult};

/// Most jobs in one transaction.
const MAX_BATCH: usize = 512;

type Pending = (NewJob, oneshot::Sender<StoreResult<Enqueued>>);

/// The submitting side, held by the request handlers; cheap to clone.
#[derive(Clone)]
pub struct Submitter {
    tx: mpsc::Sender<Pending>,
}

impl Submitter {
    /// Starts the committing task over `store`. It ends when every
    /// `Submitter` is dropped, after storing what was sent.
    pub fn start(store: Arc<dyn Store>) -> Submitter {
        let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(commit_batches(store, rx));
        Submitter { tx }
    }

    /// Stores `job` (or finds the owner's earlier one with its idempotency
    /// key) and answers once it is committed.
    pub async fn enqueue(&self, job: NewJob) -> StoreResult<Enqueued> {
        let (done, answer) = oneshot::channel();
        self.tx.send((job, done)).await.map_err(|_| stopped())?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the submit queue has stopped".into())
}

async fn commit_batches(store: Arc<dyn Store>, mut rx: mpsc::Receiver<Pending>) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    // `recv_many` waits for the first submit, then takes every one already
    // waiting: those that arrived while the previous batch committed.
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (jobs, answers): (Vec<NewJob>, Vec<_>) = batch.drain(..).unzip();
        let count = jobs.len();
        match store.enqueue_jobs(jobs).await {
            Ok(results) if results.len() == count => {
                for (answer, result) in answers.into_iter().zip(results) {
                    let _ = answer.send(result);
                }
            }
            Ok(_) => {
                let e = StoreError::Other("the store answered a batch of the wrong size".into());
                for answer in answers {
                    let _ = answer.send(Err(e.clone()));
                }
            }
            // Nothing of the batch was stored: every submit of it fails alike.
            Err(e) => {
                for answer in answers {
                    let _ = answer.send(Err(e.clone()));
                }
            }
        }
    }
}

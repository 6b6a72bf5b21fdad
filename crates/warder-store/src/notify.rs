//! Cross-process wake-ups of the job queue: PostgreSQL `LISTEN` on the
//! channel the queue `NOTIFY`s: from `queue/writes.rs` for a submit batch
//! that queued a job and for freed slots, from row triggers for a job
//! queued again and a cancel asked for (see the async migrations).
//!
//! SQLite has no such channel; its workers are woken in process and poll
//! otherwise. Nothing here decides what a wake-up means.

use crate::sql::map_err;
use warder_core::StoreResult;

/// What a notification says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueEvent {
    /// A job may be ready, or a slot was freed.
    Work,
    /// A running job's owner asked to cancel it.
    Cancel,
}

/// Listens on PostgreSQL at `url` and calls `on_event` for every queue
/// notification until the connection fails for good. After a reconnect
/// (notifications may have been missed meanwhile) both events are reported.
pub async fn listen_queue_events(
    url: &str,
    mut on_event: impl FnMut(QueueEvent) + Send,
) -> StoreResult<()> {
    let mut listener = sqlx::postgres::PgListener::connect(url)
        .await
        .map_err(map_err)?;
    listener.listen("warder_async").await.map_err(map_err)?;
    loop {
        match listener.try_recv().await.map_err(map_err)? {
            Some(n) if n.payload() == "cancel" => on_event(QueueEvent::Cancel),
            Some(_) => on_event(QueueEvent::Work),
            None => {
                on_event(QueueEvent::Work);
                on_event(QueueEvent::Cancel);
            }
        }
    }
}

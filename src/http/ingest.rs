//! Group commit of webhook deliveries: every verified delivery is stored before it is
//! acknowledged, and concurrent ones share a transaction.
//!
//! A request hands its delivery to one writer task and waits for the answer. The writer takes
//! whatever has queued up while the previous group committed (at most
//! [`store::MAX_WEBHOOKS_PER_INSERT`]), stores it with one multi-row INSERT in one transaction,
//! and only then tells each request it may answer 200. One delivery alone costs what it cost
//! before (BEGIN, INSERT, COMMIT); a burst of a hundred costs about the same, where it used
//! to cost a hundred transactions competing for SQLite's one write lock.
//!
//! The queue is bounded: when the store falls behind, requests wait for room (and the vendor's
//! timeout), they are never answered 200 unstored.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::metrics::Metrics;
use crate::store::{self, NewWebhook, Store};

/// Deliveries waiting for the writer, at most.
const QUEUE: usize = 4096;

/// The handle requests store through (cheap to clone).
#[derive(Clone)]
pub struct Ingest {
    queue: mpsc::Sender<Pending>,
    metrics: Arc<Metrics>,
}

struct Pending {
    delivery: NewWebhook,
    stored: oneshot::Sender<Result<(), String>>,
}

impl Ingest {
    /// Starts the writer task. It ends when the last handle is dropped, after storing what
    /// was handed to it.
    pub fn start(store: Store, metrics: Arc<Metrics>) -> Ingest {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_groups(store, metrics.clone(), rx));
        Ingest { queue, metrics }
    }

    /// Stores one delivery; `Ok` once it is committed.
    pub async fn store(&self, delivery: NewWebhook) -> Result<(), String> {
        // Counted down on drop: a request whose client hung up is dropped mid-wait.
        let _waiting = Waiting::new(&self.metrics);
        let (stored, answer) = oneshot::channel();
        self.queue
            .send(Pending { delivery, stored })
            .await
            .map_err(|_| "the webhook writer has stopped".to_string())?;
        answer.await.map_err(|_| "the webhook writer stopped before storing it".to_string())?
    }
}

/// One delivery counted in `recado_webhooks_storing` for as long as it lives.
struct Waiting<'a>(&'a Metrics);

impl<'a> Waiting<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.webhooks_storing.inc();
        Waiting(metrics)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.webhooks_storing.dec();
    }
}

async fn write_groups(store: Store, metrics: Arc<Metrics>, mut rx: mpsc::Receiver<Pending>) {
    let mut group = Vec::new();
    while rx.recv_many(&mut group, store::MAX_WEBHOOKS_PER_INSERT).await > 0 {
        let (deliveries, answers): (Vec<NewWebhook>, Vec<_>) = group.drain(..).map(|p| (p.delivery, p.stored)).unzip();
        let outcome = async {
            let mut tx = store.begin().await?;
            store::insert_webhooks(&mut tx, &deliveries).await?;
            tx.commit().await
        }
        .await
        .map_err(|e| e.to_string());
        match &outcome {
            Ok(()) => {
                metrics.webhook_commits.inc();
            }
            Err(e) => warn!(deliveries = deliveries.len(), "could not store webhook deliveries: {e}"),
        };
        for stored in answers {
            // A request that gave up waiting no longer listens; its delivery is stored anyway
            // (or not), and the vendor sends it again either way.
            let _ = stored.send(outcome.clone());
        }
    }
}

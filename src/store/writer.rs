//! Batched CDR writing, off the call path.
//!
//! A call hands its CDR to the [`CdrQueue`] and moves on; the [`CdrWriter`] actor drains the
//! queue in batches, one transaction each. The queue and the batch being written live outside
//! the actor, so a writer that fails and is restarted by its supervisor resumes exactly where
//! it stopped: a CDR is removed from memory only after its transaction committed, and a batch
//! retried after an uncertain commit is de-duplicated by the store (one row per call id).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::{mpsc, Mutex};

use super::{Cdr, Store};
use crate::telemetry;

/// Hand-off point between calls and the [`CdrWriter`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct CdrQueue {
    tx: mpsc::Sender<Cdr>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    rx: Mutex<mpsc::Receiver<Cdr>>,
    /// The batch being written; cleared only after it committed.
    batch: Mutex<Vec<Cdr>>,
    /// CDRs submitted and not yet committed.
    outstanding: AtomicU64,
    /// Where each CDR is also handed (the CDR webhook), never waited on.
    tap: std::sync::OnceLock<mpsc::Sender<Cdr>>,
}

impl CdrQueue {
    /// A queue holding up to `capacity` CDRs before [`submit`](Self::submit) waits.
    pub fn new(capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        Self {
            tx,
            shared: Arc::new(Shared {
                rx: Mutex::new(rx),
                batch: Mutex::new(Vec::new()),
                outstanding: AtomicU64::new(0),
                tap: std::sync::OnceLock::new(),
            }),
        }
    }

    /// Queues a CDR. Returns at once unless the queue is full (the store is far behind),
    /// in which case it waits for room rather than drop the record.
    pub async fn submit(&self, cdr: Cdr) {
        if let Some(tap) = self.shared.tap.get() {
            if tap.try_send(cdr.clone()).is_err() {
                tracing::warn!(call_id = %cdr.call_id,
                    "CDR tap full: the call's app and request limits not told of its end");
            }
        }
        self.shared.outstanding.fetch_add(1, Ordering::Relaxed);
        let cdr = match self.tx.try_send(cdr) {
            Ok(()) => return,
            Err(mpsc::error::TrySendError::Full(cdr)) => cdr,
            // The receiver lives in `shared`, which this queue keeps alive.
            Err(mpsc::error::TrySendError::Closed(_)) => unreachable!("CDR queue receiver dropped"),
        };
        tracing::warn!("CDR queue full; waiting for the store");
        if self.tx.send(cdr).await.is_err() {
            unreachable!("CDR queue receiver dropped");
        }
    }

    /// Hands every CDR submitted from now on to `tap` as well (the call's app, the request
    /// limits); a full tap loses the copy (logged), never the stored record.
    pub fn set_tap(&self, tap: mpsc::Sender<Cdr>) -> Result<(), crate::once::SetTwice> {
        crate::once::set(&self.shared.tap, tap, "the CDR tap")
    }

    /// CDRs submitted and not yet committed to the store.
    pub fn outstanding(&self) -> u64 {
        self.shared.outstanding.load(Ordering::Relaxed)
    }

    /// Removes every CDR not yet committed (queued and in the current batch), for a final
    /// spill when the store cannot be reached at shutdown.
    pub async fn take_all(&self) -> Vec<Cdr> {
        let mut out = std::mem::take(&mut *self.shared.batch.lock().await);
        let mut rx = self.shared.rx.lock().await;
        while let Ok(cdr) = rx.try_recv() {
            out.push(cdr);
        }
        self.shared
            .outstanding
            .fetch_sub(out.len() as u64, Ordering::Relaxed);
        out
    }
}

/// Writes queued CDRs to the store in batches. A supervised service actor.
pub struct CdrWriter;

/// What the [`CdrWriter`] needs; kept by its supervisor to restart it.
#[derive(Clone, Debug)]
pub struct CdrWriterArgs {
    /// Where CDRs go.
    pub store: Store,
    /// Where they come from.
    pub queue: CdrQueue,
    /// Most CDRs per transaction.
    pub batch_size: usize,
    /// Longest a CDR waits before it is written.
    pub flush_interval: Duration,
    /// Where CDRs the store refuses for good are saved (JSON lines), so one bad record never
    /// blocks the others.
    pub reject_dir: std::path::PathBuf,
    /// The CDR webhook, when configured: each CDR is stored with its outbox row for it, and
    /// the sender woken once the batch committed.
    pub webhook: Option<super::webhook::CdrWebhook>,
}

/// A batch that failed this many times in a row is written row by row, to find a record the
/// store refuses (as opposed to a store that is down, which fails every row).
const ISOLATE_AFTER_FAILURES: u32 = 3;

/// Messages of [`CdrWriter`].
#[derive(Debug)]
pub enum CdrWriterMsg {
    /// Write what is queued, then schedule the next pump.
    Pump,
    /// Write everything queued now and reply with the number written, or the error that
    /// stopped the flush.
    Flush(RpcReplyPort<Result<u64, String>>),
    /// Fails the writer (supervision tests).
    #[cfg(test)]
    Crash,
}

/// State of a running [`CdrWriter`].
pub struct WriterState {
    args: CdrWriterArgs,
    consecutive_failures: u32,
}

impl Actor for CdrWriter {
    type Msg = CdrWriterMsg;
    type State = WriterState;
    type Arguments = CdrWriterArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: CdrWriterArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_message(CdrWriterMsg::Pump)?;
        Ok(WriterState {
            args,
            consecutive_failures: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CdrWriterMsg::Pump => {
                let delay = state.pump().await;
                if delay.is_zero() {
                    myself.send_message(CdrWriterMsg::Pump)?;
                } else {
                    myself.send_after(delay, || CdrWriterMsg::Pump);
                }
            }
            CdrWriterMsg::Flush(reply) => {
                let result = state.flush().await;
                let _ = reply.send(result);
            }
            #[cfg(test)]
            CdrWriterMsg::Crash => panic!("CDR writer crash requested by a test"),
        }
        Ok(())
    }
}

impl WriterState {
    /// Waits for CDRs and writes one batch: once the first arrives, the batch is written
    /// when it is full or the first has waited the flush interval, so a busy node writes
    /// few large transactions rather than one per call. Returns how long to wait before
    /// the next pump (zero unless the store is failing).
    async fn pump(&mut self) -> Duration {
        let shared = Arc::clone(&self.args.queue.shared);
        let mut batch = shared.batch.lock().await;
        if batch.is_empty() {
            let mut rx = shared.rx.lock().await;
            let size = self.args.batch_size;
            let _ = tokio::time::timeout(self.args.flush_interval, rx.recv_many(&mut batch, size))
                .await;
            if !batch.is_empty() {
                let deadline = tokio::time::Instant::now() + self.args.flush_interval;
                while batch.len() < size {
                    let room = size - batch.len();
                    match tokio::time::timeout_at(deadline, rx.recv_many(&mut batch, room)).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            }
        }
        if batch.is_empty() {
            return Duration::ZERO;
        }
        if self.consecutive_failures >= ISOLATE_AFTER_FAILURES {
            self.isolate(&mut batch).await;
            if batch.is_empty() {
                return Duration::ZERO;
            }
        }
        match self.write(&mut batch).await {
            Ok(()) => Duration::ZERO,
            Err(e) => {
                self.consecutive_failures += 1;
                let delay = backoff(self.consecutive_failures);
                tracing::warn!(error = %e, pending = batch.len(), retry_in_ms = delay.as_millis() as u64,
                    "CDR batch not written; retrying");
                delay
            }
        }
    }

    /// Writes `batch` and empties it on success.
    async fn write(&mut self, batch: &mut Vec<Cdr>) -> Result<(), String> {
        match self.insert(batch).await {
            Ok(_) => {
                let n = batch.len() as u64;
                batch.clear();
                self.settled(n, n);
                Ok(())
            }
            Err(e) => {
                metrics::counter!(telemetry::CDR_WRITE_ERRORS_TOTAL).increment(1);
                Err(e.to_string())
            }
        }
    }

    /// Writes `batch` one record at a time. Records that fail while others succeed are
    /// refused by the store itself: they are saved to a file and removed. If every record
    /// fails, the store is down and the batch is kept for the next retry.
    async fn isolate(&mut self, batch: &mut Vec<Cdr>) {
        let mut kept = Vec::new();
        let mut refused = Vec::new();
        let mut written = 0u64;
        for cdr in batch.drain(..) {
            match self.insert(std::slice::from_ref(&cdr)).await {
                Ok(_) => written += 1,
                Err(e) => {
                    tracing::debug!(call_id = %cdr.call_id, error = %e, "CDR refused on its own");
                    kept.push(cdr);
                }
            }
        }
        if written > 0 {
            // The store works: what still fails is refused for good.
            refused = std::mem::take(&mut kept);
        }
        let done = written + refused.len() as u64;
        if done > 0 {
            self.settled(done, written);
        }
        if !refused.is_empty() {
            metrics::counter!(telemetry::CDRS_REJECTED_TOTAL).increment(refused.len() as u64);
            let path = self
                .args
                .reject_dir
                .join(format!("cdr-rejected-{}.jsonl", crate::clock::now_ms()));
            match write_jsonl(&path, &refused) {
                Ok(()) => tracing::error!(cdrs = refused.len(), path = %path.display(),
                    "the store refuses these CDRs; saved to a file"),
                Err(e) => tracing::error!(cdrs = refused.len(), error = %e,
                    "the store refuses these CDRs and they could not be saved"),
            }
        }
        *batch = kept;
    }

    /// Stores `cdrs` (with their outbox rows for the webhook) in one transaction, then wakes
    /// the webhook.
    async fn insert(&self, cdrs: &[Cdr]) -> Result<u64, super::StoreError> {
        let webhook = self.args.webhook.as_ref();
        let n = self
            .args
            .store
            .insert_cdrs(cdrs, webhook.map(|w| w.owner()))
            .await?;
        if let Some(w) = webhook {
            w.wake();
        }
        Ok(n)
    }

    /// `done` records left the writer's hands, `written` of them into the store.
    fn settled(&mut self, done: u64, written: u64) {
        self.consecutive_failures = 0;
        let left = self
            .args
            .queue
            .shared
            .outstanding
            .fetch_sub(done, Ordering::Relaxed)
            .saturating_sub(done);
        metrics::counter!(telemetry::CDRS_WRITTEN_TOTAL).increment(written);
        metrics::gauge!(telemetry::CDRS_PENDING).set(left as f64);
    }

    async fn flush(&mut self) -> Result<u64, String> {
        let shared = Arc::clone(&self.args.queue.shared);
        let mut written = 0;
        loop {
            let mut batch = shared.batch.lock().await;
            if batch.is_empty() {
                let mut rx = shared.rx.lock().await;
                while batch.len() < self.args.batch_size {
                    match rx.try_recv() {
                        Ok(cdr) => batch.push(cdr),
                        Err(_) => break,
                    }
                }
            }
            if batch.is_empty() {
                return Ok(written);
            }
            let n = batch.len() as u64;
            self.write(&mut batch).await?;
            written += n;
        }
    }
}

/// Writes CDRs as JSON lines (one record per line), synced to disk.
pub fn write_jsonl(path: &std::path::Path, cdrs: &[Cdr]) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    for cdr in cdrs {
        serde_json::to_writer(&mut out, cdr)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    out.get_ref().sync_all()
}

/// 100 ms doubling per consecutive failure, at most 5 s.
fn backoff(failures: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << failures.min(6).saturating_sub(1)))
        .min(Duration::from_secs(5))
}

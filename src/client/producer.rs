//! A producer, as Kafka's and NATS's clients have: entries are sent on one long-lived
//! `Produce` stream, pipelined, batched while earlier batches are in flight (or for `linger`),
//! and acknowledged in order with their sequence numbers.
//!
//! - `send(entry)` returns once the entry is buffered (waiting while `buffer_max_entries` are),
//!   with a future of its [`Ack`]. `send_batch(entries)` sends an atomic batch as one request.
//! - A background task forms batches of up to `batch_max_entries` / `batch_max_bytes` and keeps
//!   at most `max_in_flight` of them unacknowledged.
//! - Idempotent by default: every batch carries the key (producer id, producer seq), with seq
//!   1, 2, 3... in send order. When the stream breaks or a batch fails as retryable (a leader
//!   change, a node going away), the producer reconnects (to the leader the error names, else
//!   the next endpoint) and resends every unacknowledged batch, in order, with the same keys:
//!   the cluster writes each exactly once, in order (the log holds a prefix of the pipeline).
//!   Without idempotence, such batches fail instead (their outcome is unknown).
//! - A batch that fails for good (a bad entry, a limit) fails its entries' acks; later batches
//!   go on. A batch retried for longer than the client's `retry_timeout` fails too.
//! - `flush()` waits until everything sent before it is acknowledged; `close()` flushes and
//!   ends the stream.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::{
    BACKOFF_MAX, BACKOFF_MIN, Client, ClientError, NewEntry, is_retryable, random_id, throttled,
};
use crate::proto::{self as pb, ProduceRequest, ProduceResponse, produce_response};
use crate::wire::leader_hint;

/// Requests an idempotent producer keeps in flight at most (the cluster's memory of a
/// producer's recent keys).
pub const MAX_IDEMPOTENT_IN_FLIGHT: usize = 16;

/// How a [`Producer`] batches, pipelines and retries.
#[derive(Clone, Debug)]
pub struct ProducerOptions {
    /// How long a batch waits for more entries before it is sent (when nothing forces it out
    /// sooner). Default 0: sent as soon as a request slot is free.
    pub linger: Duration,
    /// Entries per request at most. Default 1000.
    pub batch_max_entries: usize,
    /// Data bytes per request at most (one entry is always sent whole). Default 1MiB.
    pub batch_max_bytes: usize,
    /// Requests sent and not yet acknowledged at most. Default 16, which is also the most an
    /// idempotent producer uses: the cluster remembers the results of a producer's last 16
    /// keys, so that a resent key gets its own result (like Kafka's 5 batches per producer).
    pub max_in_flight: usize,
    /// Entries buffered and not yet sent at most; `send` waits beyond. Default 100000.
    pub buffer_max_entries: usize,
    /// Every request carries an idempotency key, so retries never write twice. Default true.
    pub idempotent: bool,
    /// The producer id of the keys (default: random), and the seq of the first request
    /// (default 1): a producer restarted with the same id and first seq rewrites only what is
    /// missing, if it sends the same requests.
    pub producer_id: Option<u64>,
    pub first_seq: u64,
}

impl Default for ProducerOptions {
    fn default() -> Self {
        ProducerOptions {
            linger: Duration::ZERO,
            batch_max_entries: 1000,
            batch_max_bytes: 1 << 20,
            max_in_flight: MAX_IDEMPOTENT_IN_FLIGHT,
            buffer_max_entries: 100_000,
            idempotent: true,
            producer_id: None,
            first_seq: 1,
        }
    }
}

/// An acknowledged entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    pub sequence: u64,
    pub timestamp_us: u64,
    /// The key had been written before (a retry): this is the original result.
    pub duplicate: bool,
}

type AckTx = oneshot::Sender<Result<Ack, ClientError>>;

/// A pending acknowledgement.
pub struct AckFuture(oneshot::Receiver<Result<Ack, ClientError>>);

impl std::future::Future for AckFuture {
    type Output = Result<Ack, ClientError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(stopped())))
    }
}

fn stopped() -> ClientError {
    ClientError::Rpc(Status::cancelled("the producer stopped"))
}

enum Cmd {
    /// Entries and their acks; `atomic`: one request of exactly these entries.
    Send {
        entries: Vec<(pb::EntryInput, AckTx)>,
        atomic: bool,
    },
    Flush(oneshot::Sender<()>),
}

/// Sends entries to a cluster over one pipelined stream. Cheap to share behind an `Arc`.
pub struct Producer {
    tx: mpsc::Sender<Cmd>,
    task: tokio::task::JoinHandle<()>,
}

impl Producer {
    /// Starts a producer on `client`'s endpoints.
    pub fn new(client: &Client, opts: ProducerOptions) -> Producer {
        let (tx, rx) = mpsc::channel(opts.buffer_max_entries.clamp(1, 1 << 20));
        let engine = Engine::new(client.clone(), opts);
        let task = tokio::spawn(engine.run(rx));
        Producer { tx, task }
    }

    /// Buffers one entry; the future answers once it is acknowledged (or failed).
    pub async fn send(&self, entry: NewEntry) -> Result<AckFuture, ClientError> {
        let (ack, rx) = oneshot::channel();
        let cmd = Cmd::Send {
            entries: vec![(input(entry), ack)],
            atomic: false,
        };
        self.tx.send(cmd).await.map_err(|_| stopped())?;
        Ok(AckFuture(rx))
    }

    /// Sends entries as one atomic request of their own (all written, with consecutive
    /// sequence numbers, or none); one future per entry.
    pub async fn send_batch(&self, entries: Vec<NewEntry>) -> Result<Vec<AckFuture>, ClientError> {
        let mut out = Vec::with_capacity(entries.len());
        let entries = entries
            .into_iter()
            .map(|e| {
                let (ack, rx) = oneshot::channel();
                out.push(AckFuture(rx));
                (input(e), ack)
            })
            .collect();
        self.tx
            .send(Cmd::Send {
                entries,
                atomic: true,
            })
            .await
            .map_err(|_| stopped())?;
        Ok(out)
    }

    /// Waits until every entry sent before is acknowledged or failed.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Flush(done))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())
    }

    /// Flushes, then ends the stream and the producer's task.
    pub async fn close(self) -> Result<(), ClientError> {
        self.flush().await?;
        drop(self.tx);
        self.task
            .await
            .map_err(|e| ClientError::Rpc(Status::internal(format!("the producer task: {e}"))))
    }
}

fn input(e: NewEntry) -> pb::EntryInput {
    pb::EntryInput {
        tenant: e.tenant,
        operation: e.operation as i32,
        data: e.data,
    }
}

struct Batch {
    request: ProduceRequest,
    acks: Vec<AckTx>,
    /// When it first failed as retryable (its retry deadline runs from there).
    failing_since: Option<Instant>,
    /// When it was last sent: unanswered after `request_timeout`, it is resent.
    sent_at: Instant,
}

struct Link {
    requests: mpsc::Sender<ProduceRequest>,
    answers: Streaming<ProduceResponse>,
    endpoint: String,
}

struct Engine {
    client: Client,
    opts: ProducerOptions,
    producer_id: u64,
    next_seq: u64,
    next_id: u64,
    /// Entries not yet in a request, and whether each must start an atomic request.
    buffer: VecDeque<(pb::EntryInput, AckTx)>,
    /// Atomic requests waiting behind the buffer, in order (with the buffer length before each).
    atomic: VecDeque<(usize, Vec<(pb::EntryInput, AckTx)>)>,
    buffered_since: Option<Instant>,
    in_flight: VecDeque<Batch>,
    flushes: Vec<oneshot::Sender<()>>,
    link: Option<Link>,
    /// Why the last connection attempt failed (said when a request fails for want of one).
    last_connect_error: Option<String>,
    /// Attempts made, and where, since the last answer (said when a write gives up).
    tried: super::Tried,
    backoff: Duration,
}

impl Engine {
    fn new(client: Client, opts: ProducerOptions) -> Engine {
        Engine {
            producer_id: opts.producer_id.unwrap_or_else(random_id),
            next_seq: opts.first_seq.max(1),
            next_id: 1,
            client,
            opts,
            buffer: VecDeque::new(),
            atomic: VecDeque::new(),
            buffered_since: None,
            in_flight: VecDeque::new(),
            flushes: Vec::new(),
            link: None,
            last_connect_error: None,
            tried: super::Tried::default(),
            backoff: BACKOFF_MIN,
        }
    }

    fn pending_entries(&self) -> usize {
        self.buffer.len() + self.atomic.iter().map(|(_, b)| b.len()).sum::<usize>()
    }

    async fn run(mut self, mut cmds: mpsc::Receiver<Cmd>) {
        let mut open = true;
        loop {
            self.send_ready(!open).await;
            self.answer_flushes();
            if !open && self.in_flight.is_empty() && self.pending_entries() == 0 {
                return;
            }
            let linger_left = self.linger_left();
            let room = self.pending_entries() < self.opts.buffer_max_entries;
            let timeout = self.client.opts.request_timeout;
            let overdue = self.in_flight.front().map(|b| b.sent_at + timeout);
            tokio::select! {
                cmd = cmds.recv(), if open && room => match cmd {
                    Some(Cmd::Send { entries, atomic }) => self.take(entries, atomic),
                    Some(Cmd::Flush(done)) => self.flushes.push(done),
                    None => open = false,
                },
                answer = next_answer(&mut self.link), if !self.in_flight.is_empty() => {
                    self.on_answer(answer).await;
                }
                () = tokio::time::sleep(linger_left.unwrap_or_default()), if linger_left.is_some() => {}
                () = sleep_until(overdue), if overdue.is_some() => {
                    let status = Status::deadline_exceeded(format!("no answer within {timeout:?}"));
                    self.on_failure(status).await;
                }
            }
        }
    }

    fn take(&mut self, entries: Vec<(pb::EntryInput, AckTx)>, atomic: bool) {
        if atomic {
            self.atomic.push_back((self.buffer.len(), entries));
        } else {
            if self.buffer.is_empty() {
                self.buffered_since = Some(Instant::now());
            }
            self.buffer.extend(entries);
        }
    }

    /// How long the buffer may still wait for more entries (`None`: no timer needed).
    fn linger_left(&self) -> Option<Duration> {
        if self.buffer.is_empty() || self.opts.linger.is_zero() || !self.slot_free() {
            return None;
        }
        let since = self.buffered_since?;
        Some(self.opts.linger.saturating_sub(since.elapsed()))
    }

    fn slot_free(&self) -> bool {
        self.in_flight.len() < self.max_in_flight()
    }

    fn max_in_flight(&self) -> usize {
        let max = self.opts.max_in_flight.max(1);
        if self.opts.idempotent {
            max.min(MAX_IDEMPOTENT_IN_FLIGHT)
        } else {
            max
        }
    }

    /// Sends batches while slots are free and a batch is ready (full, lingered enough, atomic,
    /// or `all`: closing).
    async fn send_ready(&mut self, all: bool) {
        while self.slot_free() {
            let batch = if let Some((0, _)) = self.atomic.front() {
                match self.atomic.pop_front() {
                    Some((_, entries)) => entries,
                    None => break,
                }
            } else if !self.buffer.is_empty() && (all || self.buffer_ready()) {
                self.cut_batch()
            } else {
                break;
            };
            self.push(batch).await;
        }
    }

    fn buffer_ready(&self) -> bool {
        let full = self.buffer.len() >= self.opts.batch_max_entries;
        let waited = self
            .buffered_since
            .is_none_or(|s| s.elapsed() >= self.opts.linger);
        // An atomic request queued behind the buffer, or a flush, pushes the buffer out.
        full || waited || !self.atomic.is_empty() || !self.flushes.is_empty()
    }

    /// Takes the next batch from the buffer (up to an atomic request's place in it).
    fn cut_batch(&mut self) -> Vec<(pb::EntryInput, AckTx)> {
        let limit = self
            .atomic
            .front()
            .map_or(usize::MAX, |(at, _)| *at)
            .min(self.opts.batch_max_entries.max(1));
        let mut out = Vec::new();
        let mut bytes = 0usize;
        while out.len() < limit {
            let Some(front) = self.buffer.front() else {
                break;
            };
            let len = front.0.data.len();
            if !out.is_empty() && bytes + len > self.opts.batch_max_bytes {
                break;
            }
            bytes += len;
            if let Some(e) = self.buffer.pop_front() {
                out.push(e);
            }
        }
        for (at, _) in &mut self.atomic {
            *at -= out.len().min(*at);
        }
        self.buffered_since = (!self.buffer.is_empty()).then(Instant::now);
        out
    }

    /// Sends a new request (keyed when idempotent) and tracks it.
    async fn push(&mut self, entries: Vec<(pb::EntryInput, AckTx)>) {
        let (inputs, acks): (Vec<_>, Vec<_>) = entries.into_iter().unzip();
        let (producer_id, producer_seq) = if self.opts.idempotent {
            let seq = self.next_seq;
            self.next_seq += 1;
            (Some(self.producer_id), Some(seq))
        } else {
            (None, None)
        };
        let request = ProduceRequest {
            id: self.next_id,
            entries: inputs,
            producer_id,
            producer_seq,
        };
        self.next_id += 1;
        self.in_flight.push_back(Batch {
            request: request.clone(),
            acks,
            failing_since: None,
            sent_at: Instant::now(),
        });
        if self.link.is_none() {
            self.connect().await;
        } else if let Some(link) = &self.link
            && link.requests.send(request).await.is_err()
        {
            self.link = None;
        }
    }

    /// Opens a stream to the current endpoint and (re)sends every request in flight, in order.
    async fn connect(&mut self) {
        let (endpoint, channel) = match self.client.current() {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "the producer has no usable endpoint");
                tokio::time::sleep(BACKOFF_MAX).await;
                return;
            }
        };
        let (tx, rx) = mpsc::channel(self.max_in_flight() + 1);
        let now = Instant::now();
        for b in &mut self.in_flight {
            b.sent_at = now;
            if tx.try_send(b.request.clone()).is_err() {
                break;
            }
        }
        let mut log = self.client.log(channel);
        match log.produce(ReceiverStream::new(rx)).await {
            Ok(r) => {
                self.last_connect_error = None;
                self.client.note_reached();
                self.link = Some(Link {
                    requests: tx,
                    answers: r.into_inner(),
                    endpoint,
                });
            }
            Err(status) if !is_retryable(&status) => {
                // Refused for good (no or bad credentials, no right to produce): the stream
                // was never opened, so nothing in flight was written; all of it fails so.
                self.link = None;
                for b in self.in_flight.drain(..) {
                    fail(b, &ClientError::Rpc(status.clone()));
                }
            }
            Err(status) => {
                // No stream: the first request in flight fails as retryable.
                self.link = None;
                self.last_connect_error = Some(super::failure_text(&status, &endpoint));
                self.tried.note(&endpoint);
                self.client.redirect(&endpoint, &status);
                self.pause(&status).await;
            }
        }
    }

    async fn pause(&mut self, status: &Status) {
        if let Some(wait) = throttled(status) {
            // A tenant's quota: wait as long as the server asks.
            tokio::time::sleep(wait).await;
            return;
        }
        if leader_hint(status).is_none() {
            tokio::time::sleep(self.backoff).await;
            self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn on_answer(&mut self, answer: Option<Result<ProduceResponse, Status>>) {
        let status = match answer {
            Some(Ok(r)) => match r.result {
                Some(produce_response::Result::Written(w)) => {
                    self.backoff = BACKOFF_MIN;
                    self.tried = super::Tried::default();
                    if let Some(b) = self.in_flight.pop_front() {
                        if !w.leader_address.is_empty() {
                            self.client.note_written(w.last_sequence, &w.leader_address);
                        }
                        for (i, ack) in b.acks.into_iter().enumerate() {
                            let _ = ack.send(Ok(Ack {
                                sequence: w.first_sequence + i as u64,
                                timestamp_us: w.timestamp_us,
                                duplicate: w.duplicate,
                            }));
                        }
                    }
                    return;
                }
                Some(produce_response::Result::Error(e)) => crate::wire::produce_status(e),
                None => Status::internal("the server sent an empty answer"),
            },
            Some(Err(status)) => status,
            None => match &self.link {
                // Not connected (a failed connect): retry it.
                None => Status::unavailable(match &self.last_connect_error {
                    Some(why) => why.clone(),
                    None => "not connected".to_owned(),
                }),
                Some(_) => Status::unavailable("the server ended the Produce stream"),
            },
        };
        self.on_failure(status).await;
    }

    /// The front request failed: for good (its entries fail, the rest go on), or as
    /// retryable (reconnect and resend everything in flight, keyed; unkeyed ones fail).
    async fn on_failure(&mut self, status: Status) {
        let retry = is_retryable(&status);
        if !retry {
            if let Some(b) = self.in_flight.pop_front() {
                fail(b, &ClientError::Rpc(status));
            }
            return;
        }
        let endpoint = self.link.take().map(|l| l.endpoint);
        if let Some(e) = &endpoint
            && throttled(&status).is_none()
        {
            self.tried.note(e);
            self.client.redirect(e, &status);
        }
        let now = Instant::now();
        let retry_timeout = self.client.opts.retry_timeout;
        // Unkeyed requests cannot be resent safely; timed-out ones give up.
        let mut keep = VecDeque::new();
        for (i, mut b) in self.in_flight.drain(..).enumerate() {
            let front = i == 0;
            let since = *b.failing_since.get_or_insert(now);
            let keyed = b.request.producer_id.is_some();
            if keyed && now.duration_since(since) < retry_timeout {
                keep.push_back(b);
            } else {
                let msg = if keyed {
                    let tried = self.tried.text(now - since, true);
                    format!("{} ({tried})", status.message())
                } else if front && throttled(&status).is_some() {
                    // The answer to this very write: a quota refused it.
                    format!("{} (refused by a quota: not written)", status.message())
                } else {
                    format!(
                        "{} (the outcome of this unkeyed write is unknown)",
                        status.message()
                    )
                };
                fail(b, &ClientError::Rpc(Status::new(status.code(), msg)));
            }
        }
        self.in_flight = keep;
        if self.in_flight.is_empty() {
            return;
        }
        if endpoint.is_some() {
            self.pause(&status).await;
        }
        self.connect().await;
    }

    fn answer_flushes(&mut self) {
        if self.in_flight.is_empty() && self.pending_entries() == 0 {
            for done in self.flushes.drain(..) {
                let _ = done.send(());
            }
        }
    }
}

fn fail(b: Batch, e: &ClientError) {
    for ack in b.acks {
        let _ = ack.send(Err(clone_error(e)));
    }
}

fn clone_error(e: &ClientError) -> ClientError {
    match e {
        ClientError::Rpc(s) => ClientError::Rpc(Status::with_details(
            s.code(),
            s.message().to_owned(),
            s.details().to_vec().into(),
        )),
        other => ClientError::Protocol(other.to_string()),
    }
}

/// The next answer on the link (`None` at once when there is no link).
async fn next_answer(link: &mut Option<Link>) -> Option<Result<ProduceResponse, Status>> {
    match link {
        Some(l) => l.answers.next().await,
        None => None,
    }
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
    }
}

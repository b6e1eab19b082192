//! The Rust client of a replog cluster.
//!
//! - Takes a list of endpoints; any node answers. A call that fails with UNAVAILABLE (no
//!   leader, node down, not in sync) is retried, on the leader the error names when it does
//!   (`google.rpc.ErrorInfo`), else on the next endpoint, with backoff, until
//!   `ClientOptions::retry_timeout`.
//! - Every write carries an idempotency key (producer id, producer sequence), so a retried write
//!   is applied once. A producer id is used by one write at a time (the server treats an older
//!   key as a retry); concurrent writes take different ids from a small pool.
//! - Replay is a [`Stream`] of entries whose checksums are verified; it resumes after the last
//!   entry received when the node serving it goes away.
//!
//! It knows nothing of the server's internals: only the `replog.v1` protos, the wire contract
//! ([`crate::wire`]) and the entry checksum ([`crate::checksum`]).

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status, Streaming};

use crate::proto::admin_service_client::AdminServiceClient;
use crate::proto::log_service_client::LogServiceClient;
use crate::proto::{
    self as pb, AddNodeRequest, AddNodeResponse, Checkpoint, ClusterStatusRequest,
    ClusterStatusResponse, CreateCheckpointRequest, GetCheckpointRequest, ListCheckpointsRequest,
    ListSegmentsRequest, ListSegmentsResponse, Member, NodeStatusRequest, RemoveNodeRequest,
    RemoveNodeResponse, ReplayRequest, ReplayResponse, TransferLeaderRequest, TruncateRequest,
    WriteBatchRequest, WriteResponse, replay_request::Start,
};
use crate::wire::{self, leader_hint};

mod producer;
pub use producer::{Ack, AckFuture, Producer, ProducerOptions};

/// Endpoints remembered at most (the given ones plus leaders named by the cluster).
const MAX_ENDPOINTS: usize = 64;
/// Producer ids kept for reuse at most (one per concurrent write).
const MAX_IDLE_PRODUCERS: usize = 256;
/// Retry pauses double from `BACKOFF_MIN` up to `BACKOFF_MAX`. The cap bounds how long a client
/// sleeps past the moment a new leader is ready (an election takes 0.5-2 s), so it is small:
/// a few requests per second per client to a cluster without a leader is cheap.
const BACKOFF_MIN: Duration = Duration::from_millis(20);
const BACKOFF_MAX: Duration = Duration::from_millis(250);

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Default 2s.
    pub connect_timeout: Duration,
    /// Deadline of one attempt. Default 10s.
    pub request_timeout: Duration,
    /// How long a call keeps retrying through leader changes and outages. Default 30s.
    pub retry_timeout: Duration,
    /// Largest message sent or received. Default 64MiB (the server's default limit).
    pub max_message_bytes: usize,
    /// TLS (the CA to trust, and a client certificate if the cluster asks for one): endpoints
    /// without a scheme then use `https://`. Default: plaintext.
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    /// A bearer token (`replog auth token create`) sent with every call, for a cluster with
    /// authentication on. Default: none.
    pub token: Option<String>,
    /// Told once when no endpoint accepts a connection, while calls go on retrying; told again
    /// only after a node has answered since. Default: a `tracing` warning.
    pub on_unreachable: Option<UnreachableHook>,
}

/// What [`ClientOptions::on_unreachable`] calls: with each endpoint tried and why it could not
/// connect (`connection refused`, `timed out`, a name that does not resolve, a TLS handshake).
#[derive(Clone)]
pub struct UnreachableHook(pub Arc<UnreachableFn>);

/// Called with `(endpoint, why)` for each endpoint.
pub type UnreachableFn = dyn Fn(&[(String, String)]) + Send + Sync;

impl std::fmt::Debug for UnreachableHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnreachableHook")
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            retry_timeout: Duration::from_secs(30),
            max_message_bytes: 64 << 20,
            tls: None,
            token: None,
            on_unreachable: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The cluster's answer (after retries, for retryable codes).
    #[error("{} ({})", .0.message(), wire::code_name(.0.code()))]
    Rpc(Status),
    /// An entry's checksum does not match its fields: it was damaged on the way.
    #[error("entry {sequence}: checksum mismatch (got {got:#010x}, computed {computed:#010x})")]
    Checksum {
        sequence: u64,
        got: u32,
        computed: u32,
    },
    #[error("invalid endpoint {0:?}: {1}")]
    Endpoint(String, String),
    #[error("the server sent an invalid entry: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The gRPC code of the failure (DATA_LOSS for a checksum mismatch).
    pub fn code(&self) -> Code {
        match self {
            ClientError::Rpc(s) => s.code(),
            ClientError::Checksum { .. } => Code::DataLoss,
            ClientError::Endpoint(..) => Code::InvalidArgument,
            ClientError::Protocol(_) => Code::Internal,
        }
    }
}

/// A write a caller hands to [`Client::write_batch`].
#[derive(Clone, Debug)]
pub struct NewEntry {
    pub tenant: String,
    pub operation: pb::Operation,
    pub data: Vec<u8>,
}

/// A producer id of the unary calls' pool, with its next producer seq.
struct PooledId {
    id: u64,
    next_seq: u64,
}

struct State {
    endpoints: Vec<String>,
    /// Index into `endpoints` of the node to ask first.
    current: usize,
    channels: HashMap<String, Channel>,
    idle_producers: Vec<PooledId>,
    /// The highest sequence number this client has written: its replays wait until the node
    /// serving them has applied it (read-your-writes on any replica).
    last_written: u64,
    /// Endpoints whose last attempt could not connect, and why (cleared by an answer).
    unreachable: HashMap<String, String>,
    /// `on_unreachable` was told, and no node has answered since.
    told_unreachable: bool,
}

/// A client of a replog cluster. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Client {
    state: Arc<parking_lot::Mutex<State>>,
    /// `state.unreachable` is not empty (so an answer need not take the lock to clear it).
    some_unreachable: Arc<std::sync::atomic::AtomicBool>,
    opts: ClientOptions,
    creds: Credentials,
}

/// A channel whose calls carry the client's credentials.
pub type Authed = tonic::service::interceptor::InterceptedService<Channel, Credentials>;

/// Adds the bearer token (if any) to every call: `authorization: Bearer <token>`.
#[derive(Clone, Debug, Default)]
pub struct Credentials(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Credentials {
    /// The credentials of a token (`None`: none).
    pub fn bearer(token: Option<&str>) -> Result<Credentials, ClientError> {
        let Some(t) = token.map(str::trim).filter(|t| !t.is_empty()) else {
            return Ok(Credentials(None));
        };
        let mut v: tonic::metadata::MetadataValue<tonic::metadata::Ascii> =
            format!("Bearer {t}").parse().map_err(|_| {
                ClientError::Rpc(Status::invalid_argument(
                    "the token holds characters a header cannot carry",
                ))
            })?;
        v.set_sensitive(true);
        Ok(Credentials(Some(v)))
    }
}

impl tonic::service::Interceptor for Credentials {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// A random producer id, for a caller that keys its own writes.
pub fn random_producer_id() -> u64 {
    random_id()
}

/// A random producer id; the time as a fallback keeps ids distinct between processes.
fn random_id() -> u64 {
    let mut b = [0u8; 8];
    match getrandom::fill(&mut b) {
        Ok(()) => u64::from_le_bytes(b),
        Err(_) => now_us() ^ u64::from(std::process::id()) << 40,
    }
}

fn is_retryable(s: &Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::Aborted
            | Code::DeadlineExceeded
    ) || throttled(s).is_some()
        || broken_connection(s)
}

/// INTERNAL made here from the connection's failure (an HTTP/2 error such as a reset when the
/// node stops or restarts: the status carries the transport error as its source), as opposed
/// to an INTERNAL the server answered (decoded from its trailers, with no source). Like
/// UNAVAILABLE, the call may or may not have been applied: keyed writes retry without
/// duplicates.
fn broken_connection(s: &Status) -> bool {
    s.code() == Code::Internal && std::error::Error::source(s).is_some()
}

/// A tenant's rate quota refused the call (nothing was written): how long the server asks to
/// wait before trying again.
fn throttled(s: &Status) -> Option<Duration> {
    if s.code() != Code::ResourceExhausted {
        return None;
    }
    wire::retry_delay(s)
}

/// Why a connection to a node could not be made, when that is what `s` says: the socket's error
/// (`connection refused`, `timed out`, ...), a name that does not resolve, or a failed TLS
/// handshake. `None` for anything a node answered.
pub(crate) fn connect_failure(s: &Status) -> Option<String> {
    // A status a node sent has no source: only the client's own transport errors do.
    if s.code() != Code::Unavailable || std::error::Error::source(s).is_none() {
        return None;
    }
    let mut cause = std::error::Error::source(s);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            return Some(match io.kind() {
                K::ConnectionRefused => "connection refused".to_owned(),
                K::TimedOut => "timed out".to_owned(),
                K::HostUnreachable => "no route to host".to_owned(),
                K::NetworkUnreachable => "network unreachable".to_owned(),
                K::AddrNotAvailable => "address not available".to_owned(),
                _ => io.to_string(),
            });
        }
        cause = e.source();
    }
    let text = with_causes(s);
    let connect = [
        "dns error",
        "tcp connect error",
        "timed out",
        "certificate",
        "tls",
    ];
    connect
        .iter()
        .any(|w| text.to_ascii_lowercase().contains(w))
        .then_some(text)
}

/// A status's message followed by the errors that caused it (a connection's: "tcp connect
/// error: Connection refused", or a TLS handshake's "invalid peer certificate: UnknownIssuer"),
/// each said once.
pub(crate) fn with_causes(status: &Status) -> String {
    let mut out = status.message().to_owned();
    let mut cause = std::error::Error::source(status);
    while let Some(e) = cause {
        let m = e.to_string();
        if !m.is_empty() && !out.contains(&m) {
            out.push_str(": ");
            out.push_str(&m);
        }
        cause = e.source();
    }
    out
}

/// A failure as the final error says it: `cannot connect to <endpoint>: <why>` when no
/// connection could be made, else the status's message with its causes.
fn failure_text(status: &Status, endpoint: &str) -> String {
    match connect_failure(status) {
        Some(why) => format!("cannot connect to {}: {why}", display_endpoint(endpoint)),
        None => with_causes(status),
    }
}

/// The failed attempts of a call (or a producer) and the endpoints they went to, to say what
/// was tried when it gives up.
#[derive(Default)]
pub(crate) struct Tried {
    endpoints: Vec<String>,
    attempts: u32,
}

impl Tried {
    /// An attempt at `endpoint` failed.
    pub(crate) fn note(&mut self, endpoint: &str) {
        self.attempts += 1;
        if !self.endpoints.iter().any(|e| e == endpoint) && self.endpoints.len() < MAX_ENDPOINTS {
            self.endpoints.push(endpoint.to_owned());
        }
    }

    /// `tried a, b 12 times in 3.0s` (without the endpoints when there is one, named already).
    pub(crate) fn text(&self, elapsed: Duration, name_endpoints: bool) -> String {
        let times = if self.attempts == 1 {
            "once".to_owned()
        } else {
            format!("{} times", self.attempts)
        };
        let secs = format!("{:.1}s", elapsed.as_secs_f64());
        if !name_endpoints {
            return format!("tried {times} in {secs}");
        }
        let list: Vec<&str> = self.endpoints.iter().map(|e| display_endpoint(e)).collect();
        format!("tried {} {times} in {secs}", list.join(", "))
    }
}

/// An endpoint as the user wrote it: without the `http://` the client adds.
pub fn display_endpoint(e: &str) -> &str {
    e.strip_prefix("http://").unwrap_or(e)
}

fn normalize(e: &str, tls: bool) -> String {
    let e = e.trim();
    if e.starts_with("http://") || e.starts_with("https://") {
        e.to_owned()
    } else if tls {
        format!("https://{e}")
    } else {
        format!("http://{e}")
    }
}

impl Client {
    /// A client of the cluster behind `endpoints` (`host:port`, comma-separated lists allowed).
    /// Connects lazily.
    pub fn new(endpoints: &[String], opts: ClientOptions) -> Result<Client, ClientError> {
        let mut list: Vec<String> = endpoints
            .iter()
            .flat_map(|e| e.split(','))
            .filter(|e| !e.trim().is_empty())
            .map(|e| normalize(e, opts.tls.is_some()))
            .collect();
        list.dedup();
        if list.is_empty() {
            return Err(ClientError::Endpoint(
                String::new(),
                "no endpoint given".into(),
            ));
        }
        for e in &list {
            Endpoint::from_shared(e.clone())
                .map_err(|err| ClientError::Endpoint(e.clone(), err.to_string()))?;
        }
        let creds = Credentials::bearer(opts.token.as_deref())?;
        Ok(Client {
            creds,
            state: Arc::new(parking_lot::Mutex::new(State {
                endpoints: list,
                current: 0,
                channels: HashMap::new(),
                idle_producers: Vec::new(),
                last_written: 0,
                unreachable: HashMap::new(),
                told_unreachable: false,
            })),
            some_unreachable: Arc::default(),
            opts,
        })
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.state.lock().endpoints.clone()
    }

    fn channel_to(&self, st: &mut State, endpoint: &str) -> Result<Channel, ClientError> {
        if let Some(c) = st.channels.get(endpoint) {
            return Ok(c.clone());
        }
        let mut ep = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|e| ClientError::Endpoint(endpoint.to_owned(), e.to_string()))?;
        if let Some(tls) = &self.opts.tls
            && endpoint.starts_with("https://")
        {
            ep = ep
                .tls_config(tls.clone())
                .map_err(|e| ClientError::Endpoint(endpoint.to_owned(), e.to_string()))?;
        }
        let ch = ep
            .connect_timeout(self.opts.connect_timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        st.channels.insert(endpoint.to_owned(), ch.clone());
        Ok(ch)
    }

    /// The endpoint to ask now, and its channel.
    fn current(&self) -> Result<(String, Channel), ClientError> {
        let mut st = self.state.lock();
        let e = st.endpoints[st.current % st.endpoints.len()].clone();
        let ch = self.channel_to(&mut st, &e)?;
        Ok((e, ch))
    }

    /// Makes `endpoint` the one asked first (remembered if new).
    fn prefer(&self, st: &mut State, endpoint: String) {
        let i = match st.endpoints.iter().position(|e| *e == endpoint) {
            Some(i) => i,
            None => {
                if st.endpoints.len() >= MAX_ENDPOINTS {
                    st.endpoints.pop();
                }
                st.endpoints.push(endpoint);
                st.endpoints.len() - 1
            }
        };
        st.current = i;
    }

    /// A node answered: endpoints that could not be reached may be told about again.
    fn note_reached(&self) {
        use std::sync::atomic::Ordering;
        if self.some_unreachable.swap(false, Ordering::Relaxed) {
            let mut st = self.state.lock();
            st.unreachable.clear();
            st.told_unreachable = false;
        }
    }

    /// After a failure at `endpoint`: go to the leader it named, else to the next endpoint.
    /// When no endpoint accepts connections, says so once (`on_unreachable`).
    fn redirect(&self, endpoint: &str, status: &Status) {
        let mut st = self.state.lock();
        if let Some(why) = connect_failure(status) {
            self.some_unreachable
                .store(true, std::sync::atomic::Ordering::Relaxed);
            st.unreachable.insert(endpoint.to_owned(), why);
            if !st.told_unreachable && st.endpoints.iter().all(|e| st.unreachable.contains_key(e)) {
                st.told_unreachable = true;
                let list: Vec<(String, String)> = st
                    .endpoints
                    .iter()
                    .map(|e| (e.clone(), st.unreachable[e].clone()))
                    .collect();
                drop(st);
                match &self.opts.on_unreachable {
                    Some(hook) => (hook.0)(&list),
                    None => tracing::warn!(endpoints = ?list, "cannot connect to any endpoint"),
                }
                st = self.state.lock();
            }
        }
        if let Some((_, addr)) = leader_hint(status) {
            let addr = normalize(&addr, self.opts.tls.is_some());
            if addr != endpoint {
                self.prefer(&mut st, addr);
                return;
            }
        }
        if st.endpoints[st.current % st.endpoints.len()] == endpoint {
            st.current = (st.current + 1) % st.endpoints.len();
        }
    }

    /// Runs `f` against the cluster, retrying retryable failures until the retry timeout.
    async fn call<T, F, Fut>(&self, timeout: Duration, mut f: F) -> Result<T, ClientError>
    where
        F: FnMut(Channel, Duration) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let started = Instant::now();
        let deadline = started + self.opts.retry_timeout;
        let mut backoff = BACKOFF_MIN;
        let mut tried = Tried::default();
        loop {
            let (endpoint, channel) = self.current()?;
            let status = match f(channel, timeout).await {
                Ok(v) => {
                    self.note_reached();
                    return Ok(v);
                }
                Err(s) => s,
            };
            let unreachable = connect_failure(&status);
            if unreachable.is_none() {
                self.note_reached();
            }
            if !is_retryable(&status) {
                return Err(ClientError::Rpc(status));
            }
            tried.note(&endpoint);
            if Instant::now() >= deadline {
                // Say what was tried: a connection error alone does not name the node.
                let message = format!(
                    "{} ({})",
                    failure_text(&status, &endpoint),
                    tried.text(started.elapsed(), true)
                );
                return Err(ClientError::Rpc(Status::new(status.code(), message)));
            }
            // (One that cannot connect is said once, by `redirect`, for all endpoints.)
            if tried.attempts == 1 && unreachable.is_none() {
                tracing::warn!(
                    %endpoint,
                    code = ?status.code(),
                    error = with_causes(&status),
                    "retrying (for up to {:?}, on the leader or the next endpoint)",
                    self.opts.retry_timeout
                );
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if let Some(wait) = throttled(&status) {
                // The same leader will take it after the wait the quota asks for.
                tokio::time::sleep(wait.min(left)).await;
                continue;
            }
            let hinted = leader_hint(&status).is_some();
            self.redirect(&endpoint, &status);
            if !hinted {
                // The last pause ends at the deadline, for one more attempt there.
                tokio::time::sleep(backoff.min(left)).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }

    fn log(&self, ch: Channel) -> LogServiceClient<Authed> {
        LogServiceClient::with_interceptor(ch, self.creds.clone())
            .max_decoding_message_size(self.opts.max_message_bytes)
            .max_encoding_message_size(self.opts.max_message_bytes)
    }

    fn admin(&self, ch: Channel) -> AdminServiceClient<Authed> {
        AdminServiceClient::with_interceptor(ch, self.creds.clone())
    }

    /// A unary `LogService` call: `f` sends `req` (with the attempt's deadline) on a client of
    /// the endpoint `call` picked; retried as [`Client::call`] says.
    async fn log_unary<Req, Resp, F, Fut>(
        &self,
        timeout: Duration,
        req: Req,
        f: F,
    ) -> Result<Resp, ClientError>
    where
        Req: Clone,
        F: Fn(LogServiceClient<Authed>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        self.call(timeout, |ch, t| {
            let mut rq = Request::new(req.clone());
            rq.set_timeout(t);
            f(self.log(ch), rq)
        })
        .await
        .map(tonic::Response::into_inner)
    }

    /// A unary `AdminService` call, like [`Client::log_unary`].
    async fn admin_unary<Req, Resp, F, Fut>(
        &self,
        timeout: Duration,
        req: Req,
        f: F,
    ) -> Result<Resp, ClientError>
    where
        Req: Clone,
        F: Fn(AdminServiceClient<Authed>, Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, Status>>,
    {
        self.call(timeout, |ch, t| {
            let mut rq = Request::new(req.clone());
            rq.set_timeout(t);
            f(self.admin(ch), rq)
        })
        .await
        .map(tonic::Response::into_inner)
    }

    fn take_producer(&self) -> PooledId {
        if let Some(p) = self.state.lock().idle_producers.pop() {
            return p;
        }
        PooledId {
            id: random_id(),
            next_seq: 1,
        }
    }

    /// Notes a write acknowledged by the leader at `leader_address`: replays wait for it, and
    /// later calls go to that leader first.
    fn note_written(&self, last_sequence: u64, leader_address: &str) {
        let mut st = self.state.lock();
        st.last_written = st.last_written.max(last_sequence);
        let leader = normalize(leader_address, self.opts.tls.is_some());
        self.prefer(&mut st, leader);
    }

    fn give_back(&self, p: PooledId) {
        let mut st = self.state.lock();
        if st.idle_producers.len() < MAX_IDLE_PRODUCERS {
            st.idle_producers.push(p);
        }
    }

    /// Writes one entry; returns its sequence number and timestamp.
    pub async fn write(
        &self,
        tenant: &str,
        operation: pb::Operation,
        data: Vec<u8>,
    ) -> Result<WriteResponse, ClientError> {
        self.write_batch(vec![NewEntry {
            tenant: tenant.to_owned(),
            operation,
            data,
        }])
        .await
    }

    /// Writes entries atomically (consecutive sequence numbers), exactly once across retries.
    pub async fn write_batch(&self, entries: Vec<NewEntry>) -> Result<WriteResponse, ClientError> {
        let mut producer = self.take_producer();
        let seq = producer.next_seq;
        producer.next_seq += 1;
        let r = self.write_batch_keyed(entries, producer.id, seq).await;
        self.give_back(producer);
        r
    }

    /// Writes entries atomically with the caller's idempotency key: `producer_seq` must grow
    /// with each new write of `producer_id` (a key not newer than the producer's last applied
    /// write returns that write's result and writes nothing). Writes of one producer id must
    /// not run concurrently.
    pub async fn write_batch_keyed(
        &self,
        entries: Vec<NewEntry>,
        producer_id: u64,
        producer_seq: u64,
    ) -> Result<WriteResponse, ClientError> {
        let (id, seq) = (producer_id, producer_seq);
        let req = WriteBatchRequest {
            entries: entries
                .into_iter()
                .map(|e| pb::EntryInput {
                    tenant: e.tenant,
                    operation: e.operation as i32,
                    data: e.data,
                })
                .collect(),
            producer_id: Some(id),
            producer_seq: Some(seq),
        };
        let r = self
            .log_unary(self.opts.request_timeout, req, |mut c, rq| async move {
                c.write_batch(rq).await
            })
            .await?;
        let mut st = self.state.lock();
        st.last_written = st.last_written.max(r.last_sequence);
        // A follower forwarded it: talk to the leader directly from now on (one hop less).
        if !r.leader_address.is_empty() {
            let leader = normalize(&r.leader_address, self.opts.tls.is_some());
            self.prefer(&mut st, leader);
        }
        Ok(r)
    }

    /// Replays committed entries as a stream (checksums verified; resumes on another node if
    /// the one serving it goes away). It shows this client's own writes: `min_sequence` is at
    /// least the last sequence number it wrote.
    pub async fn replay(
        &self,
        mut req: ReplayRequest,
    ) -> Result<Pin<Box<dyn Stream<Item = Result<pb::Entry, ClientError>> + Send>>, ClientError>
    {
        req.min_sequence = req.min_sequence.max(self.state.lock().last_written);
        let first = self.open_replay(req.clone()).await?;
        let state = ReplayState {
            client: self.clone(),
            req: req.clone(),
            stream: Some(first),
            ready: VecDeque::new(),
            left: if req.limit == 0 { u64::MAX } else { req.limit },
            last: None,
            done: false,
        };
        Ok(Box::pin(futures::stream::unfold(state, ReplayState::next)))
    }

    /// Reads committed entries from one node only (no redirect to another), to compare
    /// replicas: from `req`'s start up to what that node has committed (`follow` is ignored).
    /// Retries while the node is not in sync or unreachable, until the retry timeout; resumes
    /// after the last entry if the stream breaks. At most `max_entries` are read.
    pub async fn read_node(
        &self,
        endpoint: &str,
        mut req: ReplayRequest,
        max_entries: usize,
    ) -> Result<Vec<pb::Entry>, ClientError> {
        let ch = {
            let mut st = self.state.lock();
            self.channel_to(&mut st, &normalize(endpoint, self.opts.tls.is_some()))?
        };
        req.follow = false;
        let started = Instant::now();
        let deadline = started + self.opts.retry_timeout;
        let mut backoff = BACKOFF_MIN;
        let mut tried = Tried::default();
        let mut out: Vec<pb::Entry> = Vec::new();
        loop {
            let mut rq = req.clone();
            if let Some(last) = out.last() {
                rq.start = Some(Start::FromSequence(last.sequence + 1));
            }
            let mut rq = Request::new(rq);
            rq.set_timeout(self.opts.request_timeout + Duration::from_secs(10));
            let status = match self.log(ch.clone()).replay(rq).await {
                Ok(stream) => match drain_into(stream.into_inner(), &mut out, max_entries).await {
                    Ok(()) => return Ok(out),
                    Err(ClientError::Rpc(s)) if is_retryable(&s) => s,
                    Err(e) => return Err(e),
                },
                Err(s) if is_retryable(&s) => s,
                Err(s) => return Err(ClientError::Rpc(s)),
            };
            tried.note(endpoint);
            let now = Instant::now();
            if now >= deadline {
                let message = format!(
                    "{} (reading {endpoint}: {})",
                    failure_text(&status, endpoint),
                    tried.text(started.elapsed(), false)
                );
                return Err(ClientError::Rpc(Status::new(status.code(), message)));
            }
            tokio::time::sleep(backoff.min(deadline - now)).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn open_replay(
        &self,
        req: ReplayRequest,
    ) -> Result<Streaming<ReplayResponse>, ClientError> {
        // Opening waits for min_sequence on the server: allow for it.
        let timeout = self.opts.request_timeout + Duration::from_secs(10);
        self.call(timeout, |ch, _| {
            let rq = Request::new(req.clone());
            let mut c = self.log(ch);
            async move { c.replay(rq).await.map(|r| r.into_inner()) }
        })
        .await
    }

    pub async fn create_checkpoint(
        &self,
        name: &str,
        tenant: Option<String>,
        sequence: Option<u64>,
    ) -> Result<Checkpoint, ClientError> {
        let req = CreateCheckpointRequest {
            name: name.to_owned(),
            tenant,
            sequence,
        };
        self.log_unary(self.opts.request_timeout, req, |mut c, rq| async move {
            c.create_checkpoint(rq).await
        })
        .await
    }

    pub async fn get_checkpoint(&self, name: &str) -> Result<Checkpoint, ClientError> {
        let req = GetCheckpointRequest {
            name: name.to_owned(),
        };
        self.log_unary(self.opts.request_timeout, req, |mut c, rq| async move {
            c.get_checkpoint(rq).await
        })
        .await
    }

    pub async fn list_checkpoints(
        &self,
        tenant: Option<String>,
    ) -> Result<Vec<Checkpoint>, ClientError> {
        let req = ListCheckpointsRequest { tenant };
        self.log_unary(self.opts.request_timeout, req, |mut c, rq| async move {
            c.list_checkpoints(rq).await
        })
        .await
        .map(|r| r.checkpoints)
    }

    /// Drops every entry before `before` on every replica; returns the new log start.
    pub async fn truncate(&self, before: u64) -> Result<u64, ClientError> {
        self.log_unary(
            self.opts.request_timeout,
            TruncateRequest { before },
            |mut c, rq| async move { c.truncate(rq).await },
        )
        .await
        .map(|r| r.log_start)
    }

    /// The segments of the first endpoint that answers.
    pub async fn segments(&self) -> Result<ListSegmentsResponse, ClientError> {
        self.log_unary(
            self.opts.request_timeout,
            ListSegmentsRequest {},
            |mut c, rq| async move { c.list_segments(rq).await },
        )
        .await
    }

    pub async fn cluster_status(&self) -> Result<ClusterStatusResponse, ClientError> {
        self.admin_unary(
            self.opts.request_timeout,
            ClusterStatusRequest {},
            |mut c, rq| async move { c.cluster_status(rq).await },
        )
        .await
    }

    /// One endpoint's own status (no retry elsewhere).
    pub async fn node_status(&self, endpoint: &str) -> Result<Member, ClientError> {
        let ch = {
            let mut st = self.state.lock();
            self.channel_to(&mut st, &normalize(endpoint, self.opts.tls.is_some()))?
        };
        let mut rq = Request::new(NodeStatusRequest {});
        rq.set_timeout(self.opts.request_timeout);
        self.admin(ch)
            .node_status(rq)
            .await
            .map(|r| r.into_inner())
            .map_err(ClientError::Rpc)
    }

    /// One endpoint's `grpc.health.v1` status for `service` ("" is the node as a whole), asked
    /// once (no retry elsewhere), like `grpc_health_probe`. Health needs no credentials.
    pub async fn health(
        &self,
        endpoint: &str,
        service: &str,
    ) -> Result<tonic_health::ServingStatus, ClientError> {
        use tonic_health::pb::health_check_response::ServingStatus as Wire;
        let ch = {
            let mut st = self.state.lock();
            self.channel_to(&mut st, &normalize(endpoint, self.opts.tls.is_some()))?
        };
        let mut rq = Request::new(tonic_health::pb::HealthCheckRequest {
            service: service.to_owned(),
        });
        rq.set_timeout(self.opts.request_timeout);
        let status = tonic_health::pb::health_client::HealthClient::new(ch)
            .check(rq)
            .await
            .map_err(|s| {
                let message = match connect_failure(&s) {
                    Some(why) => format!("cannot connect: {why}"),
                    None => with_causes(&s),
                };
                ClientError::Rpc(Status::new(s.code(), message))
            })?
            .into_inner()
            .status;
        Ok(match Wire::try_from(status) {
            Ok(Wire::Serving) => tonic_health::ServingStatus::Serving,
            Ok(Wire::NotServing) => tonic_health::ServingStatus::NotServing,
            _ => tonic_health::ServingStatus::Unknown,
        })
    }

    /// Adds a node (learner, then voter once caught up, unless `learner_only`). Waits for the
    /// catch-up: no attempt deadline beyond the retry timeout.
    pub async fn add_node(
        &self,
        id: u64,
        address: &str,
        learner_only: bool,
    ) -> Result<AddNodeResponse, ClientError> {
        let req = AddNodeRequest {
            id,
            address: address.to_owned(),
            learner_only,
        };
        self.admin_unary(self.opts.retry_timeout, req, |mut c, rq| async move {
            c.add_node(rq).await
        })
        .await
    }

    pub async fn remove_node(&self, id: u64) -> Result<RemoveNodeResponse, ClientError> {
        self.admin_unary(
            self.opts.request_timeout,
            RemoveNodeRequest { id },
            |mut c, rq| async move { c.remove_node(rq).await },
        )
        .await
    }

    /// Changes a tenant's replicated quota: with `clear` removes it first, then sets the
    /// limits `limits` gives (unset ones stay). Needs the admin role.
    pub async fn set_quota(
        &self,
        tenant: &str,
        limits: pb::QuotaLimits,
        clear: bool,
    ) -> Result<pb::TenantQuota, ClientError> {
        self.admin_unary(
            self.opts.request_timeout,
            pb::SetQuotaRequest {
                tenant: tenant.to_owned(),
                limits: Some(limits),
                clear,
            },
            |mut c, rq| async move { c.set_quota(rq).await },
        )
        .await
    }

    /// The quotas (of `tenant`, or of every tenant with one) as the node asked applies them.
    pub async fn list_quotas(&self, tenant: &str) -> Result<pb::ListQuotasResponse, ClientError> {
        self.admin_unary(
            self.opts.request_timeout,
            pb::ListQuotasRequest {
                tenant: tenant.to_owned(),
            },
            |mut c, rq| async move { c.list_quotas(rq).await },
        )
        .await
    }

    pub async fn transfer_leader(&self, to: u64) -> Result<u64, ClientError> {
        self.admin_unary(
            self.opts.request_timeout,
            TransferLeaderRequest { to },
            |mut c, rq| async move { c.transfer_leader(rq).await },
        )
        .await
        .map(|r| r.leader_id)
    }
}

/// Microseconds since the Unix epoch (0 if the clock is before it).
fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Checks an entry's checksum against its fields.
pub fn verify(e: &pb::Entry) -> Result<(), ClientError> {
    let op = wire::operation(e.operation).map_err(|_| {
        ClientError::Protocol(format!("entry {}: operation {}", e.sequence, e.operation))
    })?;
    let computed = crate::checksum::entry_checksum(
        e.sequence,
        e.timestamp_us,
        wire::operation_code(op),
        &e.tenant,
        &e.data,
    );
    if computed != e.checksum {
        return Err(ClientError::Checksum {
            sequence: e.sequence,
            got: e.checksum,
            computed,
        });
    }
    Ok(())
}

/// Appends a replay stream's entries (checksums verified) to `out`, up to `max` in all.
async fn drain_into(
    mut stream: Streaming<ReplayResponse>,
    out: &mut Vec<pb::Entry>,
    max: usize,
) -> Result<(), ClientError> {
    while let Some(msg) = stream.next().await {
        for e in msg.map_err(ClientError::Rpc)?.entries {
            verify(&e)?;
            if out.len() >= max {
                return Ok(());
            }
            out.push(e);
        }
    }
    Ok(())
}

struct ReplayState {
    client: Client,
    req: ReplayRequest,
    stream: Option<Streaming<ReplayResponse>>,
    ready: VecDeque<pb::Entry>,
    left: u64,
    /// Sequence number of the last entry handed out.
    last: Option<u64>,
    done: bool,
}

impl ReplayState {
    async fn next(mut self) -> Option<(Result<pb::Entry, ClientError>, ReplayState)> {
        loop {
            if self.done || self.left == 0 {
                return None;
            }
            if let Some(e) = self.ready.pop_front() {
                if let Err(err) = verify(&e) {
                    self.done = true;
                    return Some((Err(err), self));
                }
                self.left -= 1;
                self.last = Some(e.sequence);
                return Some((Ok(e), self));
            }
            let item = match self.stream.as_mut() {
                Some(s) => s.next().await,
                None => None,
            };
            match item {
                Some(Ok(msg)) => self.ready.extend(msg.entries),
                None if self.stream.is_some() => return None,
                Some(Err(s)) if is_retryable(&s) => {
                    tracing::debug!(code = ?s.code(), message = s.message(), "replay interrupted; resuming");
                    self.stream = None;
                }
                Some(Err(s)) => {
                    self.done = true;
                    return Some((Err(ClientError::Rpc(s)), self));
                }
                None => {}
            }
            if self.stream.is_none() {
                let mut req = self.req.clone();
                if let Some(last) = self.last {
                    // Resuming after a checkpoint by sequence number: keep the checkpoint's
                    // tenant filter, which the server applied implicitly.
                    if let (Some(Start::Checkpoint(name)), None) = (&req.start, &req.tenant) {
                        match self.client.get_checkpoint(name).await {
                            Ok(cp) => {
                                req.tenant = cp.tenant.clone();
                                self.req.tenant = cp.tenant;
                            }
                            Err(e) => {
                                self.done = true;
                                return Some((Err(e), self));
                            }
                        }
                    }
                    req.start = Some(Start::FromSequence(last + 1));
                    req.min_sequence = req.min_sequence.max(last);
                }
                req.limit = if self.left == u64::MAX { 0 } else { self.left };
                match self.client.open_replay(req).await {
                    Ok(s) => self.stream = Some(s),
                    Err(e) => {
                        self.done = true;
                        return Some((Err(e), self));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_is_retried_only_when_the_connection_broke() {
        let answered = Status::internal("the server's own error");
        assert!(!is_retryable(&answered));
        let mut broken = Status::internal("h2 protocol error: http2 error");
        broken.set_source(Arc::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert!(is_retryable(&broken));
        assert!(is_retryable(&Status::unavailable("leader changed")));
        assert!(!is_retryable(&Status::invalid_argument("bad tenant")));
    }
}

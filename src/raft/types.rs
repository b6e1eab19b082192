//! The Raft type configuration and what one log entry carries: a client batch (stored as a WAL
//! records frame) or a command (stored as a WAL control frame), and what applying it returns.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use serde::{Deserialize, Serialize};

use crate::wal::{Operation, ProducerKey, SequenceNumber, WritePart};

pub type NodeId = u64;

/// replog's Raft types. The standard (term-only) leader id makes a log id `(term, index)`,
/// exactly what a WAL frame header stores. Written out rather than by `declare_raft_types!`,
/// which cannot set the responder: a write's answer is a [`Callback`].
#[derive(Debug, Clone, Copy, Default, Eq, PartialEq, Ord, PartialOrd)]
pub struct TypeConfig {}

impl openraft::RaftTypeConfig for TypeConfig {
    type D = Request;
    type R = Response;
    type NodeId = NodeId;
    type Node = openraft::BasicNode;
    type Term = u64;
    type LeaderId = openraft::impls::leader_id_std::LeaderId<u64, NodeId>;
    type Vote = openraft::impls::Vote<Self::LeaderId>;
    type Payload = openraft::EntryPayload<Self::D, Self::NodeId, Self::Node>;
    type Entry =
        openraft::Entry<<Self::LeaderId as openraft::vote::RaftLeaderId>::Committed, Self::Payload>;
    type Responder<T>
        = Callback<T>
    where
        T: openraft::OptionalSend + 'static;
    type Batch<T>
        = openraft::impls::InlineBatch<T>
    where
        T: openraft::OptionalSend + 'static;
    type AsyncRuntime = openraft::impls::TokioRuntime;
    type ErrorSource = openraft::impls::BoxedErrorSource;
}

/// How a proposal's outcome reaches its proposer: a function called where the outcome is known
/// (the state machine, once the entry is applied; Raft, when it refuses the proposal). Nothing
/// is handed to another task for it: each such hand-off is a wake-up on the write path. If Raft
/// drops the proposal (it stops), the function is dropped uncalled.
pub struct Callback<T>(Box<dyn FnOnce(T) + Send>);

impl<T> Callback<T> {
    pub fn new(f: impl FnOnce(T) + Send + 'static) -> Callback<T> {
        Callback(Box::new(f))
    }
}

impl<T: openraft::OptionalSend + 'static> openraft::raft::responder::Responder<TypeConfig, T>
    for Callback<T>
{
    fn on_complete(self, result: T) {
        (self.0)(result)
    }
}

pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
pub type Membership = openraft::Membership<NodeId, openraft::BasicNode>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;

/// One record of a client write, with the timestamp the leader gave it (so every replica stores
/// the same bytes and the same checksum).
///
/// Cheap to clone (the name and the data are shared, not copied): openraft and the entry
/// cache hand out copies of an entry for each follower's replication and for the state
/// machine. On the wire (postcard) the same bytes as a `String` and a byte string. Decoded by
/// [`from_wire_shared`], its data is a view of the received message and a run of records of
/// one tenant shares one name.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteRecord {
    #[serde(deserialize_with = "shared::tenant")]
    pub tenant_id: Arc<str>,
    pub operation: Operation,
    #[serde(deserialize_with = "shared::data")]
    pub data: Bytes,
    /// µs since the Unix epoch.
    pub timestamp: u64,
}

/// Tenant names for a run of records: consecutive records of one tenant share one `Arc<str>`
/// (one allocation per run instead of one per record; a batch is usually one tenant's).
#[derive(Default)]
pub(crate) struct TenantRun(Option<Arc<str>>);

impl TenantRun {
    /// `name` as an `Arc<str>`: the previous record's if it is the same tenant, else a new one.
    pub(crate) fn share(&mut self, name: &str) -> Arc<str> {
        match &self.0 {
            Some(last) if **last == *name => last.clone(),
            _ => self.0.insert(Arc::from(name)).clone(),
        }
    }
}

impl fmt::Debug for WriteRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}B@{}",
            self.tenant_id,
            self.operation.as_str(),
            self.data.len(),
            self.timestamp
        )
    }
}

/// A tenant's quota as `replog quota set` replicates it: each limit per second (bytes are data bytes) or in all; `None` leaves the
/// limit to the next source (the node's config for the tenant, then its default); `Some(0)`
/// is no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuotaLimits {
    pub write_entries_per_sec: Option<u64>,
    pub write_bytes_per_sec: Option<u64>,
    pub replay_bytes_per_sec: Option<u64>,
    pub retained_bytes: Option<u64>,
}

impl QuotaLimits {
    /// `self`'s limits, with those it leaves unset taken from `below`.
    pub fn over(self, below: QuotaLimits) -> QuotaLimits {
        QuotaLimits {
            write_entries_per_sec: self.write_entries_per_sec.or(below.write_entries_per_sec),
            write_bytes_per_sec: self.write_bytes_per_sec.or(below.write_bytes_per_sec),
            replay_bytes_per_sec: self.replay_bytes_per_sec.or(below.replay_bytes_per_sec),
            retained_bytes: self.retained_bytes.or(below.retained_bytes),
        }
    }

    pub fn is_empty(&self) -> bool {
        *self == QuotaLimits::default()
    }
}

/// An entry's records, shared by its copies: openraft and the entry cache copy an entry for
/// each follower's replication and for the state machine, and each copy is then one reference
/// count, not a list of records. On the wire, a sequence as a `Vec` is.
pub type Records = Arc<Vec<WriteRecord>>;

/// What a client asks the cluster to replicate: the `D` of one Raft entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// An atomic batch of records; it gets a contiguous range of sequence numbers.
    Write {
        producer: Option<ProducerKey>,
        records: Records,
    },
    /// Records a named position (a consumer's checkpoint), optionally per tenant.
    Checkpoint {
        name: String,
        tenant: Option<String>,
        sequence: SequenceNumber,
    },
    /// Drops every record before `before` on every replica (prefix truncation).
    Truncate { before: SequenceNumber },
    /// Client writes the leader coalesced into one entry (one WAL frame): each part is one
    /// write, with its own key and the next `records` records, applied in order. The entry
    /// gets one contiguous range; each part a contiguous piece of it.
    Coalesced {
        parts: Vec<WritePart>,
        records: Records,
    },
    /// Changes a tenant's replicated quota: with `clear`, removes it first (the nodes'
    /// configured one applies again); then the limits `set` gives replace those it had.
    SetQuota {
        tenant: String,
        clear: bool,
        set: QuotaLimits,
    },
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Write { producer, records } => {
                write!(f, "write({} records, producer {producer:?})", records.len())
            }
            Request::Checkpoint { name, sequence, .. } => {
                write!(f, "checkpoint({name}={sequence})")
            }
            Request::Truncate { before } => write!(f, "truncate(before {before})"),
            Request::SetQuota { tenant, .. } => write!(f, "set quota({tenant})"),
            Request::Coalesced { parts, records } => {
                write!(
                    f,
                    "write({} records in {} writes)",
                    records.len(),
                    parts.len()
                )
            }
        }
    }
}

/// What applying an entry returns to the client that proposed it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// A blank or membership entry.
    #[default]
    None,
    Written {
        first_seq: SequenceNumber,
        /// Inclusive.
        last_seq: SequenceNumber,
        timestamp: u64,
        /// The write repeated an idempotency key already applied: this is the original result
        /// and nothing was written twice.
        duplicate: bool,
    },
    Checkpoint {
        sequence: SequenceNumber,
    },
    Truncated {
        log_start: SequenceNumber,
    },
    QuotaSet,
    /// A command refused deterministically by every replica (e.g. truncating past the commit).
    Rejected {
        reason: String,
    },
}

/// What a WAL control frame holds: every entry that is not a client write.
#[derive(Debug, Serialize, Deserialize)]
pub enum Control {
    Blank,
    Membership(Membership),
    Command(Request),
}

impl Control {
    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_stdvec(self)
    }

    pub fn decode(bytes: &[u8]) -> Result<Control, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}

/// Encodes a value for the wire (internal Raft RPCs): postcard, compact and schema-checked by
/// type. Never JSON.
pub fn to_wire<T: Serialize>(v: &T) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(v)
}

/// [`to_wire`] into a buffer of `capacity` bytes from the start: a large message (an
/// AppendEntries of many records) is then written once instead of being copied each time its
/// buffer doubles.
pub fn to_wire_sized<T: Serialize>(v: &T, capacity: usize) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_io(v, Vec::with_capacity(capacity))
}

pub fn from_wire<T: for<'de> Deserialize<'de>>(b: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(b)
}

/// [`from_wire`] of a received message: the records it holds keep views of `message` for
/// their data (no allocation or copy per record) and share one name per run of one tenant's
/// records. The views keep `message` alive as long as any of its records is (a follower's
/// entry cache holds at most its `max_bytes` of entries, so a few messages beyond that).
pub fn from_wire_shared<T: for<'de> Deserialize<'de>>(
    message: &Bytes,
) -> Result<T, postcard::Error> {
    let _scope = shared::Scope::enter(message.clone());
    postcard::from_bytes(message)
}

/// How [`WriteRecord`]'s name and data are decoded: from the message [`from_wire_shared`] is
/// decoding, where there is one (a thread's decode is synchronous, so a thread-local names it),
/// else as copies.
mod shared {
    use std::cell::RefCell;
    use std::fmt;
    use std::sync::Arc;

    use bytes::Bytes;
    use serde::Deserializer;
    use serde::de::{Error, SeqAccess, Visitor};

    struct Source {
        message: Bytes,
        tenants: super::TenantRun,
    }

    thread_local! {
        static SOURCE: RefCell<Option<Source>> = const { RefCell::new(None) };
    }

    /// The message being decoded on this thread, until dropped (then the one before, if a
    /// decode ran inside another).
    pub(super) struct Scope(Option<Source>);

    impl Scope {
        pub(super) fn enter(message: Bytes) -> Scope {
            let source = Source {
                message,
                tenants: super::TenantRun::default(),
            };
            Scope(SOURCE.with(|s| s.replace(Some(source))))
        }
    }

    impl Drop for Scope {
        fn drop(&mut self) {
            let before = self.0.take();
            SOURCE.with(|s| *s.borrow_mut() = before);
        }
    }

    fn intern(name: &str) -> Arc<str> {
        SOURCE.with(|s| match s.borrow_mut().as_mut() {
            Some(src) => src.tenants.share(name),
            None => Arc::from(name),
        })
    }

    fn view(data: &[u8]) -> Bytes {
        SOURCE.with(|s| {
            if let Some(src) = s.borrow().as_ref() {
                let (base, at) = (src.message.as_ptr() as usize, data.as_ptr() as usize);
                if at >= base && at + data.len() <= base + src.message.len() {
                    return src.message.slice_ref(data);
                }
            }
            Bytes::copy_from_slice(data)
        })
    }

    struct Tenant;

    impl<'de> Visitor<'de> for Tenant {
        type Value = Arc<str>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a tenant name")
        }

        fn visit_str<E: Error>(self, v: &str) -> Result<Arc<str>, E> {
            Ok(intern(v))
        }
    }

    pub(super) fn tenant<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<str>, D::Error> {
        d.deserialize_str(Tenant)
    }

    struct Data;

    impl<'de> Visitor<'de> for Data {
        type Value = Bytes;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_borrowed_bytes<E: Error>(self, v: &'de [u8]) -> Result<Bytes, E> {
            Ok(view(v))
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Bytes, E> {
            Ok(Bytes::copy_from_slice(v))
        }

        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
            Ok(Bytes::from(v))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
            let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(b) = seq.next_element::<u8>()? {
                v.push(b);
            }
            Ok(Bytes::from(v))
        }
    }

    pub(super) fn data<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        d.deserialize_bytes(Data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a record was before its name and data were shared (`String`, `Vec<u8>` as bytes):
    /// nodes of both kinds must read each other's entries.
    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct OwnedRecord {
        tenant_id: String,
        operation: Operation,
        data: Vec<u8>,
        timestamp: u64,
    }

    #[test]
    fn a_shared_record_has_the_owned_one_s_wire_form() {
        let shared = WriteRecord {
            tenant_id: "tenant-7".into(),
            operation: Operation::Insert,
            data: Bytes::from(vec![0, 1, 2, 255, 128]),
            timestamp: 1_780_000_000_000_000,
        };
        let owned = OwnedRecord {
            tenant_id: "tenant-7".to_owned(),
            operation: Operation::Insert,
            data: vec![0, 1, 2, 255, 128],
            timestamp: 1_780_000_000_000_000,
        };
        let wire = to_wire(&shared).unwrap();
        assert_eq!(wire, to_wire(&owned).unwrap());
        assert_eq!(from_wire::<OwnedRecord>(&wire).unwrap(), owned);
        assert_eq!(from_wire::<WriteRecord>(&wire).unwrap(), shared);
        let sized = to_wire_sized(&shared, 4).unwrap();
        assert_eq!(sized, wire, "a small starting capacity only grows");
    }

    #[test]
    fn a_received_message_s_records_view_it_and_share_their_tenant() {
        let record = |tenant: &str, data: &[u8]| WriteRecord {
            tenant_id: tenant.into(),
            operation: Operation::Insert,
            data: Bytes::copy_from_slice(data),
            timestamp: 7,
        };
        let sent = vec![
            record("a", b"first"),
            record("a", b"second"),
            record("b", b""),
            record("a", b"third"),
        ];
        let message = Bytes::from(to_wire(&sent).unwrap());
        let got: Vec<WriteRecord> = from_wire_shared(&message).unwrap();
        assert_eq!(got, sent);
        let inside = |d: &Bytes| {
            let (base, at) = (message.as_ptr() as usize, d.as_ptr() as usize);
            at >= base && at + d.len() <= base + message.len()
        };
        assert!(
            got.iter()
                .filter(|r| !r.data.is_empty())
                .all(|r| inside(&r.data))
        );
        assert!(Arc::ptr_eq(&got[0].tenant_id, &got[1].tenant_id));
        assert!(
            !Arc::ptr_eq(&got[1].tenant_id, &got[3].tenant_id),
            "a run ends at another tenant"
        );
        // Outside a shared decode (and after one) records are copies, equal all the same.
        let copied: Vec<WriteRecord> = from_wire(&message).unwrap();
        assert_eq!(copied, sent);
        assert!(!inside(&copied[0].data));
        // A truncated message is an error, not a panic, and leaves no scope behind.
        assert!(from_wire_shared::<Vec<WriteRecord>>(&message.slice(..message.len() - 3)).is_err());
        assert!(!inside(
            &from_wire::<Vec<WriteRecord>>(&message).unwrap()[0].data
        ));
    }
}

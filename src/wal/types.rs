//! The WAL's public value types: entries, records to append, frames, segments.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use bytes::Bytes;

/// A record's position in the log: unique, strictly increasing, assigned at append.
pub type SequenceNumber = u64;

/// A segment is named by the log index of its first frame, so listing the folder orders them.
pub type SegmentId = u64;

/// What an entry records. The byte values are stable on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Operation {
    Insert = 1,
    Update = 2,
    Delete = 3,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Insert => "insert",
            Operation::Update => "update",
            Operation::Delete => "delete",
        }
    }
}

impl TryFrom<u8> for Operation {
    type Error = u8;
    /// Rejects unknown values: a byte we do not know is corruption or a newer format.
    fn try_from(v: u8) -> Result<Self, u8> {
        match v {
            1 => Ok(Operation::Insert),
            2 => Ok(Operation::Update),
            3 => Ok(Operation::Delete),
            other => Err(other),
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Operation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "insert" => Ok(Operation::Insert),
            "update" => Ok(Operation::Update),
            "delete" => Ok(Operation::Delete),
            other => Err(format!(
                "unknown operation {other:?}: expected insert, update or delete"
            )),
        }
    }
}

/// A stored log entry, as read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub sequence_number: SequenceNumber,
    /// Microseconds since the Unix epoch, set when the entry was accepted.
    pub timestamp: u64,
    pub tenant_id: String,
    pub operation: Operation,
    pub data: Vec<u8>,
    /// CRC-32 (IEEE) of the entry, see [`crate::wal::record`].
    pub checksum: u32,
}

/// An entry borrowed from the reader's buffer, for replay without allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryRef<'a> {
    pub sequence_number: SequenceNumber,
    pub timestamp: u64,
    pub tenant_id: &'a str,
    pub operation: Operation,
    pub data: &'a [u8],
    pub checksum: u32,
}

impl EntryRef<'_> {
    pub fn to_owned(&self) -> Entry {
        Entry {
            sequence_number: self.sequence_number,
            timestamp: self.timestamp,
            tenant_id: self.tenant_id.to_owned(),
            operation: self.operation,
            data: self.data.to_vec(),
            checksum: self.checksum,
        }
    }
}

/// A record to append. Its sequence number and checksum are assigned by the WAL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub tenant_id: String,
    pub operation: Operation,
    pub data: Vec<u8>,
    /// Microseconds since the Unix epoch; `None` takes the time of the append.
    pub timestamp: Option<u64>,
}

impl Record {
    pub fn new(
        tenant_id: impl Into<String>,
        operation: Operation,
        data: impl Into<Vec<u8>>,
    ) -> Self {
        Record {
            tenant_id: tenant_id.into(),
            operation,
            data: data.into(),
            timestamp: None,
        }
    }
}

/// A record to append whose name and data the caller already holds shared (reference-counted):
/// the WAL reads them where they are, so nothing is copied before the frame is encoded. The
/// same frame as a [`Record`] of the same fields. The Raft log store appends these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedRecord {
    pub tenant_id: Arc<str>,
    pub operation: Operation,
    pub data: Bytes,
    /// Microseconds since the Unix epoch; `None` takes the time of the append.
    pub timestamp: Option<u64>,
}

/// What one frame carries: a batch of records (owned or shared), or an opaque control payload
/// (such as a Raft membership change) that holds no records and is skipped by replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    Records(Vec<Record>),
    Shared(Vec<SharedRecord>),
    Control(Vec<u8>),
}

/// A record's fields as the WAL reads them to check and encode it, whichever form it came in.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RecordView<'a> {
    pub tenant_id: &'a str,
    pub operation: Operation,
    pub data: &'a [u8],
    pub timestamp: Option<u64>,
}

impl Record {
    pub(crate) fn view(&self) -> RecordView<'_> {
        RecordView {
            tenant_id: &self.tenant_id,
            operation: self.operation,
            data: &self.data,
            timestamp: self.timestamp,
        }
    }
}

impl SharedRecord {
    pub(crate) fn view(&self) -> RecordView<'_> {
        RecordView {
            tenant_id: &self.tenant_id,
            operation: self.operation,
            data: &self.data,
            timestamp: self.timestamp,
        }
    }
}

impl Payload {
    /// How many records it holds; `None` for a control payload.
    pub(crate) fn record_count(&self) -> Option<usize> {
        match self {
            Payload::Records(r) => Some(r.len()),
            Payload::Shared(r) => Some(r.len()),
            Payload::Control(_) => None,
        }
    }

    /// Its records' fields, in order (none for a control payload).
    pub(crate) fn record_views(&self) -> impl Iterator<Item = RecordView<'_>> + Clone {
        let (owned, shared): (&[Record], &[SharedRecord]) = match self {
            Payload::Records(r) => (r, &[]),
            Payload::Shared(r) => (&[], r),
            Payload::Control(_) => (&[], &[]),
        };
        owned
            .iter()
            .map(Record::view)
            .chain(shared.iter().map(SharedRecord::view))
    }
}

/// One frame to append. A frame is the unit of atomicity: after a crash it is there whole or not
/// at all.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrameSpec {
    /// The frame's log index; `None` takes the next one. When given it must be the next one.
    pub index: Option<u64>,
    /// The Raft term (0 for standalone use).
    pub term: u64,
    /// The first record's sequence number; `None` takes the next one. When given it must not be
    /// below the next one (gaps are allowed, going back is not).
    pub first_seq: Option<SequenceNumber>,
    /// The idempotency key of the write this frame holds, stored with it so that a state
    /// machine rebuilt from the log knows it too. Only for record frames.
    pub producer: Option<ProducerKey>,
    /// Several client writes coalesced into this one frame, in order, each with its own key
    /// (or none) and its share of the records. Empty for a frame of one write (then `producer`
    /// is its key); when given, `producer` is `None` and the parts cover every record.
    pub parts: Vec<WritePart>,
    pub payload: Payload,
}

/// One client write among several a leader coalesced into one frame: its idempotency key, if
/// any, and how many of the frame's records (the next ones, in order) are its.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WritePart {
    pub producer: Option<ProducerKey>,
    pub records: u32,
}

/// A producer's idempotency key: `(producer_id, producer_seq)`, as in Kafka's idempotent
/// producer. Stored in the frame, outside the records, so it takes no sequence number.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ProducerKey {
    pub id: u64,
    pub seq: u64,
}

impl FrameSpec {
    pub fn records(records: Vec<Record>) -> Self {
        FrameSpec {
            index: None,
            term: 0,
            first_seq: None,
            producer: None,
            parts: Vec::new(),
            payload: Payload::Records(records),
        }
    }
}

/// Where an append landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub first_index: u64,
    pub last_index: u64,
    /// Sequence number of the first record appended.
    pub first_seq: SequenceNumber,
    /// One past the last record's sequence number (`== first_seq` when no record was appended).
    pub next_seq: SequenceNumber,
    /// Timestamp given to records that had none, µs since the Unix epoch.
    pub timestamp: u64,
}

/// A frame read back, for a Raft log reader: index, term and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub index: u64,
    pub term: u64,
    pub first_seq: SequenceNumber,
    pub timestamp: u64,
    pub producer: Option<ProducerKey>,
    /// The client writes coalesced into this frame (see [`FrameSpec::parts`]).
    pub parts: Vec<WritePart>,
    pub payload: FramePayload,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FramePayload {
    Records(Vec<Entry>),
    Control(Vec<u8>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SegmentStatus {
    /// The segment being appended to (always the last one).
    Active,
    /// Full and immutable; its index is persisted beside it.
    Sealed,
}

/// A segment file as listed by [`crate::wal::Manager::segments`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Segment {
    pub id: SegmentId,
    /// Sequence number of the segment's first record (or the next one, if it holds none).
    pub start_seq: SequenceNumber,
    /// Sequence number of its last record; `None` if it holds no record.
    pub end_seq: Option<SequenceNumber>,
    pub first_index: u64,
    /// Log index of its last frame; `None` if it holds no frame.
    pub last_index: Option<u64>,
    /// Bytes used in the file (header and frames).
    pub size: u64,
    pub file_path: PathBuf,
    pub status: SegmentStatus,
    /// Newest record timestamp in it, µs since the Unix epoch (what time retention looks at).
    pub max_timestamp: u64,
}

/// The first visible position of the log: entries before it were truncated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStart {
    pub index: u64,
    pub seq: SequenceNumber,
}

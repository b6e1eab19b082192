//! Records: the entries inside a frame's body, and the entry checksum.
//!
//! Format of one record (little-endian), repeated `record_count` times in a frame body:
//! ```text
//! { timestamp_us: u64 | data_len: u32 | checksum: u32 | operation: u8 | tenant_len: u8 | tenant | data }
//! ```
//! The record's sequence number is not stored: it is the frame's `first_seq` plus the record's
//! position in the frame.
//!
//! Each record stores its entry checksum ([`crate::checksum::entry_checksum`]), computed when the
//! entry is appended.

use super::error::{Corruption, RecordError};
use super::types::{EntryRef, Operation, RecordView, SequenceNumber};
use crate::checksum::entry_checksum;

pub const RECORD_HEADER_LEN: usize = 18;
/// Tenant ids are at most 255 bytes on disk (one length byte).
pub const TENANT_MAX_BYTES: usize = u8::MAX as usize;

impl EntryRef<'_> {
    /// Whether the stored checksum matches the entry's fields.
    pub fn checksum_ok(&self) -> bool {
        entry_checksum(
            self.sequence_number,
            self.timestamp,
            self.operation as u8,
            self.tenant_id,
            self.data,
        ) == self.checksum
    }
}

impl crate::wal::Entry {
    /// Whether the stored checksum matches the entry's fields (what a client verifies).
    pub fn checksum_ok(&self) -> bool {
        entry_checksum(
            self.sequence_number,
            self.timestamp,
            self.operation as u8,
            &self.tenant_id,
            &self.data,
        ) == self.checksum
    }
}

/// Checks what the WAL can check of a record before accepting it.
pub fn validate(record: RecordView<'_>, max_data: usize) -> Result<(), RecordError> {
    let len = record.tenant_id.len();
    if len == 0 {
        return Err(RecordError::EmptyTenant);
    }
    if len > TENANT_MAX_BYTES {
        return Err(RecordError::TenantTooLong {
            len,
            max: TENANT_MAX_BYTES,
        });
    }
    if record.data.len() > max_data {
        return Err(RecordError::DataTooLarge {
            len: record.data.len(),
            max: max_data,
        });
    }
    Ok(())
}

pub fn encoded_len(record: RecordView<'_>) -> usize {
    RECORD_HEADER_LEN + record.tenant_id.len() + record.data.len()
}

/// Appends one record to `buf`. The record must have passed [`validate`].
pub fn encode(buf: &mut Vec<u8>, record: RecordView<'_>, seq: SequenceNumber, default_ts: u64) {
    let ts = record.timestamp.unwrap_or(default_ts);
    let tenant = record.tenant_id.as_bytes();
    let checksum = entry_checksum(
        seq,
        ts,
        record.operation as u8,
        record.tenant_id,
        record.data,
    );
    buf.extend_from_slice(&ts.to_le_bytes());
    buf.extend_from_slice(&(record.data.len() as u32).to_le_bytes());
    buf.extend_from_slice(&checksum.to_le_bytes());
    buf.push(record.operation as u8);
    buf.push(tenant.len() as u8);
    buf.extend_from_slice(tenant);
    buf.extend_from_slice(record.data);
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Decodes the records of one frame body without copying.
pub struct Records<'a> {
    body: &'a [u8],
    next_seq: SequenceNumber,
    left: u32,
}

impl<'a> Records<'a> {
    pub fn new(body: &'a [u8], first_seq: SequenceNumber, count: u32) -> Self {
        Records {
            body,
            next_seq: first_seq,
            left: count,
        }
    }

    /// Whether the body held exactly `count` records and nothing more.
    pub fn finished_cleanly(&self) -> bool {
        self.left == 0 && self.body.is_empty()
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<EntryRef<'a>, Corruption>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        Some(self.decode_one())
    }
}

impl<'a> Records<'a> {
    fn decode_one(&mut self) -> Result<EntryRef<'a>, Corruption> {
        let b = self.body;
        if b.len() < RECORD_HEADER_LEN {
            return Err(Corruption::BadRecord("record header cut short"));
        }
        let timestamp = u64_at(b, 0);
        let data_len = u32_at(b, 8) as usize;
        let checksum = u32_at(b, 12);
        let operation = Operation::try_from(b[16]).map_err(Corruption::UnknownOperation)?;
        let tenant_len = b[17] as usize;
        let end = RECORD_HEADER_LEN + tenant_len + data_len;
        if b.len() < end {
            return Err(Corruption::BadRecord("record longer than its frame"));
        }
        let tenant_id = std::str::from_utf8(&b[RECORD_HEADER_LEN..RECORD_HEADER_LEN + tenant_len])
            .map_err(|_| Corruption::BadRecord("tenant id is not UTF-8"))?;
        let data = &b[RECORD_HEADER_LEN + tenant_len..end];
        self.body = &b[end..];
        let sequence_number = self.next_seq;
        self.next_seq += 1;
        Ok(EntryRef {
            sequence_number,
            timestamp,
            tenant_id,
            operation,
            data,
            checksum,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::types::Record;

    #[test]
    fn round_trip_and_checksum() {
        let recs = [
            Record::new("tenant-a", Operation::Insert, b"hello".to_vec()),
            Record {
                timestamp: Some(7),
                ..Record::new("b", Operation::Delete, Vec::new())
            },
        ];
        let mut buf = Vec::new();
        for (i, r) in recs.iter().enumerate() {
            encode(&mut buf, r.view(), 100 + i as u64, 42);
        }
        let mut it = Records::new(&buf, 100, 2);
        let a = it.next().unwrap().unwrap();
        assert_eq!(
            (a.sequence_number, a.timestamp, a.tenant_id, a.data),
            (100, 42, "tenant-a", &b"hello"[..])
        );
        assert!(a.checksum_ok());
        let b = it.next().unwrap().unwrap();
        assert_eq!(
            (b.sequence_number, b.timestamp, b.operation),
            (101, 7, Operation::Delete)
        );
        assert!(b.checksum_ok());
        assert!(it.next().is_none() && it.finished_cleanly());
    }

    #[test]
    fn unknown_operation_is_rejected() {
        let mut buf = Vec::new();
        encode(
            &mut buf,
            Record::new("t", Operation::Update, b"x".to_vec()).view(),
            1,
            1,
        );
        buf[16] = 9;
        assert_eq!(
            Records::new(&buf, 1, 1).next().unwrap(),
            Err(Corruption::UnknownOperation(9))
        );
    }

    #[test]
    fn lengths_past_the_body_are_rejected() {
        let mut buf = Vec::new();
        encode(
            &mut buf,
            Record::new("t", Operation::Insert, b"abc".to_vec()).view(),
            1,
            1,
        );
        buf[8] = 200;
        assert!(matches!(
            Records::new(&buf, 1, 1).next().unwrap(),
            Err(Corruption::BadRecord(_))
        ));
        assert!(matches!(
            Records::new(&buf[..10], 1, 1).next().unwrap(),
            Err(Corruption::BadRecord(_))
        ));
    }

    #[test]
    fn a_changed_field_fails_the_entry_checksum() {
        let mut buf = Vec::new();
        encode(
            &mut buf,
            Record::new("t", Operation::Insert, b"abc".to_vec()).view(),
            5,
            1,
        );
        let e = Records::new(&buf, 5, 1).next().unwrap().unwrap();
        assert!(
            !EntryRef {
                sequence_number: 6,
                ..e
            }
            .checksum_ok()
        );
        assert!(!EntryRef { data: b"abd", ..e }.checksum_ok());
    }

    #[test]
    fn validation() {
        assert_eq!(
            validate(Record::new("", Operation::Insert, vec![]).view(), 10),
            Err(RecordError::EmptyTenant)
        );
        let long = "x".repeat(256);
        assert!(matches!(
            validate(Record::new(long, Operation::Insert, vec![]).view(), 10),
            Err(RecordError::TenantTooLong { .. })
        ));
        assert!(matches!(
            validate(Record::new("t", Operation::Insert, vec![0; 11]).view(), 10),
            Err(RecordError::DataTooLarge { .. })
        ));
    }
}

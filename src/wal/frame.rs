//! Frames: the unit written to a segment. One frame holds one batch of records (or one control
//! payload) and is atomic: a reader accepts it whole or rejects it.
//!
//! Format (little-endian), a 64-byte header followed by the body:
//! ```text
//!  0 magic: u32          FRAME_MAGIC
//!  4 version: u8         FRAME_VERSION
//!  5 flags: u8           bit 0: body is zstd-compressed; bit 1: body is a control payload;
//!                       bit 2: the raw body starts with a producer key (id: u64, seq: u64);
//!                       bit 3: the raw body starts with a parts table (several client writes
//!                       coalesced into this frame): count: u32, then per part id: u64,
//!                       seq: u64, records: u32, keyed: u32 (1 when id/seq are a key, else 0)
//!  6 reserved: u16       zero
//!  8 body_len: u32       bytes of body stored after the header
//! 12 raw_len: u32        bytes of body once decompressed (== body_len when not compressed)
//! 16 record_count: u32   records in the body (0 for control frames)
//! 20 synced_upto: u32    bytes of this segment known durable when the frame was written
//! 24 index: u64          log index (frames of a log are numbered 1, 2, 3, ... without gaps)
//! 32 term: u64           Raft term (0 outside Raft)
//! 40 first_seq: u64      sequence number of the first record
//! 48 timestamp: u64      newest record timestamp, µs since the Unix epoch
//! 56 reserved: u32       zero
//! 60 crc: u32            CRC-32 of bytes 0..60 and of the body
//! ```
//! `synced_upto` lets recovery tell a torn tail from corruption: if a valid frame says bytes up
//! to X were durable, a bad frame below X was damaged after it was fsync'd.

use super::error::Corruption;
use super::record::{self, RECORD_HEADER_LEN};
use super::types::{Payload, ProducerKey, WritePart};

pub const FRAME_HEADER_LEN: usize = 64;
pub const FRAME_MAGIC: u32 = 0x5246_4C57; // "WLFR"
pub const FRAME_VERSION: u8 = 1;
pub const FLAG_COMPRESSED: u8 = 1;
pub const FLAG_CONTROL: u8 = 2;
pub const FLAG_PRODUCER: u8 = 4;
pub const FLAG_PARTS: u8 = 8;
/// Bytes of the producer key at the start of a raw body with `FLAG_PRODUCER`.
pub const PRODUCER_KEY_LEN: usize = 16;
/// Bytes of one part in the parts table of a raw body with `FLAG_PARTS` (after its count).
pub const PART_LEN: usize = 24;
const CRC_AT: usize = 60;
const _: () = assert!(CRC_AT + 4 == FRAME_HEADER_LEN);

/// A raw body split: its producer key, its parts (see [`FrameHeader::split_keys`]) and its
/// records' bytes.
pub type Keys<'a> = (Option<ProducerKey>, Vec<WritePart>, &'a [u8]);

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub flags: u8,
    pub body_len: u32,
    pub raw_len: u32,
    pub record_count: u32,
    pub synced_upto: u32,
    pub index: u64,
    pub term: u64,
    pub first_seq: u64,
    pub timestamp: u64,
    pub crc: u32,
}

impl FrameHeader {
    pub fn frame_len(&self) -> u64 {
        FRAME_HEADER_LEN as u64 + u64::from(self.body_len)
    }

    pub fn is_control(&self) -> bool {
        self.flags & FLAG_CONTROL != 0
    }

    pub fn is_compressed(&self) -> bool {
        self.flags & FLAG_COMPRESSED != 0
    }

    /// Splits a raw body into its producer key, its parts (decoded when `parts` is asked for,
    /// else skipped) and its records.
    pub fn split_keys<'a>(&self, raw: &'a [u8], parts: bool) -> Result<Keys<'a>, Corruption> {
        let u64_at = |b: &[u8], at: usize| {
            let mut a = [0; 8];
            a.copy_from_slice(&b[at..at + 8]);
            u64::from_le_bytes(a)
        };
        let u32_at = |b: &[u8], at: usize| {
            let mut a = [0; 4];
            a.copy_from_slice(&b[at..at + 4]);
            u32::from_le_bytes(a)
        };
        if self.flags & FLAG_PARTS != 0 {
            if raw.len() < 4 {
                return Err(Corruption::BadRecord("parts table cut short"));
            }
            let n = u32_at(raw, 0) as usize;
            let end = n
                .checked_mul(PART_LEN)
                .and_then(|l| l.checked_add(4))
                .filter(|end| *end <= raw.len())
                .ok_or(Corruption::BadRecord("parts table cut short"))?;
            let (table, rest) = raw.split_at(end);
            let mut out = Vec::new();
            if parts {
                out.reserve(n);
                let mut total = 0u64;
                for p in table[4..].chunks_exact(PART_LEN) {
                    let records = u32_at(p, 16);
                    total += u64::from(records);
                    out.push(WritePart {
                        producer: (u32_at(p, 20) == 1).then(|| ProducerKey {
                            id: u64_at(p, 0),
                            seq: u64_at(p, 8),
                        }),
                        records,
                    });
                }
                if total != u64::from(self.record_count) {
                    return Err(Corruption::BadRecord("parts do not cover the records"));
                }
            }
            return Ok((None, out, rest));
        }
        if self.flags & FLAG_PRODUCER == 0 {
            return Ok((None, Vec::new(), raw));
        }
        if raw.len() < PRODUCER_KEY_LEN {
            return Err(Corruption::BadRecord("producer key cut short"));
        }
        let (key, rest) = raw.split_at(PRODUCER_KEY_LEN);
        Ok((
            Some(ProducerKey {
                id: u64_at(key, 0),
                seq: u64_at(key, 8),
            }),
            Vec::new(),
            rest,
        ))
    }

    /// The records of a raw body (after its producer key, if any).
    pub fn records<'a>(&self, raw: &'a [u8]) -> Result<record::Records<'a>, Corruption> {
        let (_, _, rest) = self.split_keys(raw, false)?;
        Ok(record::Records::new(
            rest,
            self.first_seq,
            self.record_count,
        ))
    }

    /// One past the sequence number of the frame's last record.
    pub fn next_seq(&self) -> u64 {
        self.first_seq + u64::from(self.record_count)
    }

    fn write_fields(&self, h: &mut [u8]) {
        h[0..4].copy_from_slice(&FRAME_MAGIC.to_le_bytes());
        h[4] = FRAME_VERSION;
        h[5] = self.flags;
        h[6..8].fill(0);
        h[8..12].copy_from_slice(&self.body_len.to_le_bytes());
        h[12..16].copy_from_slice(&self.raw_len.to_le_bytes());
        h[16..20].copy_from_slice(&self.record_count.to_le_bytes());
        h[20..24].copy_from_slice(&self.synced_upto.to_le_bytes());
        h[24..32].copy_from_slice(&self.index.to_le_bytes());
        h[32..40].copy_from_slice(&self.term.to_le_bytes());
        h[40..48].copy_from_slice(&self.first_seq.to_le_bytes());
        h[48..56].copy_from_slice(&self.timestamp.to_le_bytes());
        h[56..60].fill(0);
    }

    /// Decodes a header; `max_body` bounds both lengths so corrupt bytes cannot make us allocate.
    pub fn decode(h: &[u8], max_body: u32) -> Result<FrameHeader, Corruption> {
        if h.len() < FRAME_HEADER_LEN {
            return Err(Corruption::Truncated);
        }
        let u32_at = |at: usize| u32::from_le_bytes([h[at], h[at + 1], h[at + 2], h[at + 3]]);
        let u64_at = |at: usize| u64::from(u32_at(at)) | (u64::from(u32_at(at + 4)) << 32);
        if u32_at(0) != FRAME_MAGIC {
            return Err(Corruption::BadMagic);
        }
        if h[4] != FRAME_VERSION {
            return Err(Corruption::UnsupportedVersion(h[4]));
        }
        let header = FrameHeader {
            flags: h[5],
            body_len: u32_at(8),
            raw_len: u32_at(12),
            record_count: u32_at(16),
            synced_upto: u32_at(20),
            index: u64_at(24),
            term: u64_at(32),
            first_seq: u64_at(40),
            timestamp: u64_at(48),
            crc: u32_at(CRC_AT),
        };
        let reserved_clear = h[6] == 0
            && h[7] == 0
            && u32_at(56) == 0
            && header.flags & !(FLAG_COMPRESSED | FLAG_CONTROL | FLAG_PRODUCER | FLAG_PARTS) == 0;
        if !reserved_clear {
            return Err(Corruption::BadRecord("reserved header bits set"));
        }
        for len in [header.body_len, header.raw_len] {
            if len > max_body {
                return Err(Corruption::BadLength(u64::from(len)));
            }
        }
        Ok(header)
    }

    /// Checks the frame's CRC over its header bytes and its stored body.
    pub fn verify(&self, header_bytes: &[u8], body: &[u8]) -> Result<(), Corruption> {
        let computed = frame_crc(&header_bytes[..CRC_AT], body);
        if computed == self.crc {
            Ok(())
        } else {
            Err(Corruption::BadChecksum {
                stored: self.crc,
                computed,
            })
        }
    }
}

/// Sets the `synced_upto` of an encoded frame (at the start of `frame`) and recomputes its CRC.
pub fn reseal_synced_upto(frame: &mut [u8], synced_upto: u32) {
    frame[20..24].copy_from_slice(&synced_upto.to_le_bytes());
    let (head, body) = frame.split_at_mut(FRAME_HEADER_LEN);
    let body_len = u32::from_le_bytes([head[8], head[9], head[10], head[11]]) as usize;
    let crc = frame_crc(&head[..CRC_AT], &body[..body_len.min(body.len())]);
    head[CRC_AT..FRAME_HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
}

fn frame_crc(header: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(header);
    h.update(body);
    h.finalize()
}

/// What the writer knows about a frame before encoding it.
pub struct FrameMeta<'a> {
    pub index: u64,
    pub term: u64,
    pub first_seq: u64,
    pub synced_upto: u32,
    /// Timestamp for records that carry none.
    pub default_ts: u64,
    pub producer: Option<ProducerKey>,
    /// The client writes coalesced into the frame (empty for one write).
    pub parts: &'a [WritePart],
}

/// Upper bound of the encoded length of a payload with `parts` (compression only ever shrinks
/// it).
pub fn max_encoded_len(payload: &Payload, parts: usize) -> usize {
    FRAME_HEADER_LEN
        + match payload {
            Payload::Control(bytes) => bytes.len(),
            Payload::Records(_) | Payload::Shared(_) => {
                PRODUCER_KEY_LEN.max(parts_len(parts))
                    + payload
                        .record_views()
                        .map(record::encoded_len)
                        .sum::<usize>()
            }
        }
}

/// Where the records start in a raw body with `parts` parts or, without parts, a producer key.
pub fn records_at(parts: usize, producer: bool) -> usize {
    match (parts, producer) {
        (0, true) => PRODUCER_KEY_LEN,
        (n, _) => parts_len(n),
    }
}

/// Bytes of a parts table of `n` parts (none when `n` is 0).
pub fn parts_len(n: usize) -> usize {
    if n == 0 { 0 } else { 4 + n * PART_LEN }
}

/// The most bytes a frame of `records` records takes, carrying `data_bytes` of data in all and
/// tenant ids of at most `tenant_bytes` bytes each (uncompressed: compression only shrinks it).
/// What a caller checks its batch limits against `max_frame_bytes` with.
pub fn max_batch_frame_len(records: u64, data_bytes: u64, tenant_bytes: u64) -> u64 {
    let per_record = RECORD_HEADER_LEN as u64 + tenant_bytes;
    // A coalesced frame has at most one part per record.
    let keys = (PRODUCER_KEY_LEN as u64).max(parts_len(records as usize) as u64);
    FRAME_HEADER_LEN as u64 + keys + records * per_record + data_bytes
}

/// Reusable state for encoding frames: a zstd context and a scratch buffer.
pub struct Encoder {
    compressor: Option<(zstd::bulk::Compressor<'static>, usize)>,
    scratch: Vec<u8>,
}

impl Encoder {
    /// `compression`: zstd level and the smallest body worth compressing.
    pub fn new(compression: Option<(i32, usize)>) -> std::io::Result<Self> {
        let compressor = match compression {
            Some((level, min)) => Some((zstd::bulk::Compressor::new(level)?, min)),
            None => None,
        };
        Ok(Encoder {
            compressor,
            scratch: Vec::new(),
        })
    }

    /// Appends one encoded frame to `buf` and returns its header. Records must be validated and
    /// the body must fit in `u32` (the caller enforces `max_frame_bytes`).
    pub fn encode(
        &mut self,
        buf: &mut Vec<u8>,
        meta: &FrameMeta,
        payload: &Payload,
    ) -> FrameHeader {
        let start = buf.len();
        buf.resize(start + FRAME_HEADER_LEN, 0);
        let (mut flags, mut timestamp) = (0, 0u64);
        let record_count = match payload {
            Payload::Records(_) | Payload::Shared(_) => {
                if !meta.parts.is_empty() {
                    flags |= FLAG_PARTS;
                    buf.extend_from_slice(&(meta.parts.len() as u32).to_le_bytes());
                    for p in meta.parts {
                        let key = p.producer.unwrap_or(ProducerKey { id: 0, seq: 0 });
                        buf.extend_from_slice(&key.id.to_le_bytes());
                        buf.extend_from_slice(&key.seq.to_le_bytes());
                        buf.extend_from_slice(&p.records.to_le_bytes());
                        buf.extend_from_slice(&u32::from(p.producer.is_some()).to_le_bytes());
                    }
                } else if let Some(key) = meta.producer {
                    flags |= FLAG_PRODUCER;
                    buf.extend_from_slice(&key.id.to_le_bytes());
                    buf.extend_from_slice(&key.seq.to_le_bytes());
                }
                for (i, r) in payload.record_views().enumerate() {
                    record::encode(buf, r, meta.first_seq + i as u64, meta.default_ts);
                    timestamp = timestamp.max(r.timestamp.unwrap_or(meta.default_ts));
                }
                payload.record_count().unwrap_or(0) as u32
            }
            Payload::Control(bytes) => {
                flags |= FLAG_CONTROL;
                buf.extend_from_slice(bytes);
                timestamp = meta.default_ts;
                0
            }
        };
        let raw_len = (buf.len() - start - FRAME_HEADER_LEN) as u32;
        let min = self.compressor.as_ref().map(|(_, min)| *min);
        if min.is_some_and(|min| raw_len as usize >= min) && self.try_compress(start, buf) {
            flags |= FLAG_COMPRESSED;
        }
        let header = FrameHeader {
            flags,
            body_len: (buf.len() - start - FRAME_HEADER_LEN) as u32,
            raw_len,
            record_count,
            synced_upto: meta.synced_upto,
            index: meta.index,
            term: meta.term,
            first_seq: meta.first_seq,
            timestamp,
            crc: 0,
        };
        let (head, body) = buf[start..].split_at_mut(FRAME_HEADER_LEN);
        header.write_fields(head);
        let crc = frame_crc(&head[..CRC_AT], body);
        head[CRC_AT..].copy_from_slice(&crc.to_le_bytes());
        FrameHeader { crc, ..header }
    }

    /// Replaces the body that starts at `start + FRAME_HEADER_LEN` with its zstd form if smaller.
    fn try_compress(&mut self, start: usize, buf: &mut Vec<u8>) -> bool {
        let Some((compressor, _)) = &mut self.compressor else {
            return false;
        };
        let body = &buf[start + FRAME_HEADER_LEN..];
        self.scratch.clear();
        self.scratch
            .reserve(zstd::zstd_safe::compress_bound(body.len()));
        match compressor.compress_to_buffer(body, &mut self.scratch) {
            Ok(n) if n < body.len() => {
                buf.truncate(start + FRAME_HEADER_LEN);
                buf.extend_from_slice(&self.scratch);
                true
            }
            // An incompressible body (or a zstd failure) is stored as it is.
            _ => false,
        }
    }
}

/// Returns the frame's raw body: `stored` itself, or its decompressed form in `scratch`.
pub fn raw_body<'a>(
    header: &FrameHeader,
    stored: &'a [u8],
    scratch: &'a mut Vec<u8>,
) -> Result<&'a [u8], Corruption> {
    if !header.is_compressed() {
        return Ok(stored);
    }
    scratch.clear();
    scratch.resize(header.raw_len as usize, 0);
    let n = zstd::bulk::decompress_to_buffer(stored, &mut scratch[..])
        .map_err(|e| Corruption::Decompress(e.to_string()))?;
    if n != header.raw_len as usize {
        return Err(Corruption::Decompress(format!(
            "{n} bytes where the header says {}",
            header.raw_len
        )));
    }
    Ok(&scratch[..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal::record::Records;
    use crate::wal::types::{Operation, Record};

    #[test]
    fn a_batch_frame_takes_at_most_its_bound() {
        let recs: Vec<Record> = (0..5)
            .map(|i| Record::new("t".repeat(128), Operation::Insert, vec![0u8; i * 10]))
            .collect();
        let data: u64 = recs.iter().map(|r| r.data.len() as u64).sum();
        let exact = max_encoded_len(&Payload::Records(recs), 5) as u64;
        assert_eq!(exact, max_batch_frame_len(5, data, 128));
        assert!(max_batch_frame_len(5, data, 255) > exact);
    }

    fn meta() -> FrameMeta<'static> {
        FrameMeta {
            index: 7,
            term: 3,
            first_seq: 100,
            synced_upto: 40,
            default_ts: 1_000,
            producer: None,
            parts: &[],
        }
    }

    fn payload(n: usize, data: &[u8]) -> Payload {
        Payload::Records(
            (0..n)
                .map(|i| Record::new(format!("t{i}"), Operation::Insert, data.to_vec()))
                .collect(),
        )
    }

    fn encode_one(compression: Option<(i32, usize)>, p: &Payload) -> (Vec<u8>, FrameHeader) {
        let mut buf = Vec::new();
        let h = Encoder::new(compression)
            .unwrap()
            .encode(&mut buf, &meta(), p);
        (buf, h)
    }

    fn decode(buf: &[u8]) -> Result<(FrameHeader, Vec<u8>), Corruption> {
        let h = FrameHeader::decode(buf, 1 << 20)?;
        let body = buf
            .get(FRAME_HEADER_LEN..FRAME_HEADER_LEN + h.body_len as usize)
            .ok_or(Corruption::Truncated)?;
        h.verify(buf, body)?;
        let mut scratch = Vec::new();
        Ok((h, raw_body(&h, body, &mut scratch)?.to_vec()))
    }

    /// Shared records are the same frame as owned ones of the same fields, compressed or not,
    /// and have the same bound.
    #[test]
    fn shared_records_encode_as_owned_ones() {
        let owned: Vec<Record> = (0..40u8)
            .map(|i| Record {
                timestamp: (i % 3 == 0).then_some(5_000 + u64::from(i)),
                ..Record::new(format!("tenant-{}", i % 4), Operation::Update, vec![i; 64])
            })
            .collect();
        let shared: Vec<crate::wal::SharedRecord> = owned
            .iter()
            .map(|r| crate::wal::SharedRecord {
                tenant_id: r.tenant_id.as_str().into(),
                operation: r.operation,
                data: r.data.clone().into(),
                timestamp: r.timestamp,
            })
            .collect();
        let (owned, shared) = (Payload::Records(owned), Payload::Shared(shared));
        assert_eq!(max_encoded_len(&owned, 0), max_encoded_len(&shared, 0));
        for compression in [None, Some((3, 16))] {
            let (a, ha) = encode_one(compression, &owned);
            let (b, hb) = encode_one(compression, &shared);
            assert_eq!(a, b);
            assert_eq!((ha.record_count, ha.timestamp), (40, 5_039));
            assert_eq!(
                (ha.record_count, ha.timestamp, ha.crc),
                (hb.record_count, hb.timestamp, hb.crc)
            );
        }
    }

    #[test]
    fn round_trip_plain_and_compressed() {
        let p = payload(50, &[b'a'; 200]);
        for compression in [None, Some((3, 64))] {
            let (buf, written) = encode_one(compression, &p);
            let (h, body) = decode(&buf).unwrap();
            assert_eq!(h, written);
            assert_eq!(h.is_compressed(), compression.is_some());
            assert_eq!(
                (h.index, h.term, h.first_seq, h.record_count, h.synced_upto),
                (7, 3, 100, 50, 40)
            );
            let recs: Vec<_> = Records::new(&body, h.first_seq, h.record_count)
                .map(Result::unwrap)
                .collect();
            assert_eq!(recs.len(), 50);
            assert_eq!(recs[49].sequence_number, 149);
            assert!(
                recs.iter()
                    .all(|e| e.checksum_ok() && e.data == [b'a'; 200])
            );
        }
    }

    #[test]
    fn producer_key_round_trips_and_takes_no_sequence_number() {
        let key = ProducerKey { id: 42, seq: 7 };
        let p = payload(3, b"abc");
        for compression in [None, Some((3, 1))] {
            let mut buf = Vec::new();
            let m = FrameMeta {
                producer: Some(key),
                ..meta()
            };
            let written = Encoder::new(compression).unwrap().encode(&mut buf, &m, &p);
            let (h, body) = decode(&buf).unwrap();
            assert_eq!(h, written);
            assert_eq!(h.split_keys(&body, true).unwrap().0, Some(key));
            let seqs: Vec<_> = h
                .records(&body)
                .unwrap()
                .map(|r| r.unwrap().sequence_number)
                .collect();
            assert_eq!(seqs, [100, 101, 102]);
            // A body too short to hold the key is corruption, not a panic.
            assert!(h.split_keys(&body[..10], false).is_err());
        }
    }

    #[test]
    fn coalesced_parts_round_trip_and_take_no_sequence_number() {
        let parts = [
            WritePart {
                producer: Some(ProducerKey { id: 9, seq: 4 }),
                records: 2,
            },
            WritePart {
                producer: None,
                records: 1,
            },
        ];
        let p = payload(3, b"abc");
        for compression in [None, Some((3, 1))] {
            let mut buf = Vec::new();
            let m = FrameMeta {
                parts: &parts,
                ..meta()
            };
            let written = Encoder::new(compression).unwrap().encode(&mut buf, &m, &p);
            let (h, body) = decode(&buf).unwrap();
            assert_eq!(h, written);
            let (key, got, _) = h.split_keys(&body, true).unwrap();
            assert_eq!((key, got.as_slice()), (None, &parts[..]));
            let seqs: Vec<_> = h
                .records(&body)
                .unwrap()
                .map(|r| r.unwrap().sequence_number)
                .collect();
            assert_eq!(seqs, [100, 101, 102]);
            // A table cut short, or one that does not cover the records, is corruption.
            assert!(h.split_keys(&body[..30], true).is_err());
            let mut h2 = h;
            h2.record_count = 4;
            assert!(h2.split_keys(&body, true).is_err());
        }
    }

    #[test]
    fn incompressible_bodies_stay_plain_and_control_frames_round_trip() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let (buf, h) = encode_one(Some((3, 16)), &Payload::Control(noise.clone()));
        assert!(h.is_control() && !h.is_compressed() && h.record_count == 0);
        assert_eq!(decode(&buf).unwrap().1, noise);
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let (buf, _) = encode_one(None, &payload(2, b"xyz"));
        for bit in 0..buf.len() * 8 {
            let mut bad = buf.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(decode(&bad).is_err(), "flip of bit {bit} went unnoticed");
        }
    }

    #[test]
    fn each_corruption_case_is_named() {
        let (buf, _) = encode_one(None, &payload(1, b"xyz"));
        let mut bad = buf.clone();
        bad[0] ^= 1;
        assert_eq!(decode(&bad).unwrap_err(), Corruption::BadMagic);
        let mut bad = buf.clone();
        bad[4] = 9;
        assert_eq!(decode(&bad).unwrap_err(), Corruption::UnsupportedVersion(9));
        let mut bad = buf.clone();
        bad[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode(&bad).unwrap_err(),
            Corruption::BadLength(u64::from(u32::MAX))
        );
        let mut bad = buf.clone();
        *bad.last_mut().unwrap() ^= 0x80;
        assert!(matches!(
            decode(&bad).unwrap_err(),
            Corruption::BadChecksum { .. }
        ));
        assert_eq!(
            decode(&buf[..buf.len() - 1]).unwrap_err(),
            Corruption::Truncated
        );
        assert_eq!(decode(&buf[..10]).unwrap_err(), Corruption::Truncated);
    }

    #[test]
    fn corrupt_compressed_body_is_reported() {
        let (buf, h) = encode_one(Some((3, 64)), &payload(50, &[b'a'; 200]));
        assert!(h.is_compressed());
        let mut scratch = Vec::new();
        let body = &buf[FRAME_HEADER_LEN..];
        let lying = FrameHeader {
            raw_len: h.raw_len + 1,
            ..h
        };
        assert!(matches!(
            raw_body(&lying, body, &mut scratch),
            Err(Corruption::Decompress(_))
        ));
    }
}

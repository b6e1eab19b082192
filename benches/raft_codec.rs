//! Criterion benchmark of what a follower pays to decode the entries an AppendEntries brings
//! (`cargo bench --bench raft_codec`): one message of 4 entries of 250 records of 100 B, one
//! tenant, decoded `copied` (each record's name and data allocated and copied: `from_wire`)
//! and `shared` (each record's data a view of the message, one name per run of a tenant:
//! `from_wire_shared`, as the Raft service decodes). `entry/clone` is the copy of one entry
//! openraft and the entry cache make for each follower's replication and for the state machine.
//! `read_back/frame_to_entry` turns one WAL frame of 250 records (read back for a lagging
//! follower, or at start) into the Raft entry it stores.

use bytes::Bytes;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use openraft::entry::RaftEntry;
use openraft::raft::AppendEntriesRequest;
use replog::raft::log_store::frame_to_entry;
use replog::raft::types::{
    Entry, LogId, Request, TypeConfig, WriteRecord, from_wire, from_wire_shared, to_wire,
};
use replog::wal::{Frame, FramePayload, Operation};

const RECORDS: usize = 250;
const ENTRIES: u64 = 4;

fn entry(index: u64) -> Entry {
    let records = (0..RECORDS)
        .map(|i| WriteRecord {
            tenant_id: "bench-0".into(),
            operation: Operation::Insert,
            data: Bytes::from(vec![i as u8; 100]),
            timestamp: 1_780_000_000_000_000 + i as u64,
        })
        .collect::<Vec<_>>();
    Entry::new(
        LogId::new_term_index(3, index),
        openraft::EntryPayload::Normal(Request::Write {
            producer: None,
            records: records.into(),
        }),
    )
}

fn decode(c: &mut Criterion) {
    let req: AppendEntriesRequest<TypeConfig> = AppendEntriesRequest {
        vote: openraft::impls::Vote::new_committed(3, 1),
        prev_log_id: Some(LogId::new_term_index(3, 10)),
        entries: (11..11 + ENTRIES).map(entry).collect(),
        leader_commit: Some(LogId::new_term_index(3, 10)),
    };
    let message = Bytes::from(to_wire(&req).expect("encodable"));
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(RECORDS as u64 * ENTRIES));
    g.bench_function("copied", |b| {
        b.iter(|| {
            from_wire::<AppendEntriesRequest<TypeConfig>>(std::hint::black_box(&message))
                .expect("decodable")
        })
    });
    g.bench_function("shared", |b| {
        b.iter(|| {
            from_wire_shared::<AppendEntriesRequest<TypeConfig>>(std::hint::black_box(&message))
                .expect("decodable")
        })
    });
    g.finish();
    let one = entry(11);
    let mut g = c.benchmark_group("entry");
    g.throughput(Throughput::Elements(RECORDS as u64));
    g.bench_function("clone", |b| b.iter(|| std::hint::black_box(&one).clone()));
    g.finish();
}

fn read_back(c: &mut Criterion) {
    let records = (0..RECORDS)
        .map(|i| replog::wal::Entry {
            sequence_number: 1_000 + i as u64,
            timestamp: 1_780_000_000_000_000,
            tenant_id: "bench-0".to_owned(),
            operation: Operation::Insert,
            data: vec![i as u8; 100],
            checksum: 0,
        })
        .collect();
    let frame = Frame {
        index: 12,
        term: 3,
        first_seq: 1_000,
        timestamp: 1_780_000_000_000_000,
        producer: None,
        parts: Vec::new(),
        payload: FramePayload::Records(records),
    };
    let mut g = c.benchmark_group("read_back");
    g.throughput(Throughput::Elements(RECORDS as u64));
    g.bench_function("frame_to_entry", |b| {
        b.iter_batched(
            || frame.clone(),
            |f| frame_to_entry(f).expect("a records frame"),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, decode, read_back);
criterion_main!(benches);

//! The entry checksum: CRC32 over an entry's fields, stored in the WAL and sent with every
//! replayed entry so the client can check it end to end. A leaf: the WAL and the client both
//! use it, and it imports nothing from the crate.

/// The checksum a reader should find in an entry with these fields (`op` is the operation's
/// code, 1-3).
pub fn entry_checksum(seq: u64, timestamp: u64, op: u8, tenant: &str, data: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(&timestamp.to_le_bytes());
    // Tenant ids are at most 255 bytes (the WAL checks it before computing this).
    h.update(&[op, tenant.len() as u8]);
    h.update(tenant.as_bytes());
    h.update(data);
    h.finalize()
}

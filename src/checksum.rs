//! The entry checksum: computed when an entry is accepted, stored in its WAL frame, and checked
//! again by whoever reads the entry (the WAL's scrubs and `verify`, the client on replay), so a
//! bit flipped anywhere on the way is caught.
//!
//! It is CRC-32 (IEEE, as computed by `crc32fast`) of
//! `sequence_number: u64 LE | timestamp_us: u64 LE | operation: u8 | tenant_len: u8 | tenant | data`,
//! so it covers every field a reader sees. `tenant_len` is the tenant's length in bytes, at most
//! 255 (the WAL refuses longer tenant ids).
//!
//! A leaf: it imports nothing from the crate, so the client and the WAL share it without the
//! client knowing the WAL's types.

/// The checksum a reader should find in an entry with these fields. `operation` is the
/// operation's code on the wire and on disk (1 insert, 2 update, 3 delete).
pub fn entry_checksum(
    sequence_number: u64,
    timestamp_us: u64,
    operation: u8,
    tenant: &str,
    data: &[u8],
) -> u32 {
    debug_assert!(
        tenant.len() <= usize::from(u8::MAX),
        "tenant id longer than 255 bytes"
    );
    let mut h = crc32fast::Hasher::new();
    h.update(&sequence_number.to_le_bytes());
    h.update(&timestamp_us.to_le_bytes());
    h.update(&[operation, tenant.len() as u8]);
    h.update(tenant.as_bytes());
    h.update(data);
    h.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_is_covered() {
        let base = entry_checksum(7, 9, 1, "t", b"data");
        assert_ne!(base, entry_checksum(8, 9, 1, "t", b"data"));
        assert_ne!(base, entry_checksum(7, 10, 1, "t", b"data"));
        assert_ne!(base, entry_checksum(7, 9, 2, "t", b"data"));
        assert_ne!(base, entry_checksum(7, 9, 1, "u", b"data"));
        assert_ne!(base, entry_checksum(7, 9, 1, "t", b"date"));
    }
}

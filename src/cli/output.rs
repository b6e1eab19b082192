//! How the CLI prints entries and segments: JSON lines or aligned text.

use std::io::{self, Write};
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine;
use clap::ValueEnum;
use serde::Serialize;

use crate::wal::{EntryRef, Segment};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// RFC 3339 with microseconds, UTC.
pub fn rfc3339(timestamp_us: u64) -> String {
    humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_micros(timestamp_us)).to_string()
}

/// An entry as JSON: `data` is the UTF-8 text when it is valid UTF-8; otherwise it is base64
/// and `data_encoding` says so.
#[derive(Serialize)]
pub struct EntryJson<'a> {
    pub sequence: u64,
    pub timestamp: String,
    pub tenant: &'a str,
    pub operation: &'static str,
    pub data: std::borrow::Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_encoding: Option<&'static str>,
    pub checksum: u32,
}

impl<'a> EntryJson<'a> {
    pub fn new(e: &EntryRef<'a>) -> Self {
        let (data, data_encoding) = match std::str::from_utf8(e.data) {
            Ok(s) => (std::borrow::Cow::Borrowed(s), None),
            Err(_) => (
                std::borrow::Cow::Owned(base64::engine::general_purpose::STANDARD.encode(e.data)),
                Some("base64"),
            ),
        };
        EntryJson {
            sequence: e.sequence_number,
            timestamp: rfc3339(e.timestamp),
            tenant: e.tenant_id,
            operation: e.operation.as_str(),
            data,
            data_encoding,
            checksum: e.checksum,
        }
    }
}

pub fn write_entry(out: &mut impl Write, format: Format, e: &EntryRef<'_>) -> io::Result<()> {
    match format {
        Format::Json => {
            serde_json::to_writer(&mut *out, &EntryJson::new(e))?;
            writeln!(out)
        }
        Format::Table => {
            let j = EntryJson::new(e);
            writeln!(
                out,
                "{:>10}  {}  {:<16} {:<6} {:08x}  {}",
                j.sequence,
                j.timestamp,
                j.tenant,
                j.operation,
                j.checksum,
                j.data.escape_debug()
            )
        }
    }
}

pub fn write_entry_header(out: &mut impl Write, format: Format) -> io::Result<()> {
    if format == Format::Table {
        writeln!(
            out,
            "{:>10}  {:<27}  {:<16} {:<6} {:<8}  DATA",
            "SEQUENCE", "TIMESTAMP", "TENANT", "OP", "CHECKSUM"
        )?;
    }
    Ok(())
}

pub fn write_segments(
    out: &mut impl Write,
    format: Format,
    segments: &[Segment],
) -> io::Result<()> {
    if format == Format::Json {
        serde_json::to_writer_pretty(&mut *out, segments)?;
        return writeln!(out);
    }
    let mut t = Table::new(&[
        "ID",
        "STATUS",
        "FIRST_SEQ",
        "LAST_SEQ",
        "FIRST_IDX",
        "LAST_IDX",
        "BYTES",
        "PATH",
    ]);
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_string(), |v| v.to_string());
    for s in segments {
        let status = if s.status == crate::wal::SegmentStatus::Active {
            "active"
        } else {
            "sealed"
        };
        t.row(vec![
            s.id.to_string(),
            status.to_owned(),
            s.start_seq.to_string(),
            opt(s.end_seq),
            s.first_index.to_string(),
            opt(s.last_index),
            s.size.to_string(),
            s.file_path.display().to_string(),
        ]);
    }
    writeln!(out, "{}", t.render())
}

/// A table for people, its columns as wide as their widest cell, two spaces apart; a column
/// whose cells are all numbers (or `-`) is aligned right. Rows of cells in header order.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table's lines (no trailing spaces).
    pub fn render(&self) -> String {
        use comfy_table::{CellAlignment, presets::NOTHING};
        let mut t = comfy_table::Table::new();
        t.load_preset(NOTHING).set_header(self.header.clone());
        for r in &self.rows {
            t.add_row(r.clone());
        }
        let last = self.header.len().saturating_sub(1);
        for (i, col) in t.column_iter_mut().enumerate() {
            col.set_padding((0, if i == last { 0 } else { 2 }));
            let numeric = self.rows.iter().all(|r| {
                r.get(i)
                    .is_none_or(|c| c == "-" || c.parse::<f64>().is_ok())
            });
            if numeric && !self.rows.is_empty() {
                col.set_cell_alignment(CellAlignment::Right);
            }
        }
        t.trim_fmt()
    }
}

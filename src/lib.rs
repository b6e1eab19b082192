pub mod cli;
pub mod wal;

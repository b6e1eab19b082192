//! The Raft log store and state machine: openraft's conformance suite, then our own
//! kill-and-reopen checks (the suite never reopens a store).

mod common;

use std::path::Path;

use openraft::StorageError;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use replog::raft::{LogStore, StateMachine, Storage, TypeConfig};
use tempfile::TempDir;

fn wal_config() -> replog::wal::WalConfig {
    common::small_config(Path::new("unused"))
}

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = TempDir::new().map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        let s = Storage::open(dir.path(), wal_config(), None, 1000)
            .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        Ok((dir, s.log_store, s.state_machine))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_conformance_suite() {
    Suite::test_all(Builder)
        .await
        .expect("openraft's log store suite");
}

//! The node's WAL behind a handle that a snapshot install can swap: every user takes the current
//! `Arc<Manager>` for one call and drops it, so a swap waits only for calls in flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use crate::fs::FileSystem;
use crate::wal::metrics::WalMetrics;
use crate::wal::{Manager, WalConfig, WalError};

/// How long a swap waits for calls in flight to drop the old WAL.
const SWAP_WAIT: Duration = Duration::from_secs(30);

pub struct WalHandle {
    slot: RwLock<Option<Arc<Manager>>>,
    cfg: WalConfig,
    fs: Arc<dyn FileSystem>,
    metrics: WalMetrics,
}

impl WalHandle {
    pub fn new(wal: Manager) -> Arc<WalHandle> {
        Arc::new(WalHandle {
            cfg: wal.config().clone(),
            fs: wal.file_system(),
            metrics: wal.metrics(),
            slot: RwLock::new(Some(Arc::new(wal))),
        })
    }

    pub fn config(&self) -> &WalConfig {
        &self.cfg
    }

    pub fn file_system(&self) -> &Arc<dyn FileSystem> {
        &self.fs
    }

    /// Opens the WAL directory again (after a snapshot replaced it) and puts it in.
    pub fn reopen(&self) -> Result<(), WalError> {
        let wal =
            Manager::open_with_metrics(self.cfg.clone(), self.fs.clone(), self.metrics.clone())?;
        self.put(wal);
        Ok(())
    }

    /// Opens a WAL elsewhere with this one's settings (to check received segments).
    pub fn open_other(&self, dir: &std::path::Path) -> Result<Manager, WalError> {
        let cfg = WalConfig {
            directory: dir.to_path_buf(),
            ..self.cfg.clone()
        };
        Manager::open_with(cfg, self.fs.clone(), None)
    }

    /// The current WAL (`Closed` while a swap runs or after `take`).
    pub fn get(&self) -> Result<Arc<Manager>, WalError> {
        self.slot.read().clone().ok_or(WalError::Closed)
    }

    /// Takes the WAL out and closes it once calls in flight have dropped it (blocking).
    pub fn take_and_close(&self) -> Result<(), WalError> {
        let Some(mut arc) = self.slot.write().take() else {
            return Ok(());
        };
        let deadline = Instant::now() + SWAP_WAIT;
        loop {
            match Arc::try_unwrap(arc) {
                Ok(wal) => return wal.close(),
                Err(back) if Instant::now() < deadline => {
                    arc = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(_) => return Err(WalError::Closed),
            }
        }
    }

    /// Puts a (re)opened WAL in.
    pub fn put(&self, wal: Manager) {
        *self.slot.write() = Some(Arc::new(wal));
    }
}

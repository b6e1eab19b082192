//! A file system that loses power at a chosen mutating step (for crash-point tests).
#![allow(dead_code)]

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use replog::wal::fs::{FileSystem, MemFs, WalFile};

/// Simulates a power loss just before the `n`-th mutating call, then fails every call.
#[derive(Clone)]
pub struct CrashFs {
    pub mem: MemFs,
    pub left: Arc<AtomicI64>,
}

impl CrashFs {
    /// Loses power just before the `n`-th mutating call (never if `n` is 0 or negative).
    pub fn new(mem: MemFs, n: i64) -> CrashFs {
        CrashFs {
            mem,
            left: Arc::new(AtomicI64::new(if n <= 0 { i64::MAX } else { n })),
        }
    }

    pub fn crashed(&self) -> bool {
        self.left.load(Ordering::SeqCst) <= 0
    }

    fn step(&self) -> io::Result<()> {
        match self.left.fetch_sub(1, Ordering::SeqCst) {
            1 => {
                self.mem.crash();
                Err(io::Error::other("simulated power loss"))
            }
            n if n <= 0 => Err(io::Error::other("after the simulated power loss")),
            _ => Ok(()),
        }
    }
}

struct CrashFile {
    fs: CrashFs,
    inner: Arc<dyn WalFile>,
}

impl WalFile for CrashFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        self.fs.step()?;
        self.inner.write_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.fs.step()?;
        self.inner.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.fs.step()?;
        self.inner.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        self.fs.step()?;
        self.inner.allocate(len)
    }
}

impl FileSystem for CrashFs {
    fn open(&self, path: &Path) -> io::Result<Arc<dyn WalFile>> {
        Ok(Arc::new(CrashFile {
            fs: self.clone(),
            inner: self.mem.open(path)?,
        }))
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn WalFile>> {
        self.step()?;
        Ok(Arc::new(CrashFile {
            fs: self.clone(),
            inner: self.mem.create(path)?,
        }))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.step()?;
        self.mem.remove(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.step()?;
        self.mem.rename(from, to)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.mem.list(dir)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.step()?;
        self.mem.sync_dir(dir)
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.mem.create_dir_all(dir)
    }
    fn available_space(&self, dir: &Path) -> io::Result<u64> {
        self.mem.available_space(dir)
    }
    fn lock_dir(&self, dir: &Path) -> io::Result<Box<dyn Send + Sync>> {
        self.mem.lock_dir(dir)
    }
}

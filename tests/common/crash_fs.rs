//! A file system that loses power at a chosen mutating step (for crash-point tests).
//!
//! The power loss is one instant in the order of mutating calls: counting a call, performing it
//! and losing power all happen under one lock. Without it, a thread could count its call before
//! the power loss and perform it after `MemFs::crash` had thrown away everything not durable: an
//! fsync of the directory that then made nothing durable yet returned `Ok` (the WAL went on as if
//! its new `LOG_START` were on disk), or a write that survives though it was never synced. The
//! WAL calls the file system from two threads (the caller that leads the writer, and the segment
//! preparer), so under load this happened, once in about ten runs.
#![allow(dead_code)]

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, ThreadId};

use replog::fs::{FileSystem, MemFs, WalFile};

#[derive(Default)]
struct Steps {
    /// Counted mutating calls so far (the one that lost power included).
    taken: u64,
    /// The counted call just before which the power goes out; `None`: never.
    crash_at: Option<u64>,
    crashed: bool,
    /// Paths changed by calls that were not counted, in order.
    uncounted: Vec<PathBuf>,
}

/// Simulates a power loss just before the `n`-th counted mutating call, then fails every call.
#[derive(Clone)]
pub struct CrashFs {
    pub mem: MemFs,
    steps: Arc<Mutex<Steps>>,
    /// Counts only this thread's calls; every thread's if `None`.
    counted: Option<ThreadId>,
}

fn lock(m: &Mutex<Steps>) -> MutexGuard<'_, Steps> {
    // A panic in another test thread must not hide this thread's result.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl CrashFs {
    /// Loses power just before the `n`-th mutating call of any thread (never if `n` is 0 or
    /// negative).
    pub fn new(mem: MemFs, n: i64) -> CrashFs {
        CrashFs {
            mem,
            steps: Arc::new(Mutex::new(Steps {
                crash_at: u64::try_from(n).ok().filter(|&n| n > 0),
                ..Steps::default()
            })),
            counted: None,
        }
    }

    /// Loses power just before the `n`-th mutating call made on the calling thread (never if `n`
    /// is 0 or negative). Calls on other threads (a WAL's background threads) are not counted:
    /// they run if they come before the power loss and fail after it, and their paths are
    /// recorded ([`CrashFs::uncounted_paths`]). They interleave with this thread's calls
    /// differently in every run, so counting them would make the `n`-th call a different call
    /// from run to run.
    pub fn on_this_thread(mem: MemFs, n: i64) -> CrashFs {
        CrashFs {
            counted: Some(thread::current().id()),
            ..CrashFs::new(mem, n)
        }
    }

    pub fn crashed(&self) -> bool {
        lock(&self.steps).crashed
    }

    /// Counted mutating calls so far.
    pub fn steps(&self) -> u64 {
        lock(&self.steps).taken
    }

    /// Paths changed by mutating calls that were not counted, in order.
    pub fn uncounted_paths(&self) -> Vec<PathBuf> {
        lock(&self.steps).uncounted.clone()
    }

    /// Runs the mutating call `op` (on `paths`) as one step, unless the power is out or goes out
    /// now. The lock is held while `op` runs, so no power loss lands inside it.
    fn step<T>(&self, paths: &[&Path], op: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
        let mut s = lock(&self.steps);
        if s.crashed {
            return Err(io::Error::other("after the simulated power loss"));
        }
        if self.counted.is_none_or(|t| t == thread::current().id()) {
            s.taken += 1;
            if s.crash_at == Some(s.taken) {
                s.crashed = true;
                self.mem.crash();
                return Err(io::Error::other("simulated power loss"));
            }
        } else {
            s.uncounted.extend(paths.iter().map(|p| p.to_path_buf()));
        }
        op()
    }
}

struct CrashFile {
    fs: CrashFs,
    /// The path the file was opened or created under (for `uncounted_paths`).
    path: PathBuf,
    inner: Arc<dyn WalFile>,
}

impl WalFile for CrashFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.inner.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        self.fs
            .step(&[&self.path], || self.inner.write_at(buf, offset))
    }
    fn sync_data(&self) -> io::Result<()> {
        self.fs.step(&[&self.path], || self.inner.sync_data())
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.fs.step(&[&self.path], || self.inner.set_len(len))
    }
    fn len(&self) -> io::Result<u64> {
        self.inner.len()
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        self.fs.step(&[&self.path], || self.inner.allocate(len))
    }
}

impl CrashFs {
    fn wrap(&self, path: &Path, inner: Arc<dyn WalFile>) -> Arc<dyn WalFile> {
        Arc::new(CrashFile {
            fs: self.clone(),
            path: path.to_path_buf(),
            inner,
        })
    }
}

impl FileSystem for CrashFs {
    fn open(&self, path: &Path) -> io::Result<Arc<dyn WalFile>> {
        Ok(self.wrap(path, self.mem.open(path)?))
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn WalFile>> {
        let inner = self.step(&[path], || self.mem.create(path))?;
        Ok(self.wrap(path, inner))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        self.step(&[path], || self.mem.remove(path))
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.step(&[from, to], || self.mem.rename(from, to))
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.mem.list(dir)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        self.mem.exists(path)
    }
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        self.step(&[dir], || self.mem.remove_dir_all(dir))
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.step(&[dir], || self.mem.sync_dir(dir))
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

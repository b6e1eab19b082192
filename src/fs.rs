//! The file-system seam of replog: every byte the WAL, the Raft metadata and snapshots read or
//! write goes through [`FileSystem`] and [`WalFile`], so tests can swap in [`MemFs`], an
//! in-memory file system that injects faults (I/O errors on write or fsync, short writes,
//! ENOSPC) and simulates a crash that loses everything not yet fsync'd.
//!
//! This module knows nothing of frames, segments or snapshots, and imports nothing from the crate.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// An open file. Positional I/O only, so one handle can serve readers and the writer at once.
#[allow(clippy::len_without_is_empty)] // a file's length is a size, not a collection's
pub trait WalFile: Send + Sync + 'static {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were read (0 at end of file).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Writes up to `buf.len()` bytes at `offset`; may write fewer (a short write).
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize>;
    /// Makes the file's data (and the metadata needed to read it) durable: `fdatasync`.
    fn sync_data(&self) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
    /// Reserves disk blocks up to `len` (fallocate); the file reads as zeros there.
    fn allocate(&self, len: u64) -> io::Result<()>;
    /// Starts writing back a range without waiting and without a cache flush
    /// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`): not a durability barrier, only a way to
    /// spread a large write's flush over time. A no-op where unsupported.
    fn start_writeback(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    /// Writes back a range and waits until it is on the device (`sync_file_range` with
    /// `WAIT_BEFORE | WRITE | WAIT_AFTER`): again not a durability barrier (no cache flush, no
    /// metadata), only a way to bound how much of a large write is queued at the disk at once.
    /// A no-op where unsupported.
    fn finish_writeback(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
}

/// Directory-level operations. Paths are absolute or relative to the process's directory.
pub trait FileSystem: Send + Sync + 'static {
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn WalFile>>;
    /// Creates a file, truncating any existing one.
    fn create(&self, path: &Path) -> io::Result<Arc<dyn WalFile>>;
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Renames a file or a directory (with everything in it), replacing a file at `to`.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Names (not paths) of the files and directories in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Whether a file or directory exists at `path`.
    fn exists(&self, path: &Path) -> io::Result<bool>;
    /// Removes a directory and everything in it.
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Makes creations, renames and removals in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Bytes available to this process on the file system holding `dir` (statvfs).
    fn available_space(&self, dir: &Path) -> io::Result<u64>;
    /// Takes an exclusive lock on `dir` for as long as the returned guard lives, so two processes
    /// never write the same WAL.
    fn lock_dir(&self, dir: &Path) -> io::Result<Box<dyn Send + Sync>>;
}

/// Whether an error means the disk is full.
pub fn is_enospc(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::StorageFull || e.raw_os_error() == Some(28)
}

/// Writes all of `buf` at `offset`, retrying short writes.
pub fn write_all_at(file: &dyn WalFile, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    while !buf.is_empty() {
        match file.write_at(buf, offset) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                buf = &buf[n..];
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads until `buf` is full or the file ends; returns the number of bytes read.
pub fn read_full_at(file: &dyn WalFile, buf: &mut [u8], mut offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset) {
            Ok(0) => break,
            Ok(n) => {
                done += n;
                offset += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Reads a whole (small) file.
pub fn read_file(fs: &dyn FileSystem, path: &Path) -> io::Result<Vec<u8>> {
    let file = fs.open(path)?;
    let len =
        usize::try_from(file.len()?).map_err(|_| io::Error::from(io::ErrorKind::FileTooLarge))?;
    let mut buf = vec![0; len];
    let n = read_full_at(&*file, &mut buf, 0)?;
    buf.truncate(n);
    Ok(buf)
}

/// Replaces `path` with `contents` atomically and durably: write a temporary file, fsync it,
/// rename it over `path`, fsync the directory. A crash at any step leaves either the old or the
/// new contents, never a mix.
pub fn write_file_atomic(fs: &dyn FileSystem, path: &Path, contents: &[u8]) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let file = fs.create(&tmp)?;
    write_all_at(&*file, contents, 0)?;
    file.sync_data()?;
    drop(file);
    fs.rename(&tmp, path)?;
    fs.sync_dir(dir)
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct StdFs;

struct StdFile(File);

impl WalFile for StdFile {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.0.read_at(buf, offset)
    }
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        self.0.write_at(buf, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn allocate(&self, len: u64) -> io::Result<()> {
        fs4::FileExt::allocate(&self.0, len)
    }
    #[cfg(target_os = "linux")]
    fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        self.sync_file_range(offset, len, libc::SYNC_FILE_RANGE_WRITE)
    }
    #[cfg(target_os = "linux")]
    fn finish_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
        self.sync_file_range(
            offset,
            len,
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        )
    }
}

#[cfg(target_os = "linux")]
impl StdFile {
    fn sync_file_range(&self, offset: u64, len: u64, flags: libc::c_uint) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(io::ErrorKind::InvalidInput.into());
        };
        // SAFETY: plain syscall on a file descriptor this struct owns; no memory is passed.
        let r = unsafe { libc::sync_file_range(self.0.as_raw_fd(), offset, len, flags) };
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl FileSystem for StdFs {
    fn open(&self, path: &Path) -> io::Result<Arc<dyn WalFile>> {
        Ok(Arc::new(StdFile(
            OpenOptions::new().read(true).write(true).open(path)?,
        )))
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn WalFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        Ok(Arc::new(StdFile(file)))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            if let Some(name) = entry?.file_name().to_str() {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        path.try_exists()
    }
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::remove_dir_all(dir)
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }
    fn available_space(&self, dir: &Path) -> io::Result<u64> {
        fs4::available_space(dir)
    }
    fn lock_dir(&self, dir: &Path) -> io::Result<Box<dyn Send + Sync>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("LOCK"))?;
        match file.try_lock() {
            Ok(()) => Ok(Box::new(file)),
            Err(std::fs::TryLockError::WouldBlock) => Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "directory is locked",
            )),
            Err(std::fs::TryLockError::Error(e)) => Err(e),
        }
    }
}

/// Faults that [`MemFs`] injects; each flag can be flipped at any time by a test.
#[derive(Debug, Default)]
pub struct Faults {
    /// The next write fails with an I/O error (EIO), once.
    pub fail_next_write: AtomicBool,
    /// Every fsync fails with an I/O error while set.
    pub fail_sync: AtomicBool,
    /// Writes write at most half of what they are given (at least one byte).
    pub short_writes: AtomicBool,
}

#[derive(Default)]
struct MemFile {
    data: Vec<u8>,
    durable: Vec<u8>,
}

/// What a directory entry names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    File(u64),
    Dir(u64),
}

/// Directory id of the root.
const ROOT: u64 = 0;

/// Names live in directories, as on disk: an entry is `(directory id, name)`, so renaming a
/// directory moves everything in it at once, and `sync_dir` makes one directory's entries
/// durable. Directories are made durable when they are created (a simplification: a test
/// crashes files and renames, not `mkdir`).
struct MemState {
    files: BTreeMap<u64, Arc<Mutex<MemFile>>>,
    entries: BTreeMap<(u64, String), Node>,
    durable: BTreeMap<(u64, String), Node>,
    /// Ids of files and directories (the root is 0).
    next_id: u64,
}

impl Default for MemState {
    fn default() -> Self {
        MemState {
            files: BTreeMap::new(),
            entries: BTreeMap::new(),
            durable: BTreeMap::new(),
            next_id: ROOT + 1,
        }
    }
}

fn name_of(c: std::path::Component<'_>) -> Option<String> {
    match c {
        std::path::Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
        _ => None,
    }
}

impl MemState {
    /// The directory at `path`; with `create`, missing directories are made (durable).
    fn dir(&mut self, path: &Path, create: bool) -> io::Result<u64> {
        let mut at = ROOT;
        for name in path.components().filter_map(name_of) {
            at = match self.entries.get(&(at, name.clone())) {
                Some(Node::Dir(d)) => *d,
                Some(Node::File(_)) => return Err(io::Error::other("not a directory")),
                None if create => {
                    let d = self.next_id;
                    self.next_id += 1;
                    self.entries.insert((at, name.clone()), Node::Dir(d));
                    self.durable.insert((at, name), Node::Dir(d));
                    d
                }
                None => return Err(enoent()),
            };
        }
        Ok(at)
    }

    /// `(directory id, name)` of `path`'s entry (its directory made if `create`).
    fn entry(&mut self, path: &Path, create: bool) -> io::Result<(u64, String)> {
        let name = path.file_name().ok_or_else(enoent)?;
        let parent = path.parent().unwrap_or(Path::new("/"));
        Ok((
            self.dir(parent, create)?,
            name.to_string_lossy().into_owned(),
        ))
    }

    fn file_id(&mut self, path: &Path) -> io::Result<u64> {
        let key = self.entry(path, false)?;
        match self.entries.get(&key) {
            Some(Node::File(id)) => Ok(*id),
            Some(Node::Dir(_)) => Err(io::Error::other("is a directory")),
            None => Err(enoent()),
        }
    }
}

struct MemInner {
    state: Mutex<MemState>,
    /// Bumped by every crash; handles from before it fail with EIO, like a dead process's.
    epoch: AtomicU64,
    /// Bytes the file system holds at most (ENOSPC beyond).
    capacity: AtomicU64,
    faults: Faults,
}

/// An in-memory file system that remembers what is durable, for crash and fault tests.
///
/// Data written is visible at once; it becomes durable with `sync_data`, and a file's name (its
/// creation, rename or removal) becomes durable with `sync_dir` of its directory. [`MemFs::crash`]
/// throws away everything that is not durable.
#[derive(Clone)]
pub struct MemFs(Arc<MemInner>);

impl Default for MemFs {
    fn default() -> Self {
        Self::new()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic in another test thread must not hide this thread's result.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn enoent() -> io::Error {
    io::Error::from(io::ErrorKind::NotFound)
}

impl MemFs {
    pub fn new() -> Self {
        MemFs(Arc::new(MemInner {
            state: Mutex::default(),
            epoch: AtomicU64::new(0),
            capacity: AtomicU64::new(u64::MAX),
            faults: Faults::default(),
        }))
    }

    pub fn faults(&self) -> &Faults {
        &self.0.faults
    }

    /// Limits the total bytes stored; writes that would exceed it fail with ENOSPC.
    pub fn set_capacity(&self, bytes: u64) {
        self.0.capacity.store(bytes, Ordering::SeqCst);
    }

    /// Simulates a power loss: every file returns to its last fsync'd contents, every directory to
    /// its last synced listing, and handles opened before the crash stop working.
    pub fn crash(&self) {
        self.crash_keeping(|_| 0);
    }

    /// Like [`MemFs::crash`], but for each file whose unsynced change only appended bytes,
    /// `keep(unsynced_len)` of those bytes survive (a torn write).
    pub fn crash_keeping(&self, mut keep: impl FnMut(usize) -> usize) {
        self.0.epoch.fetch_add(1, Ordering::SeqCst);
        let mut st = lock(&self.0.state);
        st.entries = st.durable.clone();
        let live: std::collections::BTreeSet<u64> = (st.entries.values())
            .filter_map(|n| match n {
                Node::File(id) => Some(*id),
                Node::Dir(_) => None,
            })
            .collect();
        st.files.retain(|id, _| live.contains(id));
        for file in st.files.values() {
            let mut f = lock(file);
            let durable_len = f.durable.len();
            let appended_only =
                f.data.len() > durable_len && f.data[..durable_len] == f.durable[..];
            let kept = if appended_only {
                keep(f.data.len() - durable_len).min(f.data.len() - durable_len)
            } else {
                0
            };
            let mut next = f.durable.clone();
            if kept > 0 {
                next.extend_from_slice(&f.data[durable_len..durable_len + kept]);
            }
            f.data = next.clone();
            f.durable = next;
        }
    }

    /// Reads a file's current contents (for tests that corrupt or inspect files).
    pub fn contents(&self, path: &Path) -> io::Result<Vec<u8>> {
        let mut st = lock(&self.0.state);
        let id = st.file_id(path)?;
        let file = st.files.get(&id).cloned().ok_or_else(enoent)?;
        Ok(lock(&file).data.clone())
    }

    /// Overwrites a file's contents and marks them durable (a test's way to corrupt a file).
    pub fn set_contents(&self, path: &Path, data: Vec<u8>) -> io::Result<()> {
        let mut st = lock(&self.0.state);
        let id = st.file_id(path)?;
        let file = st.files.get(&id).cloned().ok_or_else(enoent)?;
        let mut f = lock(&file);
        f.durable = data.clone();
        f.data = data;
        Ok(())
    }

    fn used_bytes(st: &MemState) -> u64 {
        st.files.values().map(|f| lock(f).data.len() as u64).sum()
    }

    fn handle(&self, id: u64) -> Arc<dyn WalFile> {
        Arc::new(MemHandle {
            fs: self.clone(),
            id,
            epoch: self.0.epoch.load(Ordering::SeqCst),
        })
    }
}

struct MemHandle {
    fs: MemFs,
    id: u64,
    epoch: u64,
}

impl MemHandle {
    fn file(&self) -> io::Result<Arc<Mutex<MemFile>>> {
        if self.fs.0.epoch.load(Ordering::SeqCst) != self.epoch {
            return Err(io::Error::other(
                "file handle from before a simulated crash",
            ));
        }
        let st = lock(&self.fs.0.state);
        // A removed file stays readable through open handles, as on Unix.
        st.files
            .get(&self.id)
            .cloned()
            .ok_or_else(|| io::Error::other("file was removed"))
    }
}

impl WalFile for MemHandle {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let file = self.file()?;
        let f = lock(&file);
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(f.data.len());
        let n = buf.len().min(f.data.len() - start);
        buf[..n].copy_from_slice(&f.data[start..start + n]);
        Ok(n)
    }

    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
        let faults = &self.fs.0.faults;
        if faults.fail_next_write.swap(false, Ordering::SeqCst) {
            return Err(io::Error::other("injected write error"));
        }
        let n = if faults.short_writes.load(Ordering::SeqCst) {
            buf.len().div_ceil(2)
        } else {
            buf.len()
        };
        let file = self.file()?;
        let end = offset as usize + n;
        let grow = {
            let f = lock(&file);
            end.saturating_sub(f.data.len()) as u64
        };
        if grow > 0 {
            let used = MemFs::used_bytes(&lock(&self.fs.0.state));
            if used + grow > self.fs.0.capacity.load(Ordering::SeqCst) {
                return Err(io::Error::from_raw_os_error(28)); // ENOSPC
            }
        }
        let mut f = lock(&file);
        if f.data.len() < end {
            f.data.resize(end, 0);
        }
        f.data[offset as usize..end].copy_from_slice(&buf[..n]);
        Ok(n)
    }

    fn sync_data(&self) -> io::Result<()> {
        if self.fs.0.faults.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected fsync error"));
        }
        let file = self.file()?;
        let mut f = lock(&file);
        f.durable = f.data.clone();
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        let file = self.file()?;
        lock(&file).data.resize(len as usize, 0);
        Ok(())
    }

    fn len(&self) -> io::Result<u64> {
        let file = self.file()?;
        Ok(lock(&file).data.len() as u64)
    }

    fn allocate(&self, len: u64) -> io::Result<()> {
        let file = self.file()?;
        let grow = len.saturating_sub(lock(&file).data.len() as u64);
        let used = MemFs::used_bytes(&lock(&self.fs.0.state));
        if used + grow > self.fs.0.capacity.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(28)); // ENOSPC
        }
        let mut f = lock(&file);
        if (f.data.len() as u64) < len {
            f.data.resize(len as usize, 0);
        }
        Ok(())
    }
}

impl FileSystem for MemFs {
    fn open(&self, path: &Path) -> io::Result<Arc<dyn WalFile>> {
        let id = lock(&self.0.state).file_id(path)?;
        Ok(self.handle(id))
    }
    fn create(&self, path: &Path) -> io::Result<Arc<dyn WalFile>> {
        let mut st = lock(&self.0.state);
        let key = st.entry(path, true)?;
        if let Some(Node::Dir(_)) = st.entries.get(&key) {
            return Err(io::Error::other("is a directory"));
        }
        let id = st.next_id;
        st.next_id += 1;
        st.files.insert(id, Arc::default());
        st.entries.insert(key, Node::File(id));
        drop(st);
        Ok(self.handle(id))
    }
    fn remove(&self, path: &Path) -> io::Result<()> {
        let mut st = lock(&self.0.state);
        let key = st.entry(path, false)?;
        match st.entries.get(&key) {
            Some(Node::File(_)) => st.entries.remove(&key).map(|_| ()).ok_or_else(enoent),
            Some(Node::Dir(_)) => Err(io::Error::other("is a directory")),
            None => Err(enoent()),
        }
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut st = lock(&self.0.state);
        let from = st.entry(from, false)?;
        let node = st.entries.get(&from).copied().ok_or_else(enoent)?;
        let to = st.entry(to, true)?;
        if let (Node::Dir(_), Some(_)) | (_, Some(Node::Dir(_))) = (node, st.entries.get(&to)) {
            return Err(io::Error::other("renaming over an existing directory"));
        }
        st.entries.remove(&from);
        st.entries.insert(to, node);
        Ok(())
    }
    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut st = lock(&self.0.state);
        let Ok(d) = st.dir(dir, false) else {
            return Ok(Vec::new());
        };
        Ok(st
            .entries
            .range((d, String::new())..)
            .take_while(|((p, _), _)| *p == d)
            .map(|((_, name), _)| name.clone())
            .collect())
    }
    fn exists(&self, path: &Path) -> io::Result<bool> {
        let mut st = lock(&self.0.state);
        Ok(match st.entry(path, false) {
            Ok(key) => st.entries.contains_key(&key),
            Err(_) => path.components().filter_map(name_of).next().is_none(),
        })
    }
    fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut st = lock(&self.0.state);
        let key = st.entry(dir, false)?;
        match st.entries.get(&key) {
            // What it held stays in `entries` under its id, unreachable (and durable as far
            // as it was, should a crash bring the directory back).
            Some(Node::Dir(_)) => st.entries.remove(&key).map(|_| ()).ok_or_else(enoent),
            Some(Node::File(_)) => Err(io::Error::other("not a directory")),
            None => Err(enoent()),
        }
    }
    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if self.0.faults.fail_sync.load(Ordering::SeqCst) {
            return Err(io::Error::other("injected fsync error"));
        }
        let mut st = lock(&self.0.state);
        let d = st.dir(dir, true)?;
        st.durable.retain(|(p, _), _| *p != d);
        let entries: Vec<_> = (st.entries.range((d, String::new())..))
            .take_while(|((p, _), _)| *p == d)
            .map(|(k, n)| (k.clone(), *n))
            .collect();
        st.durable.extend(entries);
        Ok(())
    }
    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        lock(&self.0.state).dir(dir, true).map(|_| ())
    }
    fn available_space(&self, _dir: &Path) -> io::Result<u64> {
        let used = MemFs::used_bytes(&lock(&self.0.state));
        Ok(self.0.capacity.load(Ordering::SeqCst).saturating_sub(used))
    }
    fn lock_dir(&self, _dir: &Path) -> io::Result<Box<dyn Send + Sync>> {
        Ok(Box::new(()))
    }
}

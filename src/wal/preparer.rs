//! The preparer thread: makes the next segment file (space reserved per `preallocate`, fsync'd)
//! while the active one fills, so a roll is a rename and never stalls appends.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::config::{Preallocate, WalConfig};
use super::error::{Result, WalError};
use super::segment::{self, SegmentHeader};
use super::state::Shared;
use crate::fs::{FileSystem, WalFile, is_enospc, write_all_at};

/// Bytes zero-filled between two writeback starts. With at most two steps queued at the disk
/// (see `prepare`), a writer's fsync waits behind at most this much zero-fill twice over.
const ZERO_FILL_STEP_BYTES: usize = 256 << 10;

/// Bytes a paced zero-fill writes at once, before it waits for the writer ([`FillPace`]).
const FILL_HEAD_START_BYTES: u64 = 1 << 20;

/// Longest a paced zero-fill sleeps before it looks at the writer's progress again.
const FILL_MAX_WAIT: Duration = Duration::from_millis(50);

/// How fast the zero-fill of the next segment goes: twice as fast as the writer uses the room
/// the active segment had left when the fill began, not as fast as the disk goes. Every
/// fdatasync of the active segment flushes the disk's cache, zeros included, so each fsync
/// during a fill at full speed flushed up to two steps of zeros with its own few KiB (see the
/// README's numbers). Paced, the fill may be `FILL_HEAD_START_BYTES` plus twice the writer's
/// share of that room in: it ends when the writer has used about half the room (after a roll,
/// when the active segment is half full; for the segment a log was opened with, asked for at
/// a quarter or later, half way from there to its end). It goes at full speed while the writer
/// waits for the file (a roll came first: `hurry`), and stops on close (`cancel`).
pub(crate) struct FillPace {
    /// Bytes in the active segment, set by the writer as it appends.
    active_len: AtomicU64,
    hurry: AtomicBool,
    cancel: AtomicBool,
    /// Times the fill went to sleep waiting for the writer (tests watch it).
    waits: AtomicU64,
    lock: Mutex<()>,
    wake: Condvar,
}

impl FillPace {
    fn new() -> FillPace {
        FillPace {
            active_len: AtomicU64::new(0),
            hurry: AtomicBool::new(false),
            cancel: AtomicBool::new(false),
            waits: AtomicU64::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        }
    }

    /// A pace that never waits (recovery's file, and tests).
    pub(crate) fn unpaced() -> FillPace {
        let p = FillPace::new();
        p.hurry.store(true, Ordering::SeqCst);
        p
    }

    fn progress(&self, active_len: u64) {
        self.active_len.store(active_len, Ordering::Relaxed);
    }

    fn hurry(&self, on: bool) {
        self.set(&self.hurry, on);
    }

    fn cancel(&self) {
        self.set(&self.cancel, true);
    }

    fn set(&self, flag: &AtomicBool, on: bool) {
        let _guard = self.lock.lock();
        flag.store(on, Ordering::SeqCst);
        self.wake.notify_all();
    }

    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::SeqCst)
    }

    /// Waits until a fill of a `size`-byte file may go past `filled` bytes: the writer has added
    /// enough to the active segment since `start` (its length when the fill began), or the fill
    /// must hurry. `Err(Closed)` once cancelled.
    fn wait_turn(&self, start: u64, filled: u64, size: u64) -> Result<()> {
        // The fill has the active segment's room left when it began: twice the writer's pace
        // through that room ends it when half the room is used.
        let room = size.saturating_sub(start).max(1) as f64;
        let per_written_byte = 2.0 * size as f64 / room;
        let mut seen: Option<(Instant, u64)> = None;
        loop {
            if self.cancelled() {
                return Err(WalError::Closed);
            }
            let active = self.active_len.load(Ordering::Relaxed);
            let grown = active.saturating_sub(start) as f64;
            let behind = filled as f64 - (FILL_HEAD_START_BYTES as f64 + grown * per_written_byte);
            if behind < 0.0 || self.hurry.load(Ordering::SeqCst) {
                return Ok(());
            }
            // Sleep about as long as the writer takes to earn the next step, at its last rate.
            let now = Instant::now();
            let wait = match seen {
                Some((at, before)) if active > before => {
                    let rate = (active - before) as f64 / now.duration_since(at).as_secs_f64();
                    let needed = (behind + 1.0) / per_written_byte;
                    Duration::from_secs_f64((needed / rate).min(FILL_MAX_WAIT.as_secs_f64()))
                        .max(Duration::from_millis(1))
                }
                _ => FILL_MAX_WAIT,
            };
            seen = Some((now, active));
            let mut guard = self.lock.lock();
            if !self.cancelled() && !self.hurry.load(Ordering::SeqCst) {
                self.waits.fetch_add(1, Ordering::Relaxed);
                self.wake.wait_for(&mut guard, wait);
            }
        }
    }
}

pub(crate) struct Prepared {
    pub path: PathBuf,
    pub file: Arc<dyn WalFile>,
    pub len: u64,
}

/// Makes the next segment file ahead of time, off the append path.
///
/// The writer numbers each file it asks for (`prealloc-N.tmp`), so on close it deletes an unused
/// one itself, whether the thread finished it, stopped midway or failed. Which of those happens
/// depends on thread timing; the writer's own file-system calls then do not, and crash-point
/// tests rely on that (`tests/wal_crash_points.rs` counts them).
pub(crate) struct Preparer {
    tx: Option<SyncSender<u64>>,
    rx: Receiver<Result<Prepared>>,
    /// The number of the file asked for and not yet received.
    outstanding: Option<u64>,
    /// The number of the next file to ask for (0 is recovery's).
    next: u64,
    ready: Option<Prepared>,
    /// The zero-fill's pace; its `cancel`, set on close, stops a fill in progress and leaves
    /// its file for `discard` to delete.
    pace: Arc<FillPace>,
    sh: Arc<Shared>,
}

impl Preparer {
    pub(crate) fn start(sh: Arc<Shared>) -> Result<(Preparer, JoinHandle<()>)> {
        let (req_tx, req_rx) = sync_channel::<u64>(1);
        let (res_tx, res_rx) = sync_channel(1);
        let thread_sh = sh.clone();
        let pace = Arc::new(FillPace::new());
        let thread_pace = pace.clone();
        let handle = std::thread::Builder::new()
            .name("wal-preparer".into())
            .spawn(move || {
                while let Ok(n) = req_rx.recv() {
                    if res_tx
                        .send(prepare(&*thread_sh.fs, &thread_sh.cfg, n, &thread_pace))
                        .is_err()
                    {
                        break;
                    }
                }
            })?;
        Ok((
            Preparer {
                tx: Some(req_tx),
                rx: res_rx,
                outstanding: None,
                next: 1,
                ready: None,
                pace,
                sh,
            },
            handle,
        ))
    }

    /// Starts preparing a file unless one is ready or on its way.
    pub(crate) fn request(&mut self) {
        if self.outstanding.is_some() || self.ready.is_some() {
            return;
        }
        if let Some(tx) = &self.tx
            && tx.send(self.next).is_ok()
        {
            self.outstanding = Some(self.next);
            self.next += 1;
        }
    }

    /// Tells a paced zero-fill how full the active segment is (`FillPace`).
    pub(crate) fn progress(&self, active_len: u64) {
        self.pace.progress(active_len);
    }

    /// A prepared file, waiting for it if needed (the fill then goes at full speed).
    pub(crate) fn take(&mut self) -> Result<Prepared> {
        if let Some(p) = self.ready.take() {
            return Ok(p);
        }
        self.request();
        if self.outstanding.take().is_none() {
            return Err(WalError::Closed);
        }
        match self.rx.try_recv() {
            Ok(r) => return r,
            Err(TryRecvError::Disconnected) => return Err(WalError::Closed),
            Err(TryRecvError::Empty) => self.sh.metrics.roll_waits.inc(),
        }
        // Only this file is under way, and it is done once received: the next one is paced.
        self.pace.hurry(true);
        let r = self.rx.recv().map_err(|_| WalError::Closed);
        self.pace.hurry(false);
        r?
    }

    /// Stops the thread and deletes the file it was asked for if nobody used it.
    pub(crate) fn discard(&mut self) {
        self.pace.cancel();
        let unused = match (self.ready.take(), self.outstanding.take()) {
            (Some(p), _) => Some(p.path),
            (None, Some(n)) => {
                // Done, stopped midway or failed: the file, if any, is no longer in use.
                let _ = self.rx.recv();
                Some(prealloc_path(&self.sh.cfg, n))
            }
            (None, None) => None,
        };
        self.tx = None;
        if let Some(path) = unused {
            let _ = self.sh.fs.remove(&path);
        }
    }
}

/// A writer that goes away without `discard` (it failed or panicked) still stops a fill that
/// waits for its progress, so the thread ends and can be joined.
impl Drop for Preparer {
    fn drop(&mut self) {
        self.pace.cancel();
    }
}

fn prealloc_path(cfg: &WalConfig, n: u64) -> PathBuf {
    cfg.directory.join(format!("prealloc-{n}.tmp"))
}

/// Creates `prealloc-N.tmp`, zero-filled to `segment_size` when `preallocate` is on, fsync'd.
/// A zero-fill goes at `pace`; stopped by its `cancel`, it returns `Closed` and leaves the file
/// to the caller.
pub(crate) fn prepare(
    fs: &dyn FileSystem,
    cfg: &WalConfig,
    n: u64,
    pace: &FillPace,
) -> Result<Prepared> {
    let began = Instant::now();
    let dir = &cfg.directory;
    let size = cfg.segment_size.as_u64();
    let required_bytes = size + cfg.min_free_bytes.as_u64();
    let available_bytes = fs.available_space(dir)?;
    if available_bytes < required_bytes {
        return Err(WalError::InsufficientSpace {
            dir: dir.clone(),
            available_bytes,
            required_bytes,
        });
    }
    let path = prealloc_path(cfg, n);
    let file = fs.create(&path)?;
    let no_space = |e: io::Error| {
        let _ = fs.remove(&path);
        if is_enospc(&e) {
            WalError::InsufficientSpace {
                dir: dir.clone(),
                available_bytes: 0,
                required_bytes,
            }
        } else {
            e.into()
        }
    };
    let len = match cfg.preallocate {
        Preallocate::None => 0,
        Preallocate::Fallocate => {
            file.allocate(size).map_err(no_space)?;
            size
        }
        Preallocate::Zero => {
            // Writeback goes step by step (no cache flush) and one fdatasync ends it. Each step
            // waits for the one before it to reach the device, so at most two steps are queued
            // at the disk: a single 64 MiB flush at the end, or writeback started for every
            // step at once, would queue tens of MiB ahead of the writer's fsyncs on the same
            // disk (p99.9 of a producer's acks 26-29 ms, max 95-291 ms when it was so).
            let zeros = vec![0u8; (ZERO_FILL_STEP_BYTES as u64).min(size) as usize];
            let mut at = 0;
            let mut previous: Option<(u64, u64)> = None;
            let start = pace.active_len.load(Ordering::Relaxed);
            while at < size {
                pace.wait_turn(start, at, size)?;
                let n = zeros.len().min((size - at) as usize) as u64;
                write_all_at(&*file, &zeros[..n as usize], at).map_err(no_space)?;
                file.start_writeback(at, n)?;
                if let Some((from, len)) = previous {
                    file.finish_writeback(from, len)?;
                }
                previous = Some((at, n));
                at += n;
            }
            size
        }
    };
    file.sync_data()?;
    tracing::debug!(
        file = n,
        bytes = len,
        elapsed_ms = began.elapsed().as_millis() as u64,
        "next segment file prepared"
    );
    Ok(Prepared { path, file, len })
}

/// Turns a prepared file into segment `header.first_index`: header written and fsync'd, file
/// renamed into place, directory fsync'd. Returns the segment's path.
pub(crate) fn install_file(
    fs: &dyn FileSystem,
    dir: &Path,
    prepared: &Prepared,
    header: &SegmentHeader,
) -> io::Result<PathBuf> {
    let path = dir.join(segment::segment_file_name(header.first_index));
    write_all_at(&*prepared.file, &header.encode(), 0)?;
    prepared.file.sync_data()?;
    fs.rename(&prepared.path, &path)?;
    fs.sync_dir(dir)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Mutex;

    use super::*;
    use crate::fs::MemFs;

    #[derive(Debug, Clone, Copy, PartialEq)]
    enum Call {
        Write(u64, u64),
        Start(u64, u64),
        Finish(u64, u64),
        Sync,
    }

    /// A file that records the calls the preparer makes, over a `MemFs` file.
    struct Recording {
        inner: Arc<dyn WalFile>,
        calls: Arc<Mutex<Vec<Call>>>,
    }

    impl Recording {
        fn log(&self, c: Call) {
            self.calls.lock().unwrap().push(c);
        }
    }

    impl WalFile for Recording {
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
            self.inner.read_at(buf, offset)
        }
        fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<usize> {
            let n = self.inner.write_at(buf, offset)?;
            self.log(Call::Write(offset, n as u64));
            Ok(n)
        }
        fn sync_data(&self) -> io::Result<()> {
            self.log(Call::Sync);
            self.inner.sync_data()
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.inner.set_len(len)
        }
        fn len(&self) -> io::Result<u64> {
            self.inner.len()
        }
        fn allocate(&self, len: u64) -> io::Result<()> {
            self.inner.allocate(len)
        }
        fn start_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
            self.log(Call::Start(offset, len));
            Ok(())
        }
        fn finish_writeback(&self, offset: u64, len: u64) -> io::Result<()> {
            self.log(Call::Finish(offset, len));
            Ok(())
        }
    }

    /// A `MemFs` whose created files record their calls.
    struct RecordingFs {
        inner: MemFs,
        calls: Arc<Mutex<Vec<Call>>>,
    }

    impl FileSystem for RecordingFs {
        fn open(&self, path: &Path) -> io::Result<Arc<dyn WalFile>> {
            self.inner.open(path)
        }
        fn create(&self, path: &Path) -> io::Result<Arc<dyn WalFile>> {
            Ok(Arc::new(Recording {
                inner: self.inner.create(path)?,
                calls: self.calls.clone(),
            }))
        }
        fn remove(&self, path: &Path) -> io::Result<()> {
            self.inner.remove(path)
        }
        fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
            self.inner.rename(from, to)
        }
        fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
            self.inner.list(dir)
        }
        fn exists(&self, path: &Path) -> io::Result<bool> {
            self.inner.exists(path)
        }
        fn remove_dir_all(&self, dir: &Path) -> io::Result<()> {
            self.inner.remove_dir_all(dir)
        }
        fn sync_dir(&self, dir: &Path) -> io::Result<()> {
            self.inner.sync_dir(dir)
        }
        fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
            self.inner.create_dir_all(dir)
        }
        fn available_space(&self, dir: &Path) -> io::Result<u64> {
            self.inner.available_space(dir)
        }
        fn lock_dir(&self, dir: &Path) -> io::Result<Box<dyn Send + Sync>> {
            self.inner.lock_dir(dir)
        }
    }

    /// A recording file system and a config that zero-fills `size`-byte segments in it.
    fn recording_zero_fill(size: u64) -> (Arc<Mutex<Vec<Call>>>, RecordingFs, WalConfig) {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let fs = RecordingFs {
            inner: MemFs::new(),
            calls: calls.clone(),
        };
        fs.create_dir_all(Path::new("/wal")).unwrap();
        let cfg = WalConfig {
            segment_size: bytesize::ByteSize::b(size),
            min_free_bytes: bytesize::ByteSize::b(0),
            preallocate: Preallocate::Zero,
            ..WalConfig::new("/wal")
        };
        (calls, fs, cfg)
    }

    /// The zero-fill covers the segment once, in order, and never has more than two steps'
    /// writeback under way: each step waits for the one before it, and the fdatasync comes last.
    #[test]
    fn zero_fill_keeps_at_most_two_steps_of_writeback_queued() {
        let size = 8 * ZERO_FILL_STEP_BYTES as u64 + 100;
        let (calls, fs, cfg) = recording_zero_fill(size);
        let prepared = prepare(&fs, &cfg, 1, &FillPace::unpaced()).unwrap();
        assert_eq!(prepared.len, size);
        assert_eq!(prepared.file.len().unwrap(), size);

        let calls = calls.lock().unwrap().clone();
        assert_eq!(calls.last(), Some(&Call::Sync), "{calls:?}");
        let (mut written, mut started) = (0, 0);
        let mut queued: Vec<(u64, u64)> = Vec::new();
        for c in &calls[..calls.len() - 1] {
            match *c {
                Call::Write(at, n) => {
                    assert_eq!(at, written, "{calls:?}");
                    written += n;
                }
                Call::Start(at, n) => {
                    assert_eq!(at, started, "{calls:?}");
                    assert!(at + n <= written, "writeback of unwritten bytes: {calls:?}");
                    started += n;
                    queued.push((at, n));
                    assert!(queued.len() <= 2, "{queued:?} queued at once: {calls:?}");
                }
                Call::Finish(at, n) => {
                    assert_eq!(queued.first(), Some(&(at, n)), "{calls:?}");
                    queued.remove(0);
                }
                Call::Sync => panic!("an fdatasync before the fill ended: {calls:?}"),
            }
        }
        assert_eq!((written, started), (size, size));
        assert!(queued.len() <= 1, "{queued:?}");
    }

    /// Zero bytes written so far by the recorded calls.
    fn zeros_written(calls: &Mutex<Vec<Call>>) -> u64 {
        let calls = calls.lock().unwrap();
        calls
            .iter()
            .map(|c| match *c {
                Call::Write(_, n) => n,
                _ => 0,
            })
            .sum()
    }

    /// Waits (up to a deadline) until `done` holds.
    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Waits until the fill has written `allowed` bytes and then gone to sleep waiting for the
    /// writer, and checks it stopped within one step of `allowed`.
    fn stops_at(calls: &Mutex<Vec<Call>>, pace: &FillPace, allowed: u64) {
        wait_until("the fill to reach its allowance", || {
            zeros_written(calls) >= allowed
        });
        let waits = pace.waits.load(Ordering::Relaxed);
        wait_until("the fill to wait for the writer", || {
            pace.waits.load(Ordering::Relaxed) > waits
        });
        let written = zeros_written(calls);
        let step = ZERO_FILL_STEP_BYTES as u64;
        assert!(
            written <= allowed + step,
            "{written} bytes zero-filled, at most {} allowed",
            allowed + step
        );
    }

    /// What a paced fill's test watches: the file system calls, the pace, the filling thread.
    type PacedFill = (
        Arc<Mutex<Vec<Call>>>,
        Arc<FillPace>,
        std::thread::JoinHandle<Result<Prepared>>,
    );

    /// A paced fill of a `size`-byte file, begun with `active_len` bytes in the active segment.
    fn paced_fill(size: u64, active_len: u64) -> PacedFill {
        let (calls, fs, cfg) = recording_zero_fill(size);
        let pace = Arc::new(FillPace::new());
        pace.progress(active_len);
        let thread_pace = pace.clone();
        let fill = std::thread::spawn(move || prepare(&fs, &cfg, 1, &thread_pace));
        (calls, pace, fill)
    }

    /// A paced fill writes its head start, then keeps within twice what the writer added to the
    /// active segment (plus the head start and one step), and goes at full speed when the
    /// writer waits for it.
    #[test]
    fn a_paced_zero_fill_keeps_twice_ahead_of_the_writer() {
        let step = ZERO_FILL_STEP_BYTES as u64;
        let size = 64 * step;
        let (calls, pace, fill) = paced_fill(size, 0);
        let mut active = 0;
        for _ in 0..4 {
            stops_at(&calls, &pace, FILL_HEAD_START_BYTES + 2 * active);
            active += 3 * step;
            pace.progress(active);
        }
        // The roll came first: the writer waits, so the fill hurries to the end.
        pace.hurry(true);
        wait_until("the fill to end", || fill.is_finished());
        let prepared = fill.join().unwrap().unwrap();
        assert_eq!(prepared.len, size);
        assert_eq!(zeros_written(&calls), size);
    }

    /// A fill asked for late (the active segment three quarters full) keeps pace with the
    /// quarter left: it ends, without hurrying, once the writer has used half of it.
    #[test]
    fn a_paced_zero_fill_asked_for_late_ends_half_way_through_the_room_left() {
        let step = ZERO_FILL_STEP_BYTES as u64;
        let size = 64 * step;
        let (calls, pace, fill) = paced_fill(size, 48 * step);
        stops_at(&calls, &pace, FILL_HEAD_START_BYTES);
        // Half of the 16 steps left: the allowance is the head start and 8 x 2 x 64 / 16 steps.
        pace.progress(56 * step);
        wait_until("the fill to end", || fill.is_finished());
        let prepared = fill.join().unwrap().unwrap();
        assert_eq!(prepared.len, size);
    }

    /// Close stops a paced fill that waits for the writer.
    #[test]
    fn close_stops_a_paced_zero_fill_that_waits() {
        let (calls, pace, fill) = paced_fill(64 * ZERO_FILL_STEP_BYTES as u64, 0);
        stops_at(&calls, &pace, FILL_HEAD_START_BYTES);
        pace.cancel();
        wait_until("the fill to stop", || fill.is_finished());
        assert!(matches!(fill.join().unwrap(), Err(WalError::Closed)));
    }
}

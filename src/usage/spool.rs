//! The write-ahead spool: usage events are appended here, synchronously, before
//! anything else happens to them; sinks read them back from here.
//!
//! # Layout
//!
//! A directory of segment files `seg-<id>.jsonl` (ids increase, zero-padded so
//! names sort), one JSON event per line, plus a `cursor-<sink>` file per sink
//! (`{"segment":ID,"offset":BYTES}`: everything before it is acknowledged by
//! that sink; rewritten at most once a second, and only on close for sinks
//! that keep the cursor in their own transaction, like SQLite) and a `lock`
//! file naming the process that owns the directory.
//!
//! # Guarantees
//!
//! * **Ordering.** [`Spool::append`] hands the whole line to the kernel with
//!   `write(2)` on an `O_APPEND` descriptor under a mutex before it returns. The
//!   request path calls it before the last byte of the response is released, so
//!   once a client has its complete answer the event is in the operating
//!   system's page cache: a crash of the *process* (`kill -9`, panic, OOM) never
//!   loses it. The plain-answer path [`Spool::stage`]s its line instead and
//!   waits for [`Spool::flush`] before it answers: the lines staged by the
//!   requests that finished in one pass of the event loop go to the kernel in
//!   one `write(2)`, still before any of those answers leaves.
//! * **Group commit.** A background thread calls `fdatasync` every
//!   `fsync_interval` when something was appended, so a crash of the *machine*
//!   loses at most that window. No fsync ever happens on the request path.
//! * **Restarts.** A new process never appends to an old segment: it starts a
//!   new one, so every older segment is final. A line torn by a crash (no
//!   trailing newline, or not JSON) is skipped and counted, never merged with
//!   the next event. A failed write also closes the segment for the same reason.
//! * **Cheap appends.** The request path's cost is at most one `write(2)`
//!   under a mutex (shared by the staged lines it carries) and a few atomics;
//!   readers are woken only when one is waiting for the generation just
//!   reached (see [`Spool::wait_for_generation`]).
//! * **At-least-once shipping.** Readers consume complete lines only, deliver
//!   them to their sink, and move their cursor only after the sink acknowledged.
//!   A crash between the acknowledgement and the cursor write replays the batch;
//!   sinks deduplicate by `event_id`.
//! * **Trimming.** Segments wholly before every sink's cursor (and not the one
//!   being written) are deleted.
//! * **Bounded.** Appends that would take the spool above `max_bytes` are
//!   refused (and counted in [`SpoolStats::refused_events`]); the gateway keeps
//!   serving. With a dead sink the spool grows up to the cap and no further.

use super::event::LedgerEvent;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// How the spool is set up (from `[usage]`).
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    pub dir: PathBuf,
    /// A segment is closed and a new one started above this size.
    pub segment_bytes: u64,
    /// Appends beyond this total size on disk are refused.
    pub max_bytes: u64,
    /// Group-commit interval of the fsync thread.
    pub fsync_interval: Duration,
}

/// A place in the spool: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, Default)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("the usage spool is full ({0} bytes); event refused")]
    Full(u64),
    #[error("usage spool write failed: {0}")]
    Io(#[from] std::io::Error),
    /// The staged line was written by another request's flush, and that
    /// `write(2)` failed (its error was logged with the batch).
    #[error("usage spool write failed (in a batch; its error is logged)")]
    Batch,
}

/// A line handed to [`Spool::stage`]: its place in the order of staged lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ticket(u64);

/// Failed batches remembered for the requests still waiting on them; a
/// waiter is back within one pass of the event loop, so a few are plenty.
const FAILED_BATCHES: usize = 16;
/// How long the syncer keeps looking every group-commit window after its last
/// sync before it sleeps until an append wakes it (at 2,000 req/s one request
/// in ten woke it, 1-4 us at the median; afterwards 50 looks at 5 ms).
pub(super) const STAY_AWAKE: Duration = Duration::from_millis(250);
/// A staging buffer that grew beyond this (a burst of long lines) is let go.
const KEEP_STAGED: usize = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("usage spool {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("usage spool {path} is in use by {owner}")]
    Locked { path: PathBuf, owner: String },
}

/// Counters of the spool, for metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SpoolStats {
    pub bytes_on_disk: u64,
    pub max_bytes: u64,
    pub segments: u64,
    pub appended_events: u64,
    /// `write(2)`s that carried events (staged lines share one).
    pub writes: u64,
    pub refused_events: u64,
    pub write_errors: u64,
    pub fsync_errors: u64,
    /// Group commits that synced something.
    pub syncs: u64,
    /// Lines skipped while reading (torn by a crash, or not JSON).
    pub skipped_lines: u64,
    /// Appends that had to wake the fsync thread (it was asleep after
    /// nothing had been appended for a while).
    pub syncer_wakeups: u64,
    pub head: Position,
}

struct Writer {
    /// The segment being appended to; created on the first append.
    file: Option<Arc<File>>,
    id: u64,
    len: u64,
    /// Set after a failed write: the next append starts a new segment so a torn
    /// line never merges with a good one.
    broken: bool,
    /// Lines staged and not yet written, in order.
    staged: Vec<u8>,
    /// Lines ever staged (the last ticket handed out) and ever flushed
    /// (written or failed): tickets up to `flushed` are done.
    staged_lines: u64,
    flushed: u64,
    /// Ticket ranges `(after, through]` whose batch failed, latest last.
    failed: VecDeque<(u64, u64)>,
}

#[derive(Default)]
struct SyncState {
    current: Option<Arc<File>>,
    /// Segments closed since the last sync, synced once more then dropped.
    retired: Vec<Arc<File>>,
}

pub struct Spool {
    opts: SpoolOptions,
    writer: Mutex<Writer>,
    sync: Mutex<SyncState>,
    dirty: AtomicBool,
    /// The fsync thread, once it runs: an append that dirties a clean spool
    /// while it sleeps unparks it, so an idle gateway's syncer sleeps instead
    /// of polling.
    syncer: OnceLock<std::thread::Thread>,
    /// Set while the syncer sleeps until woken (nothing appended for
    /// [`STAY_AWAKE`]); only then does an append unpark it.
    syncer_parked: AtomicBool,
    /// Appends that unparked the syncer.
    syncer_wakeups: AtomicU64,
    /// Bumped on every append; readers wait on it.
    generation: AtomicU64,
    /// The smallest generation a waiting reader wants to be woken at
    /// (`u64::MAX`: nobody waits). Appends below it skip the wake-up, so the
    /// request path pays for a notification only when a reader asked for one.
    wake_at: AtomicU64,
    wait_lock: Mutex<()>,
    changed: Condvar,
    /// The first segment id of this process: every segment before it is final.
    first_own_segment: u64,
    bytes_on_disk: AtomicU64,
    appended: AtomicU64,
    refused: AtomicU64,
    writes: AtomicU64,
    write_errors: AtomicU64,
    fsync_errors: AtomicU64,
    syncs: AtomicU64,
    skipped_lines: AtomicU64,
    canonical: PathBuf,
    /// Run by the next group commit once it has written out what was staged
    /// (a test's way into that window).
    #[cfg(test)]
    in_group_commit: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// Writes still to fail (after writing half their bytes, as a disk that
    /// fills up mid-write does).
    #[cfg(test)]
    failing_writes: AtomicU64,
}

/// Spool directories open in this process (a second gateway on the same
/// directory would interleave segments).
static OPEN_DIRS: Mutex<Option<HashSet<PathBuf>>> = Mutex::new(None);

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn segment_name(id: u64) -> String {
    format!("seg-{id:020}.jsonl")
}

fn segment_id(name: &str) -> Option<u64> {
    name.strip_prefix("seg-")?
        .strip_suffix(".jsonl")?
        .parse()
        .ok()
}

impl Spool {
    /// Opens (creating) the directory, takes ownership of it, and prepares a new
    /// segment id after every existing one.
    pub fn open(opts: SpoolOptions) -> Result<Arc<Self>, SpoolError> {
        let dir = opts.dir.clone();
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let canonical = dir.canonicalize().map_err(io_err(&dir))?;
        {
            let mut open = OPEN_DIRS.lock().unwrap_or_else(|p| p.into_inner());
            let set = open.get_or_insert_with(HashSet::new);
            if !set.insert(canonical.clone()) {
                return Err(SpoolError::Locked {
                    path: dir,
                    owner: "another gateway in this process".into(),
                });
            }
        }
        let release = |e: SpoolError| {
            let mut open = OPEN_DIRS.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(set) = open.as_mut() {
                set.remove(&canonical);
            }
            e
        };
        take_lock(&dir).map_err(release)?;
        let segments = list_segments(&dir).map_err(|e| release(io_err(&dir)(e)))?;
        let mut bytes = 0;
        for (_, path) in &segments {
            bytes += std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        }
        let next = segments.last().map_or(1, |(id, _)| id + 1);
        Ok(Arc::new(Self {
            writer: Mutex::new(Writer {
                file: None,
                id: next,
                len: 0,
                broken: false,
                staged: Vec::new(),
                staged_lines: 0,
                flushed: 0,
                failed: VecDeque::new(),
            }),
            sync: Mutex::new(SyncState::default()),
            dirty: AtomicBool::new(false),
            syncer: OnceLock::new(),
            syncer_parked: AtomicBool::new(false),
            syncer_wakeups: AtomicU64::new(0),
            generation: AtomicU64::new(0),
            wake_at: AtomicU64::new(u64::MAX),
            wait_lock: Mutex::new(()),
            changed: Condvar::new(),
            first_own_segment: next,
            bytes_on_disk: AtomicU64::new(bytes),
            appended: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            write_errors: AtomicU64::new(0),
            fsync_errors: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            skipped_lines: AtomicU64::new(0),
            canonical,
            #[cfg(test)]
            in_group_commit: Mutex::new(None),
            #[cfg(test)]
            failing_writes: AtomicU64::new(0),
            opts,
        }))
    }

    pub fn dir(&self) -> &Path {
        &self.opts.dir
    }

    /// Appends one event line (a trailing newline is added if missing), with
    /// whatever other lines are staged before it, in one `write(2)`. The line
    /// is in the kernel when this returns `Ok`; see the module docs.
    pub fn append(&self, line: &[u8]) -> Result<(), AppendError> {
        let mut w = self.lock_writer();
        self.stage_in(&mut w, line)?;
        self.write_out(w)
    }

    /// Stages one event line to be written by the next [`Spool::flush`] (of
    /// this line or a later one), by an [`Spool::append`], or at the latest by
    /// the fsync thread's next group commit. Refused like an append when the
    /// spool is full.
    pub fn stage(&self, line: &[u8]) -> Result<Ticket, AppendError> {
        let ticket = self.stage_in(&mut self.lock_writer(), line)?;
        // The syncer's next round writes the line even if nobody flushes it
        // (its request was cancelled while waiting).
        self.mark_dirty();
        Ok(ticket)
    }

    /// Makes sure the staged line of `ticket` is in the kernel: writes
    /// everything staged in one `write(2)` unless an earlier flush already
    /// took it. `Err` if the write that carried the line failed.
    pub fn flush(&self, ticket: Ticket) -> Result<(), AppendError> {
        let w = self.lock_writer();
        if ticket.0 > w.flushed {
            return self.write_out(w);
        }
        if w.failed
            .iter()
            .any(|&(after, through)| after < ticket.0 && ticket.0 <= through)
        {
            return Err(AppendError::Batch);
        }
        Ok(())
    }

    fn lock_writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Something is in (or about to be in) the kernel unsynced. Only the
    /// first mark of a group commit, and only while the syncer sleeps until
    /// woken, wakes it: under load no request does. (Unparking a parked
    /// thread is a `futex` call, and on a shared core the woken syncer may
    /// run before the request's answer leaves.)
    fn mark_dirty(&self) {
        // SeqCst pairs with the syncer's store of `syncer_parked` and its load
        // of `dirty`: either it sees this mark or this sees it parked.
        if !self.dirty.swap(true, Ordering::SeqCst) && self.syncer_parked.load(Ordering::SeqCst) {
            if let Some(t) = self.syncer.get() {
                self.syncer_wakeups.fetch_add(1, Ordering::Relaxed);
                t.unpark();
            }
        }
    }

    fn stage_in(&self, w: &mut Writer, line: &[u8]) -> Result<Ticket, AppendError> {
        let newline = !line.ends_with(b"\n");
        let len = line.len() as u64 + u64::from(newline);
        let on_disk = self.bytes_on_disk.load(Ordering::Relaxed);
        if on_disk + w.staged.len() as u64 + len > self.opts.max_bytes {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(AppendError::Full(on_disk));
        }
        w.staged.extend_from_slice(line);
        if newline {
            w.staged.push(b'\n');
        }
        w.staged_lines += 1;
        Ok(Ticket(w.staged_lines))
    }

    /// Writes every staged line and releases the writer; then counts the
    /// lines written and wakes whoever waits for them. Every staged line
    /// shares the write's outcome.
    fn write_out(&self, mut guard: MutexGuard<'_, Writer>) -> Result<(), AppendError> {
        let w = &mut *guard;
        let lines = w.staged_lines - w.flushed;
        if lines == 0 {
            return Ok(());
        }
        let result = self.write_batch(w);
        if result.is_err() {
            if w.failed.len() == FAILED_BATCHES {
                w.failed.pop_front();
            }
            w.failed.push_back((w.flushed, w.staged_lines));
            if lines > 1 {
                tracing::error!(
                    events = lines,
                    "usage spool write failed for a batch of events"
                );
            }
        }
        w.flushed = w.staged_lines;
        w.staged.clear();
        if w.staged.capacity() > KEEP_STAGED {
            w.staged = Vec::new();
        }
        drop(guard);
        if result.is_ok() {
            self.announce(lines);
        }
        result
    }

    fn write_batch(&self, w: &mut Writer) -> Result<(), AppendError> {
        let len = w.staged.len() as u64;
        if w.broken {
            // A failed write may have left part of its batch: cut the segment
            // back to its last whole line and go on in it. A new segment per
            // failure instead left thousands of empty files behind a disk
            // that was full for a minute (and readers listed them all to step
            // over each one).
            let cut = w.file.as_ref().is_some_and(|f| f.set_len(w.len).is_ok());
            if cut {
                w.broken = false;
            } else {
                self.rotate(w);
            }
        }
        if w.file.is_some() && w.len + len > self.opts.segment_bytes {
            self.rotate(w);
        }
        let file = match &w.file {
            Some(f) => f.clone(),
            None => {
                let path = self.opts.dir.join(segment_name(w.id));
                let f = Arc::new(
                    OpenOptions::new()
                        .create_new(true)
                        .append(true)
                        .open(&path)
                        .inspect_err(|_| {
                            self.write_errors.fetch_add(1, Ordering::Relaxed);
                            // Try the next id next time.
                            w.id += 1;
                        })?,
                );
                w.file = Some(f.clone());
                w.len = 0;
                self.sync.lock().unwrap_or_else(|p| p.into_inner()).current = Some(f.clone());
                f
            }
        };
        self.writes.fetch_add(1, Ordering::Relaxed);
        #[cfg(test)]
        if self
            .failing_writes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            let _ = (&*file).write_all(&w.staged[..w.staged.len() / 2]);
            w.broken = true;
            return Err(std::io::Error::other("injected: no space left").into());
        }
        if let Err(e) = (&*file).write_all(&w.staged) {
            self.write_errors.fetch_add(1, Ordering::Relaxed);
            w.broken = true;
            return Err(e.into());
        }
        w.len += len;
        self.bytes_on_disk.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    /// After `written` lines reached the kernel: counts them, and wakes the
    /// syncer and any reader waiting for them.
    fn announce(&self, written: u64) {
        self.appended.fetch_add(written, Ordering::Relaxed);
        self.mark_dirty();
        let g = self.generation.fetch_add(written, Ordering::SeqCst) + written;
        if g >= self.wake_at.load(Ordering::SeqCst) {
            self.wake_at.store(u64::MAX, Ordering::SeqCst);
            let _guard = self.wait_lock.lock().unwrap_or_else(|p| p.into_inner());
            self.changed.notify_all();
        }
    }

    /// Closes the current segment (it is synced once more by the fsync thread)
    /// so that the next append starts a new one.
    fn rotate(&self, w: &mut Writer) {
        if let Some(f) = w.file.take() {
            let mut s = self.sync.lock().unwrap_or_else(|p| p.into_inner());
            s.retired.push(f);
            s.current = None;
            w.id += 1;
        } else if w.broken {
            w.id += 1;
        }
        w.len = 0;
        w.broken = false;
    }

    /// Syncs what was appended since the last call (the group commit),
    /// after writing what is staged and still unwritten.
    pub fn sync_now(&self) {
        // Cleared before the staged lines are written, not after: a line
        // staged once they are written marks the spool dirty again for the
        // next round (cleared after, its mark was lost with the others', and
        // the line stayed unwritten until some later request's write).
        let dirty = self.dirty.swap(false, Ordering::AcqRel);
        // A failure is counted and logged by the write, and reported to the
        // lines' own flushes.
        let _ = self.write_out(self.lock_writer());
        #[cfg(test)]
        if let Some(f) = self.in_group_commit.lock().ok().and_then(|mut h| h.take()) {
            f();
        }
        if !dirty && !self.has_retired() {
            return;
        }
        let (current, retired) = {
            let mut s = self.sync.lock().unwrap_or_else(|p| p.into_inner());
            (s.current.clone(), std::mem::take(&mut s.retired))
        };
        for f in retired.iter().chain(current.iter()) {
            if let Err(e) = f.sync_data() {
                self.fsync_errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, "usage spool fsync failed");
                self.dirty.store(true, Ordering::Release);
            }
        }
        self.syncs.fetch_add(1, Ordering::Relaxed);
    }

    /// The fsync thread's loop until `stop`. Once an append dirties the
    /// spool, it waits `fsync_interval` (the group commit window) and syncs
    /// everything appended meanwhile. Then it stays awake for [`STAY_AWAKE`],
    /// looking again every window and syncing what came, so that under load
    /// no append has to wake it. After that long with nothing appended it
    /// sleeps until an append wakes it: polling instead would wake an idle
    /// gateway 200 times a second.
    pub fn run_syncer(self: Arc<Self>, stop: Arc<AtomicBool>) {
        let _ = self.syncer.set(std::thread::current());
        let window = self.opts.fsync_interval;
        let awake_windows = (STAY_AWAKE.as_nanos() / window.as_nanos().max(1)).max(1);
        // Windows left to look before sleeping until an append wakes it.
        let mut awake = 0;
        while !stop.load(Ordering::Acquire) {
            if awake == 0 {
                self.syncer_parked.store(true, Ordering::SeqCst);
                if !self.dirty.load(Ordering::SeqCst) && !self.has_retired() {
                    // Woken by the first append (see `mark_dirty`) or by
                    // `stop_syncer`; the timeout only bounds a missed wake-up.
                    std::thread::park_timeout(Duration::from_secs(1));
                }
                self.syncer_parked.store(false, Ordering::SeqCst);
                if !self.dirty.load(Ordering::Acquire) && !self.has_retired() {
                    continue;
                }
                awake = awake_windows;
            }
            // One window, then a group commit of whatever came during it.
            self.wait_window(&stop);
            if self.dirty.load(Ordering::Acquire) || self.has_retired() {
                self.sync_now();
                awake = awake_windows;
            } else {
                awake -= 1;
            }
        }
        self.sync_now();
    }

    /// Sleeps one group-commit window. Parked rather than asleep, so that
    /// `stop_syncer` ends the window early: shutdown syncs at once instead of
    /// waiting out a long `fsync_interval_ms` (an hour's interval held it for
    /// an hour).
    fn wait_window(&self, stop: &AtomicBool) {
        let deadline = Instant::now() + self.opts.fsync_interval;
        while !stop.load(Ordering::Acquire) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::park_timeout(left);
        }
    }

    /// Wakes a parked syncer so that it sees `stop`.
    pub fn stop_syncer(&self) {
        if let Some(t) = self.syncer.get() {
            t.unpark();
        }
    }

    fn has_retired(&self) -> bool {
        !self
            .sync
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retired
            .is_empty()
    }

    /// Where the next append goes.
    pub fn head(&self) -> Position {
        let w = self.lock_writer();
        Position {
            segment: w.id,
            offset: w.len,
        }
    }

    /// How many events were appended by this process (readers wait on it).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Waits until something is appended after `seen`, or `timeout`.
    pub fn wait_for_append(&self, seen: u64, timeout: Duration) {
        self.wait_for_generation(seen.saturating_add(1), timeout);
    }

    /// Waits until the generation reaches `target`, or `timeout`, or any
    /// wake-up (callers loop on their own condition).
    pub fn wait_for_generation(&self, target: u64, timeout: Duration) {
        let guard = self.wait_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.wake_at.fetch_min(target, Ordering::SeqCst);
        if self.generation.load(Ordering::SeqCst) >= target {
            return;
        }
        let _ = self
            .changed
            .wait_timeout(guard, timeout)
            .map_err(|p| p.into_inner());
    }

    /// Wakes every waiting reader (on shutdown).
    pub fn wake_readers(&self) {
        let _guard = self.wait_lock.lock().unwrap_or_else(|p| p.into_inner());
        self.changed.notify_all();
    }

    /// The spool's identity for sinks that keep its cursor (its canonical
    /// directory).
    pub fn key(&self) -> String {
        self.canonical.to_string_lossy().into_owned()
    }

    /// Makes sure this process appends after `pos` (a cursor a sink kept for
    /// this spool): when the directory was emptied while the sink kept its
    /// cursor, new segments must still sort after it or they would be skipped.
    pub fn reserve_after(&self, pos: Position) {
        let mut w = self.lock_writer();
        if w.file.is_none() && w.id <= pos.segment {
            w.id = pos.segment + 1;
            w.len = 0;
        }
    }

    /// Complete lines from `from` in the segments written by earlier processes
    /// (all final): a sink's backlog at start.
    pub fn count_backlog(&self, from: Position) -> u64 {
        let Ok(segments) = list_segments(&self.opts.dir) else {
            return 0;
        };
        let mut n = 0u64;
        for (id, path) in segments {
            if id < from.segment || id >= self.first_own_segment {
                continue;
            }
            let Ok(mut f) = File::open(&path) else {
                continue;
            };
            if id == from.segment && f.seek(SeekFrom::Start(from.offset)).is_err() {
                continue;
            }
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match f.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => n += buf[..k].iter().filter(|&&b| b == b'\n').count() as u64,
                }
            }
        }
        n
    }

    /// The oldest position still in the spool.
    pub fn start(&self) -> Position {
        let first = list_segments(&self.opts.dir)
            .ok()
            .and_then(|s| s.first().map(|(id, _)| *id));
        Position {
            segment: first.unwrap_or_else(|| self.head().segment),
            offset: 0,
        }
    }

    /// Reads up to `max_events` complete events after `from` into `buf` (the
    /// caller's, reused from batch to batch). Returns the events, borrowed from
    /// `buf`, and the position after the last line consumed (which may be past
    /// `from` with no events when only torn or corrupt lines were skipped).
    pub fn read_batch<'b>(
        &self,
        from: Position,
        max_events: usize,
        max_bytes: usize,
        buf: &'b mut Vec<u8>,
    ) -> std::io::Result<(Vec<LedgerEvent<'b>>, Position)> {
        let mut pos = from;
        loop {
            // Read the head first: a segment older than the head is final.
            let head = self.head();
            let segments = list_segments(&self.opts.dir)?;
            let Some((id, path)) = segments.into_iter().find(|(id, _)| *id >= pos.segment) else {
                return Ok((Vec::new(), pos));
            };
            if id > pos.segment {
                pos = Position {
                    segment: id,
                    offset: 0,
                };
            }
            let is_final = id < head.segment;
            // In the head segment, only what was written whole: a write that
            // failed may have left part of its batch, which the next write
            // cuts off before going on (a reader that took whole lines of it
            // would then stand past the cut).
            let written = if id == head.segment {
                let written = head.offset.saturating_sub(pos.offset);
                if written == 0 {
                    return Ok((Vec::new(), pos));
                }
                usize::try_from(written).unwrap_or(usize::MAX)
            } else {
                usize::MAX
            };
            let mut f = match File::open(&path) {
                Ok(f) => f,
                // Trimmed under us: look again.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            f.seek(SeekFrom::Start(pos.offset))?;
            buf.clear();
            let mut lines = read_lines(&mut f, buf, max_events, max_bytes.min(written))?;
            if buf.len() > written {
                // Read on past `max_bytes` for one long line: not past the
                // written part either.
                buf.truncate(written);
                lines = memchr::memchr_iter(b'\n', buf).count();
            }
            let Some(last_nl) = memchr::memrchr(b'\n', buf) else {
                if is_final {
                    if !buf.is_empty() {
                        self.skipped_lines.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(
                            segment = id,
                            offset = pos.offset,
                            bytes = buf.len(),
                            "usage spool: skipping a torn line at the end of a segment"
                        );
                    }
                    pos = Position {
                        segment: id + 1,
                        offset: 0,
                    };
                    continue;
                }
                return Ok((Vec::new(), pos));
            };
            let whole = &buf[..=last_nl];
            // Sized once: a batch of a thousand events grown by doubling
            // copied its ~450-byte events ten times over.
            let mut events = Vec::with_capacity(lines.min(max_events));
            let mut consumed = 0usize;
            for nl in memchr::memchr_iter(b'\n', whole) {
                if events.len() >= max_events {
                    break;
                }
                let line = &whole[consumed..=nl];
                consumed = nl + 1;
                let body = &line[..line.len() - 1];
                if body.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match LedgerEvent::from_line(body) {
                    Ok(ev) => events.push(ev),
                    Err(e) => {
                        self.skipped_lines.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(segment = id, offset = pos.offset + (consumed - line.len()) as u64, error = %e, "usage spool: skipping a line that is not an event");
                    }
                }
            }
            pos.offset += consumed as u64;
            return Ok((events, pos));
        }
    }

    /// Deletes segments wholly before `upto` (never the one being written).
    pub fn trim(&self, upto: Position) {
        let head = self.head().segment;
        let Ok(segments) = list_segments(&self.opts.dir) else {
            return;
        };
        for (id, path) in segments {
            if id >= upto.segment || id >= head {
                break;
            }
            let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    let _ = self.bytes_on_disk.fetch_update(
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                        |b| Some(b.saturating_sub(len)),
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, path = %path.display(), "usage spool: cannot delete a shipped segment")
                }
            }
        }
    }

    /// The cursor of sink `name`, if it has one.
    pub fn load_cursor(&self, name: &str) -> Option<Position> {
        let text = std::fs::read(self.opts.dir.join(format!("cursor-{name}"))).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Records that sink `name` acknowledged everything before `pos`. Not
    /// fsynced: a lost cursor only replays events, which sinks deduplicate.
    pub fn save_cursor(&self, name: &str, pos: Position) -> std::io::Result<()> {
        let path = self.opts.dir.join(format!("cursor-{name}"));
        let tmp = self.opts.dir.join(format!(".cursor-{name}.tmp"));
        std::fs::write(
            &tmp,
            serde_json::to_vec(&pos).map_err(std::io::Error::other)?,
        )?;
        std::fs::rename(&tmp, &path)
    }

    /// Bytes between `from` and the head (what a sink has yet to acknowledge).
    pub fn lag_bytes(&self, from: Position) -> u64 {
        let head = self.head();
        if from >= head {
            return 0;
        }
        let Ok(segments) = list_segments(&self.opts.dir) else {
            return 0;
        };
        let mut lag = 0;
        for (id, path) in segments {
            if id < from.segment {
                continue;
            }
            let len = if id == head.segment {
                head.offset
            } else {
                std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
            };
            lag += if id == from.segment {
                len.saturating_sub(from.offset)
            } else {
                len
            };
        }
        lag
    }

    pub fn stats(&self) -> SpoolStats {
        SpoolStats {
            bytes_on_disk: self.bytes_on_disk.load(Ordering::Relaxed),
            max_bytes: self.opts.max_bytes,
            segments: list_segments(&self.opts.dir).map_or(0, |s| s.len() as u64),
            appended_events: self.appended.load(Ordering::Relaxed),
            refused_events: self.refused.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
            write_errors: self.write_errors.load(Ordering::Relaxed),
            fsync_errors: self.fsync_errors.load(Ordering::Relaxed),
            syncs: self.syncs.load(Ordering::Relaxed),
            skipped_lines: self.skipped_lines.load(Ordering::Relaxed),
            syncer_wakeups: self.syncer_wakeups.load(Ordering::Relaxed),
            head: self.head(),
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.sync_now();
        let _ = std::fs::remove_file(self.opts.dir.join("lock"));
        let mut open = OPEN_DIRS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(set) = open.as_mut() {
            set.remove(&self.canonical);
        }
    }
}

/// What a batch reads at first per event it may take: lines are 600-900
/// bytes. Reading the whole byte budget (4 MiB) for a batch of 256 events
/// copied a backlog's tail from the page cache again and again.
const READ_PER_EVENT: usize = 1024;

/// Reads `f` into `buf` until `buf` holds `max_events` complete lines, the
/// file ends, or `max_bytes` are read; then, if not one line is complete, on
/// to the end of the file (a line longer than a batch is read whole).
/// Returns how many newlines `buf` holds.
fn read_lines(
    f: &mut File,
    buf: &mut Vec<u8>,
    max_events: usize,
    max_bytes: usize,
) -> std::io::Result<usize> {
    let mut lines = 0usize;
    let chunk = max_events
        .saturating_mul(READ_PER_EVENT)
        .min(max_bytes)
        .max(1);
    loop {
        let start = buf.len();
        let want = chunk.min(max_bytes.saturating_sub(start));
        if want == 0 {
            break;
        }
        buf.reserve(want);
        let n = f.take(want as u64).read_to_end(buf)?;
        lines += memchr::memchr_iter(b'\n', &buf[start..]).count();
        if n < want || lines >= max_events {
            return Ok(lines);
        }
    }
    if lines == 0 {
        let start = buf.len();
        f.read_to_end(buf)?;
        lines = memchr::memchr_iter(b'\n', &buf[start..]).count();
    }
    Ok(lines)
}

/// Segment files of `dir`, sorted by id.
fn list_segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(id) = entry.file_name().to_str().and_then(segment_id) {
            out.push((id, entry.path()));
        }
    }
    out.sort_unstable_by_key(|(id, _)| *id);
    Ok(out)
}

/// Takes the directory's `lock` file: refused while another live process (same
/// program name, per `/proc`) holds it; a dead owner's lock (after `kill -9`) is
/// taken over.
fn take_lock(dir: &Path) -> Result<(), SpoolError> {
    let path = dir.join("lock");
    let me = std::process::id();
    if let Ok(text) = std::fs::read_to_string(&path) {
        if let Ok(pid) = text.trim().parse::<u32>() {
            if pid != me && process_alive_same_program(pid) {
                return Err(SpoolError::Locked {
                    path: dir.to_path_buf(),
                    owner: format!("process {pid}"),
                });
            }
        }
    }
    std::fs::write(&path, format!("{me}\n")).map_err(io_err(&path))
}

fn process_alive_same_program(pid: u32) -> bool {
    let comm = |p: &str| std::fs::read_to_string(format!("/proc/{p}/comm")).ok();
    match (comm(&pid.to_string()), comm("self")) {
        (Some(theirs), Some(mine)) => theirs == mine,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dir: &Path) -> SpoolOptions {
        SpoolOptions {
            dir: dir.to_path_buf(),
            segment_bytes: 300,
            max_bytes: 10_000,
            fsync_interval: Duration::from_millis(5),
        }
    }

    fn line(i: u32) -> Vec<u8> {
        format!(r#"{{"event_id":"e{i}","ts":"2025-01-01T00:00:00Z","request_id":"r{i}","reseller":"a","tenant":"t"}}"#).into_bytes()
    }

    fn drain(spool: &Spool, mut pos: Position) -> (Vec<String>, Position) {
        let mut ids = Vec::new();
        let mut buf = Vec::new();
        loop {
            let (evs, next) = spool.read_batch(pos, 3, 1 << 20, &mut buf).unwrap();
            if evs.is_empty() && next == pos {
                return (ids, pos);
            }
            ids.extend(evs.into_iter().map(|e| e.event_id.into_owned()));
            pos = next;
        }
    }

    /// Voluntary context switches of this process's thread named `name`.
    fn switches_of(name: &str) -> u64 {
        for task in std::fs::read_dir("/proc/self/task").unwrap() {
            let dir = task.unwrap().path();
            if std::fs::read_to_string(dir.join("comm")).unwrap().trim() == name {
                let status = std::fs::read_to_string(dir.join("status")).unwrap();
                let line = status
                    .lines()
                    .find(|l| l.starts_with("voluntary_ctxt_switches:"))
                    .unwrap();
                return line.split_whitespace().nth(1).unwrap().parse().unwrap();
            }
        }
        panic!("no thread named {name}");
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
        let end = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(
                std::time::Instant::now() < end,
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// `spool`'s fsync thread, named `name`, once it runs; stop it with
    /// [`stop_syncer`].
    fn start_syncer(
        spool: &Arc<Spool>,
        name: &str,
    ) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
        let stop = Arc::new(AtomicBool::new(false));
        let syncer = std::thread::Builder::new()
            .name(name.into())
            .spawn({
                let (spool, stop) = (spool.clone(), stop.clone());
                move || spool.run_syncer(stop)
            })
            .unwrap();
        wait_for("the syncer to start", || spool.syncer.get().is_some());
        (stop, syncer)
    }

    /// [`start_syncer`], then one line appended and group-committed.
    fn after_first_group_commit(
        spool: &Arc<Spool>,
        name: &str,
    ) -> (Arc<AtomicBool>, std::thread::JoinHandle<()>) {
        let started = start_syncer(spool, name);
        spool.append(&line(0)).unwrap();
        wait_for("the first group commit", || spool.stats().syncs == 1);
        started
    }

    fn stop_syncer(spool: &Spool, stop: &AtomicBool) {
        stop.store(true, Ordering::Release);
        spool.stop_syncer();
    }

    /// Writes that fail (a full disk) neither leave a torn line before the next
    /// good one nor a new segment each: the segment is cut back to its last
    /// whole line and used on.
    #[test]
    fn failed_writes_are_cut_back_and_do_not_multiply_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(dir.path());
        o.segment_bytes = 1 << 20;
        let spool = Spool::open(o).unwrap();
        spool.append(&line(1)).unwrap();
        spool.failing_writes.store(50, Ordering::SeqCst);
        // Batches of two lines, each write failing after the first whole one.
        for i in 0..50 {
            spool.stage(&line(100 + 2 * i)).unwrap();
            let second = spool.stage(&line(101 + 2 * i)).unwrap();
            assert!(spool.flush(second).is_err());
        }
        // A reader meanwhile sees the written lines only, not the failed
        // write's part, which it would otherwise stand past once cut off.
        let (ids, at) = drain(&spool, spool.start());
        assert_eq!(ids, ["e1"]);
        spool.append(&line(2)).unwrap();
        assert_eq!(drain(&spool, at).0, ["e2"]);
        assert_eq!(drain(&spool, spool.start()).0, ["e1", "e2"]);
        assert_eq!(spool.stats().segments, 1);
        assert_eq!(spool.skipped_lines.load(Ordering::Relaxed), 0);
    }

    /// A line staged while a group commit is under way, once it has written
    /// the staged lines, leaves the spool dirty: the syncer's next round
    /// writes it rather than sleeping with it unwritten (its request may have
    /// been cancelled, and nobody else would flush it).
    #[test]
    fn a_line_staged_during_a_group_commit_keeps_the_spool_dirty() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(opts(dir.path())).unwrap();
        spool.stage(&line(1)).unwrap();
        let late = spool.clone();
        *spool.in_group_commit.lock().unwrap() = Some(Box::new(move || {
            late.stage(&line(2)).unwrap();
        }));
        spool.sync_now();
        assert!(
            spool.dirty.load(Ordering::SeqCst),
            "the line staged during the group commit was left for nobody"
        );
        spool.sync_now();
        assert_eq!(drain(&spool, spool.start()).0, ["e1", "e2"]);
    }

    #[test]
    fn the_syncer_sleeps_while_nothing_is_appended_and_wakes_on_the_first_append() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(opts(dir.path())).unwrap();
        let (stop, syncer) = after_first_group_commit(&spool, "spool-sync-test");
        // It looks again every window for STAY_AWAKE, then sleeps.
        wait_for("the syncer to sleep", || {
            spool.syncer_parked.load(Ordering::SeqCst)
        });

        // Idle: a polling syncer would wake every 5 ms (about 60 times here).
        let before = switches_of("spool-sync-test");
        std::thread::sleep(Duration::from_millis(300));
        let woke = switches_of("spool-sync-test") - before;
        assert!(woke <= 2, "an idle syncer woke {woke} times in 300 ms");
        assert_eq!(spool.stats().syncs, 1);

        // The next append wakes it, and is synced without waiting out the
        // park timeout.
        let wakeups = spool.stats().syncer_wakeups;
        spool.append(&line(2)).unwrap();
        wait_for("the second group commit", || spool.stats().syncs == 2);
        assert_eq!(spool.stats().syncer_wakeups, wakeups + 1);
        stop_syncer(&spool, &stop);
        syncer.join().unwrap();
    }

    /// Under steady appends the syncer keeps its own time: no append wakes it
    /// (a `futex` call, and on a shared core a switch before the request's
    /// answer leaves), and what they append is still synced every window.
    #[test]
    fn steady_appends_never_wake_the_syncer_and_are_synced_every_window() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(SpoolOptions {
            segment_bytes: 1 << 20,
            ..opts(dir.path())
        })
        .unwrap();
        let (stop, syncer) = after_first_group_commit(&spool, "spool-sync-busy");
        let wakeups = spool.stats().syncer_wakeups;
        for i in 1..=40 {
            spool.append(&line(i)).unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        wait_for("the last appends synced", || {
            !spool.dirty.load(Ordering::SeqCst)
        });
        let stats = spool.stats();
        assert_eq!(stats.syncer_wakeups, wakeups, "an append woke the syncer");
        // About 80 ms of appends at one group commit per 5 ms window.
        assert!(stats.syncs >= 5, "{} group commits", stats.syncs);
        stop_syncer(&spool, &stop);
        syncer.join().unwrap();
    }

    #[test]
    fn stopping_ends_a_long_group_commit_window_and_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(SpoolOptions {
            fsync_interval: Duration::from_secs(3600),
            ..opts(dir.path())
        })
        .unwrap();
        let (stop, syncer) = start_syncer(&spool, "spool-sync-hour");
        // The first append opens an hour-long window.
        spool.append(&line(1)).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(spool.stats().syncs, 0);
        stop_syncer(&spool, &stop);
        // A liveness bound, not a timing claim: asleep for the window, the
        // syncer would hold shutdown for the hour.
        wait_for("the syncer to stop", || syncer.is_finished());
        syncer.join().unwrap();
        assert!(spool.stats().syncs >= 1, "the window's events were synced");
    }

    #[test]
    fn segments_rotate_are_read_in_order_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(opts(dir.path())).unwrap();
        for i in 0..20 {
            spool.append(&line(i)).unwrap();
        }
        assert!(spool.stats().segments > 3);
        let (ids, end) = drain(&spool, spool.start());
        let want: Vec<String> = (0..20).map(|i| format!("e{i}")).collect();
        assert_eq!(ids, want);
        spool.trim(end);
        assert_eq!(spool.stats().segments, 1);
        assert_eq!(spool.lag_bytes(end), 0);
    }

    /// A line of `len` bytes (newline excluded) with id `e{i}`.
    fn long_line(i: u32, len: usize) -> Vec<u8> {
        let mut l = line(i);
        let pad = len - l.len() - r#","pad":"""#.len();
        l.pop();
        l.extend_from_slice(br#","pad":""#);
        l.extend(std::iter::repeat_n(b'x', pad));
        l.extend_from_slice(br#""}"#);
        assert_eq!(l.len(), len);
        l
    }

    /// A batch reads on until it holds its events, however long the lines
    /// (each read takes about a kilobyte per event), and stops at the byte
    /// budget, except that a first line longer than the budget is read whole.
    #[test]
    fn a_batch_holds_its_events_whatever_the_length_of_the_lines() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(SpoolOptions {
            segment_bytes: 1 << 20,
            max_bytes: 1 << 22,
            ..opts(dir.path())
        })
        .unwrap();
        let lens = [3_000, 5_000, 200, 2_500, 9_000, 300];
        for (i, len) in lens.iter().enumerate() {
            spool.append(&long_line(i as u32, *len)).unwrap();
        }
        let start = spool.start();
        let mut buf = Vec::new();
        let read = |pos, max_events, max_bytes, buf: &mut Vec<u8>| {
            let (evs, next) = spool.read_batch(pos, max_events, max_bytes, buf).unwrap();
            let ids: Vec<String> = evs.iter().map(|e| e.event_id.to_string()).collect();
            (ids, next)
        };
        let offset =
            |n: usize| start.offset + lens[..n].iter().map(|l| l + 1).sum::<usize>() as u64;

        // Three events of 3,000-5,000 bytes: beyond the first 3 KiB read.
        let (ids, next) = read(start, 3, 1 << 20, &mut buf);
        assert_eq!(ids, ["e0", "e1", "e2"]);
        assert_eq!(next.offset, offset(3));

        // The byte budget ends the batch early, at a whole line.
        let (ids, next) = read(start, 5, 8_500, &mut buf);
        assert_eq!(ids, ["e0", "e1", "e2"]);
        assert_eq!(next.offset, offset(3));

        // A first line longer than the budget is read whole (with the rest
        // of the segment, as far as the batch takes events).
        let at_e4 = Position {
            offset: offset(4),
            ..start
        };
        let (ids, next) = read(at_e4, 1, 1_000, &mut buf);
        assert_eq!(ids, ["e4"]);
        assert_eq!(next.offset, offset(5));

        // All of it, and nothing after the end.
        let (ids, next) = read(start, 100, 1 << 20, &mut buf);
        assert_eq!(ids, ["e0", "e1", "e2", "e3", "e4", "e5"]);
        assert_eq!(next.offset, offset(6));
        let (ids, again) = read(next, 100, 1 << 20, &mut buf);
        assert!(ids.is_empty());
        assert_eq!(again, next);
    }

    #[test]
    fn a_torn_line_is_skipped_and_a_restart_starts_a_new_segment() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(opts(dir.path())).unwrap();
            spool.append(&line(1)).unwrap();
        }
        // A crash mid-write: half a line at the end of the segment.
        let seg = list_segments(dir.path()).unwrap()[0].1.clone();
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&line(2)[..20]).unwrap();
        let spool = Spool::open(opts(dir.path())).unwrap();
        spool.append(&line(3)).unwrap();
        let (ids, _) = drain(&spool, spool.start());
        assert_eq!(ids, vec!["e1", "e3"]);
        assert_eq!(spool.stats().skipped_lines, 1);
    }

    #[test]
    fn the_cap_refuses_appends_and_a_second_open_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut o = opts(dir.path());
        o.max_bytes = 500;
        let spool = Spool::open(o.clone()).unwrap();
        let mut refused = 0;
        for i in 0..20 {
            if spool.append(&line(i)).is_err() {
                refused += 1;
            }
        }
        assert!(refused > 10);
        assert!(spool.stats().bytes_on_disk <= 500);
        assert!(matches!(Spool::open(o), Err(SpoolError::Locked { .. })));
    }

    #[test]
    fn staged_lines_wait_for_a_flush_which_writes_them_all_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(SpoolOptions {
            segment_bytes: 1 << 20,
            ..opts(dir.path())
        })
        .unwrap();
        let tickets: Vec<Ticket> = (0..5).map(|i| spool.stage(&line(i)).unwrap()).collect();
        // Staged is not written: no reader sees the lines yet.
        assert_eq!(drain(&spool, spool.start()).0, Vec::<String>::new());
        assert_eq!(spool.stats().appended_events, 0);
        // The third request's flush writes all five, in order, in one write.
        spool.flush(tickets[2]).unwrap();
        let stats = spool.stats();
        assert_eq!((stats.appended_events, stats.writes), (5, 1));
        assert_eq!(spool.generation(), 5);
        // The others find theirs written and write nothing more.
        for t in &tickets {
            spool.flush(*t).unwrap();
        }
        assert_eq!(spool.stats().writes, 1);
        let want: Vec<String> = (0..5).map(|i| format!("e{i}")).collect();
        assert_eq!(drain(&spool, spool.start()).0, want);
        // An append takes what is staged before it along, in order.
        spool.stage(&line(5)).unwrap();
        spool.append(&line(6)).unwrap();
        assert_eq!(spool.stats().writes, 2);
        let want: Vec<String> = (0..7).map(|i| format!("e{i}")).collect();
        assert_eq!(drain(&spool, spool.start()).0, want);
    }

    #[test]
    fn a_staged_line_nobody_flushes_is_written_by_the_group_commit() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(opts(dir.path())).unwrap();
        let (stop, syncer) = start_syncer(&spool, "spool-sync-staged");
        // Its request was cancelled while waiting for the flush.
        spool.stage(&line(1)).unwrap();
        wait_for("the group commit", || spool.stats().syncs >= 1);
        assert_eq!(drain(&spool, spool.start()).0, ["e1"]);
        stop_syncer(&spool, &stop);
        syncer.join().unwrap();
    }

    #[test]
    fn every_line_of_a_failed_batch_reports_the_failure_and_the_cap_counts_staged_lines() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(SpoolOptions {
            max_bytes: 500,
            ..opts(dir.path())
        })
        .unwrap();
        let first = spool.stage(&line(1)).unwrap();
        spool.flush(first).unwrap();
        // The directory is gone: the next segment cannot be created.
        let a = spool.stage(&line(2)).unwrap();
        let b = spool.stage(&line(3)).unwrap();
        {
            let mut w = spool.lock_writer();
            spool.rotate(&mut w);
        }
        std::fs::remove_dir_all(dir.path()).unwrap();
        assert!(matches!(spool.flush(b), Err(AppendError::Io(_))));
        assert!(matches!(spool.flush(a), Err(AppendError::Batch)));
        assert!(spool.flush(first).is_ok());
        assert_eq!(spool.stats().appended_events, 1);
        // Staged bytes count against the cap before they are written.
        let mut refused = 0;
        for i in 0..10 {
            if matches!(spool.stage(&line(i)), Err(AppendError::Full(_))) {
                refused += 1;
            }
        }
        assert!(refused >= 5, "only {refused} of 10 staged lines refused");
    }
}

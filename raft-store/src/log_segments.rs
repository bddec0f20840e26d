//! The Raft log's entries in append-only segment files, `raft-log/<first index>.seg`.
//!
//! Every write to the store waits for a log commit on the leader and on a follower, so
//! that commit is the disk operation on each write's path. Appending entries at the end
//! of a file and syncing it writes one run of bytes; a B-tree commit writes several pages
//! at scattered offsets (the tree's leaf and branches, its table root, the free-page
//! list, the header), which took this disk twice as long (bench/README.md).
//!
//! A record is a 16-byte header (CRC-32 of the rest, payload length, entry index) and
//! the encoded entry. A segment file is made full-length (sparse) when created, so a sync
//! after an append does not also have to change the file's size; its unwritten rest
//! reads as zeros, which is how the end of a segment is found. Whatever follows the last
//! whole record is cut away when the log is opened or truncated, so the bytes of an
//! entry that was never acknowledged, or was truncated away, cannot come back.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A new segment's length. Purging frees whole segments, so this is also about how far
/// the log on disk may run past what the last snapshot made unneeded.
pub(crate) const SEGMENT_BYTES: u64 = 8 << 20;
const HEADER: usize = 16;
const SUFFIX: &str = ".seg";
/// A segment made for a batch larger than `SEGMENT_BYTES` is this many bytes a step.
const PAGE: u64 = 4096;

/// A segment file or the log's directory that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct SegmentError {
    pub path: PathBuf,
    pub reason: String,
}

fn io_error(path: &Path, what: &str, e: std::io::Error) -> SegmentError {
    SegmentError {
        path: path.to_path_buf(),
        reason: format!("cannot be {what}: {e}"),
    }
}

fn damaged(path: &Path, reason: String) -> SegmentError {
    SegmentError {
        path: path.to_path_buf(),
        reason: format!(
            "{reason}; restore the data dir from a backup, or empty it and rejoin the cluster"
        ),
    }
}

struct Segment {
    first: u64,
    path: PathBuf,
    file: Arc<File>,
    /// Where each record starts: the entry `first + i` at `starts[i]`.
    starts: Vec<u64>,
    /// Where the next record goes.
    end: u64,
    capacity: u64,
}

impl Segment {
    fn next_index(&self) -> u64 {
        self.first + self.starts.len() as u64
    }

    fn last(&self) -> Option<u64> {
        (!self.starts.is_empty()).then(|| self.next_index() - 1)
    }

    fn start_of(&self, index: u64) -> u64 {
        self.starts
            .get((index - self.first) as usize)
            .copied()
            .unwrap_or(self.end)
    }

    /// Drops every record from `offset` on, durably: the file is cut there and grown
    /// back, so the rest reads as zeros.
    fn cut(&mut self, offset: u64) -> Result<(), SegmentError> {
        let kept = self.starts.partition_point(|s| *s < offset);
        self.starts.truncate(kept);
        self.end = offset;
        self.file
            .set_len(offset)
            .and_then(|()| self.file.set_len(self.capacity))
            .and_then(|()| self.file.sync_all())
            .map_err(|e| io_error(&self.path, "cut", e))
    }
}

/// What one record at the front of some bytes is.
enum Parsed<'a> {
    Record {
        index: u64,
        payload: &'a [u8],
    },
    /// Zeros: nothing was written here.
    End,
    Bad(&'static str),
}

fn parse(bytes: &[u8]) -> Parsed<'_> {
    let Some(header) = bytes.get(..HEADER) else {
        return if bytes.iter().all(|b| *b == 0) {
            Parsed::End
        } else {
            Parsed::Bad("a record header is cut short")
        };
    };
    if header.iter().all(|b| *b == 0) {
        return Parsed::End;
    }
    let word = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let crc = word(0);
    let len = word(4) as usize;
    let index = u64::from(word(8)) | u64::from(word(12)) << 32;
    if len == 0 {
        return Parsed::Bad("a record header says the entry is empty");
    }
    let Some(payload) = bytes.get(HEADER..HEADER + len) else {
        return Parsed::Bad("a record runs past the end of the file");
    };
    if crc32fast::hash(&bytes[4..HEADER + len]) != crc {
        return Parsed::Bad("a record's checksum does not match");
    }
    Parsed::Record { index, payload }
}

/// Whether a record that does not parse at `at` is a write cut short by a crash rather
/// than damage. The file was zeros where a record is appended, and a disk writes whole
/// sectors, so a write that did not finish leaves a sector-sized run of the record as
/// zeros; damage does not (etcd's WAL tells the two apart the same way).
fn looks_torn(bytes: &[u8], at: usize) -> bool {
    const SECTOR: usize = 512;
    let rest = &bytes[at..];
    let declared = rest
        .get(4..8)
        .map(|l| HEADER + u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize);
    let span = match declared {
        Some(len) if len > HEADER && len <= rest.len() => len,
        // The length itself is unreadable: look just past the header.
        _ => rest.len().min(HEADER + SECTOR),
    };
    let mut start = 0;
    while start < span {
        let end = span.min(start + SECTOR - (at + start) % SECTOR);
        let chunk = &rest[start..end];
        if chunk.len() >= 8 && chunk.iter().all(|b| *b == 0) {
            return true;
        }
        start = end;
    }
    false
}

fn put_record(buf: &mut Vec<u8>, index: u64, payload: &[u8]) {
    let at = buf.len();
    buf.extend_from_slice(&[0; 4]);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&index.to_le_bytes());
    buf.extend_from_slice(payload);
    let crc = crc32fast::hash(&buf[at + 4..]);
    buf[at..at + 4].copy_from_slice(&crc.to_le_bytes());
}

fn sync_dir(dir: &Path) -> Result<(), SegmentError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, "synced", e))
}

/// Reads some consecutive entries of one segment, outside the log's lock.
pub(crate) struct SpanRead {
    path: PathBuf,
    file: Arc<File>,
    first: u64,
    count: u64,
    offset: u64,
    len: u64,
}

impl SpanRead {
    /// The payloads of the span's entries, in order, each checked against its checksum.
    pub(crate) fn read(&self) -> Result<Vec<Vec<u8>>, SegmentError> {
        let mut bytes = vec![0; self.len as usize];
        self.file
            .read_exact_at(&mut bytes, self.offset)
            .map_err(|e| io_error(&self.path, "read", e))?;
        let mut out = Vec::with_capacity(self.count as usize);
        let mut at = 0;
        for index in self.first..self.first + self.count {
            match parse(&bytes[at..]) {
                Parsed::Record {
                    index: found,
                    payload,
                } if found == index => {
                    at += HEADER + payload.len();
                    out.push(payload.to_vec());
                }
                Parsed::Record { index: found, .. } => {
                    return Err(damaged(
                        &self.path,
                        format!(
                            "the record at byte {} holds entry {found}, not {index}",
                            self.offset + at as u64
                        ),
                    ));
                }
                Parsed::End | Parsed::Bad(_) => {
                    return Err(damaged(
                        &self.path,
                        format!(
                            "entry {index} at byte {} cannot be read back",
                            self.offset + at as u64
                        ),
                    ));
                }
            }
        }
        Ok(out)
    }
}

/// Every segment of the log, oldest first, without a gap between them.
pub(crate) struct Segments {
    dir: PathBuf,
    list: Vec<Segment>,
    /// Entries up to here are purged: never read again, their segments removed once
    /// wholly purged.
    purged: Option<u64>,
    segment_bytes: u64,
}

impl Segments {
    /// Opens the log in `dir` (creating it), checks every record, and cuts a last
    /// segment back to its last whole record: a crash may have left part of a write
    /// that was never acknowledged.
    pub(crate) fn open(dir: &Path, purged: Option<u64>) -> Result<Segments, SegmentError> {
        Self::open_sized(dir, purged, SEGMENT_BYTES)
    }

    fn open_sized(
        dir: &Path,
        purged: Option<u64>,
        segment_bytes: u64,
    ) -> Result<Segments, SegmentError> {
        if !dir.is_dir() {
            std::fs::create_dir_all(dir).map_err(|e| io_error(dir, "created", e))?;
            if let Some(parent) = dir.parent() {
                sync_dir(parent)?;
            }
        }
        let (list, torn) = Self::scan(dir)?;
        let mut log = Segments {
            dir: dir.to_path_buf(),
            list,
            purged,
            segment_bytes,
        };
        if let (Some(offset), Some(last)) = (torn, log.list.last_mut()) {
            last.cut(offset)?;
        }
        // Empty segments (a crash right after one was made) and wholly purged ones (a
        // crash between recording a purge and removing its files) go now.
        let mut gone = Vec::new();
        log.list.retain(|s| {
            let keep = !s.starts.is_empty() && purged.is_none_or(|p| s.next_index() > p + 1);
            if !keep {
                gone.push(s.path.clone());
            }
            keep
        });
        log.remove_files(&gone)?;
        if let (Some(first), Some(p)) = (log.list.first(), purged)
            && first.first > p + 1
        {
            return Err(damaged(
                dir,
                format!(
                    "entries {} to {} are missing: the log was purged up to {p} but its oldest segment starts at {}",
                    p + 1,
                    first.first - 1,
                    first.first
                ),
            ));
        }
        Ok(log)
    }

    /// Checks every segment in `dir` without changing anything, as a server does before
    /// it opens (and perhaps repairs) any of its files.
    pub(crate) fn check(dir: &Path) -> Result<(), SegmentError> {
        if dir.is_dir() {
            Self::scan(dir)?;
        }
        Ok(())
    }

    /// Reads and checks every segment; returns them, and where the last one must be cut.
    fn scan(dir: &Path) -> Result<(Vec<Segment>, Option<u64>), SegmentError> {
        let mut found: Vec<(u64, PathBuf)> = Vec::new();
        for item in std::fs::read_dir(dir).map_err(|e| io_error(dir, "listed", e))? {
            let item = item.map_err(|e| io_error(dir, "listed", e))?;
            let name = item.file_name().to_string_lossy().into_owned();
            let Some(stem) = name.strip_suffix(SUFFIX) else {
                continue;
            };
            let first = stem.parse::<u64>().map_err(|_| {
                damaged(
                    &item.path(),
                    "is not a log segment's name (<first entry index>.seg)".into(),
                )
            })?;
            found.push((first, item.path()));
        }
        found.sort();

        // Every segment is read and checked before anything is changed, so a refused
        // start leaves the directory as it was.
        let count = found.len();
        let mut list: Vec<Segment> = Vec::with_capacity(count);
        let mut torn: Option<u64> = None;
        for (n, (first, path)) in found.into_iter().enumerate() {
            let is_last = n + 1 == count;
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(|e| io_error(&path, "opened", e))?;
            let bytes = std::fs::read(&path).map_err(|e| io_error(&path, "read", e))?;
            let mut starts = Vec::new();
            let mut at = 0usize;
            loop {
                let expected = first + starts.len() as u64;
                match parse(&bytes[at..]) {
                    // Bytes after the end may be part of a write that did not finish
                    // (its first page lost, a later one kept); they go too.
                    Parsed::End if is_last && bytes[at..].iter().any(|b| *b != 0) => {
                        torn = Some(at as u64);
                        break;
                    }
                    Parsed::End => break,
                    Parsed::Record { index, payload } if index == expected => {
                        starts.push(at as u64);
                        at += HEADER + payload.len();
                    }
                    Parsed::Record { index, .. } => {
                        return Err(damaged(
                            &path,
                            format!("the record at byte {at} holds entry {index}, not {expected}"),
                        ));
                    }
                    Parsed::Bad(why) if is_last && looks_torn(&bytes, at) => {
                        tracing::warn!(
                            segment = %path.display(),
                            byte = at,
                            reason = why,
                            "the log ends in a write that did not finish (a crash while writing); it is cut back to the last whole entry"
                        );
                        torn = Some(at as u64);
                        break;
                    }
                    Parsed::Bad(why) => {
                        return Err(damaged(&path, format!("{why} at byte {at}")));
                    }
                }
            }
            if let Some(prev) = list.last()
                && !prev.starts.is_empty()
                && prev.next_index() != first
            {
                return Err(damaged(
                    dir,
                    format!(
                        "{} ends at entry {} but {} starts at entry {first}: entries are missing or doubled",
                        prev.path.display(),
                        prev.next_index() - 1,
                        path.display()
                    ),
                ));
            }
            let capacity = (bytes.len() as u64).max(at as u64);
            list.push(Segment {
                first,
                path,
                file: Arc::new(file),
                starts,
                end: at as u64,
                capacity,
            });
        }

        Ok((list, torn))
    }

    /// The newest entry's index, if the log holds any entry not purged.
    pub(crate) fn last_index(&self) -> Option<u64> {
        let last = self.list.last()?.last()?;
        self.purged.is_none_or(|p| last > p).then_some(last)
    }

    /// Writes consecutive entries after the last one (replacing any from the first one's
    /// index on) and returns the file to sync. They are not durable until it is synced.
    pub(crate) fn append(
        &mut self,
        entries: &[(u64, &[u8])],
    ) -> Result<Option<Arc<File>>, SegmentError> {
        let Some((first_index, _)) = entries.first() else {
            return Ok(None);
        };
        let first_index = *first_index;
        if let Some(last) = self.list.last()
            && !last.starts.is_empty()
        {
            let next = last.next_index();
            if first_index < next {
                self.truncate(first_index)?;
            } else if first_index > next {
                return Err(damaged(
                    &last.path,
                    format!(
                        "an append of entry {first_index} would leave a gap after entry {}",
                        next - 1
                    ),
                ));
            }
        }
        let mut buf = Vec::with_capacity(entries.iter().map(|(_, b)| HEADER + b.len()).sum());
        for (n, (index, payload)) in entries.iter().enumerate() {
            if *index != first_index + n as u64 {
                return Err(damaged(
                    &self.dir,
                    format!(
                        "an append of entries that do not follow each other ({first_index} then {index})"
                    ),
                ));
            }
            put_record(&mut buf, *index, payload);
        }
        let len = buf.len() as u64;
        let fits = self.list.last().is_some_and(|s| {
            s.end + len <= s.capacity && (!s.starts.is_empty() || s.first == first_index)
        });
        if !fits {
            self.roll(first_index, len)?;
        }
        let Some(segment) = self.list.last_mut() else {
            return Err(damaged(&self.dir, "no segment to write to".into()));
        };
        segment
            .file
            .write_all_at(&buf, segment.end)
            .map_err(|e| io_error(&segment.path, "written", e))?;
        let mut at = segment.end;
        for (_, payload) in entries {
            segment.starts.push(at);
            at += (HEADER + payload.len()) as u64;
        }
        segment.end = at;
        Ok(Some(segment.file.clone()))
    }

    /// Starts a new segment whose first entry is `first`, with room for at least `len`
    /// bytes, and makes its existence durable before anything is written to it.
    fn roll(&mut self, first: u64, len: u64) -> Result<(), SegmentError> {
        if let Some(last) = self.list.last()
            && last.starts.is_empty()
        {
            let path = last.path.clone();
            self.list.pop();
            self.remove_files(&[path])?;
        }
        let path = self.dir.join(format!("{first:020}{SUFFIX}"));
        let capacity = self.segment_bytes.max(len.div_ceil(PAGE) * PAGE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_error(&path, "created", e))?;
        file.set_len(capacity)
            .and_then(|()| file.sync_all())
            .map_err(|e| io_error(&path, "created", e))?;
        sync_dir(&self.dir)?;
        self.list.push(Segment {
            first,
            path,
            file: Arc::new(file),
            starts: Vec::new(),
            end: 0,
            capacity,
        });
        Ok(())
    }

    /// Removes every entry from `from` on, durably, newest first: a crash part-way leaves
    /// a shorter log without a gap.
    pub(crate) fn truncate(&mut self, from: u64) -> Result<(), SegmentError> {
        let mut gone = Vec::new();
        while self.list.last().is_some_and(|s| s.first >= from) {
            if let Some(s) = self.list.pop() {
                gone.push(s.path);
            }
        }
        self.remove_files(&gone)?;
        if let Some(last) = self.list.last_mut()
            && last.next_index() > from
        {
            let offset = last.start_of(from);
            last.cut(offset)?;
        }
        Ok(())
    }

    /// Marks entries up to `upto` purged and returns the segments now wholly purged. They
    /// are left to the caller to remove once the purge itself is recorded.
    pub(crate) fn purge(&mut self, upto: u64) -> Vec<PathBuf> {
        self.purged = Some(self.purged.map_or(upto, |p| p.max(upto)));
        let keep_from = self
            .list
            .iter()
            .position(|s| s.next_index() > upto + 1)
            .unwrap_or(self.list.len());
        self.list.drain(..keep_from).map(|s| s.path).collect()
    }

    /// Removes segment files and makes the removal durable.
    pub(crate) fn remove_files(&self, paths: &[PathBuf]) -> Result<(), SegmentError> {
        if paths.is_empty() {
            return Ok(());
        }
        for path in paths {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_error(path, "removed", e)),
            }
        }
        sync_dir(&self.dir)
    }

    /// Removes every segment (to write the log afresh).
    pub(crate) fn clear(&mut self) -> Result<(), SegmentError> {
        let gone: Vec<PathBuf> = self.list.drain(..).map(|s| s.path).collect();
        self.remove_files(&gone)
    }

    /// How to read the entries of `start..end` that the log holds, one read per segment.
    pub(crate) fn plan_read(&self, start: u64, end: u64) -> Vec<SpanRead> {
        let start = self.purged.map_or(start, |p| start.max(p + 1));
        self.list
            .iter()
            .filter_map(|s| {
                let lo = start.max(s.first);
                let hi = end.min(s.next_index());
                (lo < hi).then(|| {
                    let offset = s.start_of(lo);
                    SpanRead {
                        path: s.path.clone(),
                        file: s.file.clone(),
                        first: lo,
                        count: hi - lo,
                        offset,
                        len: s.start_of(hi) - offset,
                    }
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(index: u64, len: usize) -> Vec<u8> {
        let mut v = index.to_le_bytes().to_vec();
        v.resize(len, (index % 251) as u8);
        v
    }

    fn write(log: &mut Segments, range: std::ops::Range<u64>, len: usize) {
        let payloads: Vec<(u64, Vec<u8>)> = range.map(|i| (i, payload(i, len))).collect();
        let entries: Vec<(u64, &[u8])> = payloads.iter().map(|(i, p)| (*i, p.as_slice())).collect();
        if let Some(file) = log.append(&entries).unwrap() {
            file.sync_data().unwrap();
        }
    }

    /// Records as a batch's write puts them on disk.
    fn records(range: std::ops::RangeInclusive<u64>, len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for i in range {
            put_record(&mut out, i, &payload(i, len));
        }
        out
    }

    /// Puts bytes into a segment behind the log's back, as a crash part-way leaves them.
    fn write_raw(segment: &Path, bytes: &[u8], at: usize) {
        let file = OpenOptions::new().write(true).open(segment).unwrap();
        file.write_all_at(bytes, at as u64).unwrap();
    }

    fn read_all(log: &Segments) -> Vec<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        for span in log.plan_read(0, u64::MAX) {
            for (n, p) in span.read().unwrap().into_iter().enumerate() {
                out.push((span.first + n as u64, p));
            }
        }
        out
    }

    fn indexes(log: &Segments) -> Vec<u64> {
        read_all(log).into_iter().map(|(i, _)| i).collect()
    }

    fn segment_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// A new log in segments of `segment_size` bytes, in a temporary directory.
    fn empty_log(segment_size: u64) -> (tempfile::TempDir, PathBuf, Segments) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft-log");
        let log = Segments::open_sized(&path, None, segment_size).unwrap();
        (dir, path, log)
    }

    /// A log in 4 KiB segments holding `indexes`, each written by its own append of 300 bytes.
    fn written_one_by_one(indexes: std::ops::Range<u64>) -> (tempfile::TempDir, PathBuf, Segments) {
        let (dir, path, mut log) = empty_log(4096);
        for i in indexes {
            write(&mut log, i..i + 1, 300);
        }
        (dir, path, log)
    }

    fn open_error(path: &Path) -> String {
        Segments::open_sized(path, None, 4096)
            .err()
            .unwrap()
            .to_string()
    }

    #[test]
    fn entries_survive_a_reopen_across_segments_and_purging_frees_whole_segments() {
        let (_dir, path, log) = written_one_by_one(0..40);
        let files = segment_files(&path);
        assert!(files.len() >= 3, "{files:?}");
        drop(log);

        let mut log = Segments::open_sized(&path, None, 4096).unwrap();
        let all = read_all(&log);
        assert_eq!(all.len(), 40);
        assert!(all.iter().all(|(i, p)| *p == payload(*i, 300)));
        assert_eq!(log.last_index(), Some(39));

        let gone = log.purge(20);
        assert!(!gone.is_empty());
        assert_eq!(indexes(&log), (21..40).collect::<Vec<_>>());
        // A crash after the purge was recorded but before its files were removed: the
        // next open removes them.
        drop(log);
        assert_eq!(segment_files(&path).len(), files.len());
        let mut log = Segments::open_sized(&path, Some(20), 4096).unwrap();
        assert_eq!(segment_files(&path).len(), files.len() - gone.len());
        assert_eq!(indexes(&log), (21..40).collect::<Vec<_>>());

        let gone = log.purge(30);
        log.remove_files(&gone).unwrap();
        assert_eq!(indexes(&log), (31..40).collect::<Vec<_>>());
        assert!(
            segment_files(&path).len() <= 3,
            "{:?}",
            segment_files(&path)
        );
    }

    #[test]
    fn a_write_cut_short_by_a_crash_is_dropped_and_never_comes_back() {
        let (_dir, path, mut log) = empty_log(1 << 16);
        write(&mut log, 1..6, 100);
        let segment = path.join(&segment_files(&path)[0]);
        let end = log.list[0].end as usize;
        drop(log);
        // A batch of entries 6 to 10 of which only the first sector reached the disk:
        // 6, 7 and 8 whole, 9 cut short.
        let batch = records(6..=10, 100);
        let kept = end.next_multiple_of(512) - end;
        write_raw(&segment, &batch[..kept], end);

        let mut log = Segments::open_sized(&path, None, 1 << 16).unwrap();
        assert_eq!(indexes(&log), (1..=8).collect::<Vec<_>>());
        // A shorter entry 9 lands where the torn one was; nothing of the old bytes may
        // read as an entry after it.
        write(&mut log, 9..10, 10);
        let end = log.list[0].end as usize;
        drop(log);
        let log = Segments::open_sized(&path, None, 1 << 16).unwrap();
        assert_eq!(indexes(&log), (1..=9).collect::<Vec<_>>());
        assert_eq!(read_all(&log)[8].1, payload(9, 10));
        drop(log);

        // A batch whose first sector was lost and a later one kept: the header reads as
        // zeros, and what lies after it goes too.
        let batch = records(10..=20, 100);
        let lost = end.next_multiple_of(512) - end;
        write_raw(&segment, &batch[lost..], end + lost);
        let mut log = Segments::open_sized(&path, None, 1 << 16).unwrap();
        assert_eq!(indexes(&log), (1..=9).collect::<Vec<_>>());
        assert!(
            std::fs::read(&segment).unwrap()[end..]
                .iter()
                .all(|b| *b == 0)
        );
        write(&mut log, 10..11, 100);
        drop(log);
        let log = Segments::open_sized(&path, None, 1 << 16).unwrap();
        assert_eq!(indexes(&log), (1..=10).collect::<Vec<_>>());
    }

    #[test]
    fn truncated_entries_stay_gone_after_a_reopen() {
        let (_dir, path, mut log) = empty_log(2048);
        write(&mut log, 1..21, 200);
        log.truncate(8).unwrap();
        assert_eq!(indexes(&log), (1..8).collect::<Vec<_>>());
        // New entries of the same size from index 8: the old 9, 10, ... lay at exactly
        // these offsets before the cut.
        write(&mut log, 8..9, 200);
        drop(log);
        let mut log = Segments::open_sized(&path, None, 2048).unwrap();
        assert_eq!(indexes(&log), (1..9).collect::<Vec<_>>());
        // An append that overlaps replaces from its first index on.
        write(&mut log, 5..7, 50);
        assert_eq!(indexes(&log), (1..7).collect::<Vec<_>>());
        assert_eq!(read_all(&log)[4].1, payload(5, 50));
    }

    #[test]
    fn after_purging_past_the_end_the_log_restarts_where_the_snapshot_left_it() {
        let (_dir, path, mut log) = empty_log(4096);
        write(&mut log, 0..10, 100);
        let gone = log.purge(500);
        log.remove_files(&gone).unwrap();
        assert_eq!(log.last_index(), None);
        assert!(segment_files(&path).is_empty());
        write(&mut log, 501..503, 100);
        drop(log);
        let log = Segments::open_sized(&path, Some(500), 4096).unwrap();
        assert_eq!(indexes(&log), vec![501, 502]);
    }

    #[test]
    fn damage_and_gaps_are_refused_with_the_file_named_and_nothing_changed() {
        let (_dir, path, log) = written_one_by_one(1..40);
        drop(log);
        let files = segment_files(&path);
        // One bit of the first record flipped, in the oldest segment and then in the
        // newest (which is not taken for a crash mid-write): the start is refused, the
        // file named, and nothing in it changed.
        for (name, place) in [(&files[0], "byte 0"), (files.last().unwrap(), "checksum")] {
            let segment = path.join(name);
            let before = std::fs::read(&segment).unwrap();
            let mut flipped = before.clone();
            flipped[HEADER + 5] ^= 0xff;
            std::fs::write(&segment, &flipped).unwrap();
            let err = open_error(&path);
            assert!(
                err.contains(name.as_str()) && err.contains("checksum") && err.contains(place),
                "{err}"
            );
            assert_eq!(std::fs::read(&segment).unwrap(), flipped);
            std::fs::write(&segment, &before).unwrap();
        }

        std::fs::remove_file(path.join(&files[1])).unwrap();
        let err = open_error(&path);
        assert!(err.contains("entries are missing"), "{err}");
        assert_eq!(segment_files(&path).len(), files.len() - 1);

        std::fs::write(path.join("notes.seg"), b"x").unwrap();
        let err = open_error(&path);
        assert!(err.contains("notes.seg"), "{err}");
    }
}

//! Snapshots kept as files of their own beside `state.redb`.
//!
//! Writing a snapshot of a large state into redb took its write lock (and so held up every
//! apply) for as long as the copy and its fsync took: half a second at 70 MB. A file is
//! written and fsynced with no lock held; redb then only records which file is current, in
//! a short commit. The file is complete on disk before redb names it, so a crash leaves
//! either the old snapshot current or the new one, never a partial file.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

const PREFIX: &str = "snapshot-";
const SUFFIX: &str = ".bin";

/// Where snapshot files live, and the lock that keeps "write, name as current, remove the
/// others" of one snapshot from crossing another's (a snapshot built while one is
/// installed).
#[derive(Clone)]
pub struct SnapshotFiles {
    dir: PathBuf,
    current: Arc<Mutex<()>>,
}

impl SnapshotFiles {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            current: Arc::new(Mutex::new(())),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Held while a snapshot file is made current and the others removed.
    pub fn lock(&self) -> MutexGuard<'_, ()> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes a snapshot to a new file, fsynced and in place, and returns its name. The
    /// id may come from another server, so it only names the file when it is plain.
    pub fn write(&self, snapshot_id: &str, data: &[u8]) -> std::io::Result<String> {
        let plain = !snapshot_id.is_empty()
            && snapshot_id.len() <= 64
            && snapshot_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        let stem = if plain {
            snapshot_id.to_string()
        } else {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            snapshot_id.hash(&mut h);
            format!("{:016x}", h.finish())
        };
        let name = format!("{PREFIX}{stem}{SUFFIX}");
        let tmp = self
            .dir
            .join(format!("{name}.{}.tmp", rand::random::<u32>()));
        let written = (|| {
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(data)?;
            file.sync_all()?;
            std::fs::rename(&tmp, self.dir.join(&name))?;
            // The rename is durable only once the directory is.
            std::fs::File::open(&self.dir)?.sync_all()
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(name)
    }

    /// Removes every snapshot file but `keep` (and files left half-written by a crash).
    pub fn remove_all_but(&self, keep: &str) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !name.starts_with(PREFIX) || name == keep {
                continue;
            }
            if (name.ends_with(SUFFIX) || name.ends_with(".tmp"))
                && let Err(e) = std::fs::remove_file(entry.path())
            {
                tracing::warn!(file = %entry.path().display(), error = %e, "cannot remove an old snapshot");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_written_snapshot_is_whole_and_only_the_current_one_is_kept() {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = SnapshotFiles::new(dir.path());
        let first = files.write("1-10-7", b"first").expect("write");
        let second = files.write("../../etc/passwd", b"second").expect("write");
        assert_eq!(first, "snapshot-1-10-7.bin");
        assert!(
            second.starts_with("snapshot-") && !second.contains('/'),
            "{second}"
        );
        assert_eq!(std::fs::read(files.path(&second)).expect("read"), b"second");
        std::fs::write(dir.path().join("snapshot-x.bin.1.tmp"), b"half").expect("write");
        std::fs::write(dir.path().join("state.redb"), b"not a snapshot").expect("write");
        files.remove_all_but(&second);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        left.sort();
        assert_eq!(left, vec![second, "state.redb".to_string()]);
    }
}

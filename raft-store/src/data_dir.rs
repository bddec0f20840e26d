//! A server's data dir: what it must hold, and the checks that run before anything in
//! it is written.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::types::NodeId;

pub const IDENTITY_FILE: &str = "server.json";
pub const LOG_FILE: &str = "raft-log.redb";
pub const STATE_FILE: &str = "state.redb";
/// The data dir's layout. Format 1 kept the Raft log's entries in `raft-log.redb`; format 2
/// keeps them in `raft-log/` segments. A format 1 dir is moved over when its store is first
/// opened, and marked 2 after, so that a build that knows only format 1 refuses it rather
/// than see an empty log.
const FORMAT: u32 = 2;
const OLDEST_FORMAT: u32 = 1;
/// The first bytes of every redb file.
const REDB_MAGIC: [u8; 9] = [b'r', b'e', b'd', b'b', 0x1A, 0x0A, 0xA9, 0x0D, 0x0A];

/// Who this server is, kept beside its data so a restart is the same server.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub format: u32,
    pub node_id: NodeId,
    /// The cluster this data belongs to, once known.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cluster_id: String,
}

/// A data dir that passed its checks but may not exist yet.
#[derive(Debug, Clone)]
pub struct DataDir {
    pub path: PathBuf,
    pub node_id: NodeId,
    pub cluster_id: String,
    /// Whether it already held a server's state.
    pub existing: bool,
    /// The layout it was found in.
    pub format: u32,
}

fn bad(path: &Path, reason: impl Into<String>) -> Error {
    Error::DataDir {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl DataDir {
    /// Reads and checks `path` without writing to it. `wanted_id` is `--node-id`.
    pub fn inspect(path: &Path, wanted_id: Option<NodeId>) -> Result<DataDir, Error> {
        let identity_path = path.join(IDENTITY_FILE);
        if path.exists() && !path.is_dir() {
            return Err(bad(path, "is a file, not a directory"));
        }
        if !identity_path.exists() {
            if path.exists() {
                let mut entries = std::fs::read_dir(path)
                    .map_err(|e| bad(path, format!("cannot be read: {e}")))?
                    .filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != "lost+found")
                    .collect::<Vec<_>>();
                entries.sort();
                if !entries.is_empty() {
                    return Err(bad(
                        path,
                        format!(
                            "is not a Trellis server data dir: it holds {} but no {IDENTITY_FILE}; give an empty or new directory",
                            entries
                                .iter()
                                .take(3)
                                .map(|n| format!("'{n}'"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    ));
                }
            }
            // Below 2^53, so the id survives JSON readers that hold numbers as doubles.
            let node_id = wanted_id.unwrap_or_else(|| rand::random::<u64>() >> 11 | 1);
            return Ok(DataDir {
                path: path.to_path_buf(),
                node_id,
                cluster_id: String::new(),
                existing: false,
                format: FORMAT,
            });
        }
        let text = std::fs::read_to_string(&identity_path)
            .map_err(|e| bad(&identity_path, format!("cannot be read: {e}")))?;
        let identity: Identity = serde_json::from_str(&text).map_err(|e| {
            bad(
                &identity_path,
                format!("is damaged ({e}); restore it from a backup, or empty the data dir and rejoin the cluster"),
            )
        })?;
        if !(OLDEST_FORMAT..=FORMAT).contains(&identity.format) {
            return Err(bad(
                &identity_path,
                format!(
                    "has format {} but this build reads formats {OLDEST_FORMAT} to {FORMAT}; run the Trellis version that wrote it, or a newer one",
                    identity.format
                ),
            ));
        }
        if let Some(wanted) = wanted_id
            && wanted != identity.node_id
        {
            return Err(bad(
                path,
                format!(
                    "belongs to node id {} but --node-id is {wanted}; drop --node-id or use another data dir",
                    identity.node_id
                ),
            ));
        }
        // Both store files and the log's segments are checked before any is opened:
        // opening one may repair it after a crash, and a refused start must leave
        // everything as it was.
        for file in [LOG_FILE, STATE_FILE] {
            let file_path = path.join(file);
            if !file_path.is_file() {
                return Err(bad(
                    &file_path,
                    "is missing; the data dir is incomplete: restore it, or empty it and rejoin the cluster",
                ));
            }
            let mut magic = [0u8; REDB_MAGIC.len()];
            let read = std::fs::File::open(&file_path)
                .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic));
            if read.is_err() || magic != REDB_MAGIC {
                return Err(bad(
                    &file_path,
                    "is not a readable store (its header is not a redb header); restore it, or empty the data dir and rejoin the cluster",
                ));
            }
        }
        crate::log_segments::Segments::check(&path.join(crate::log_store::SEGMENTS_DIR)).map_err(
            |e| Error::DataDir {
                path: e.path,
                reason: e.reason,
            },
        )?;
        Ok(DataDir {
            path: path.to_path_buf(),
            node_id: identity.node_id,
            cluster_id: identity.cluster_id,
            existing: true,
            format: identity.format,
        })
    }

    /// Creates the directory and its identity file (for a new data dir).
    pub fn create(&self) -> Result<(), Error> {
        std::fs::create_dir_all(&self.path)
            .map_err(|e| bad(&self.path, format!("cannot be created: {e}")))?;
        if self.path.join(IDENTITY_FILE).exists() {
            return Ok(());
        }
        self.write_identity(&self.cluster_id)
    }

    /// Marks the data dir with this build's format, once its store was opened (and so
    /// moved to this format).
    pub fn mark_current_format(&self) -> Result<(), Error> {
        if self.format == FORMAT {
            return Ok(());
        }
        self.write_identity(&self.cluster_id)?;
        tracing::info!(
            path = %self.path.display(),
            from = self.format,
            to = FORMAT,
            "data dir moved to the current format"
        );
        Ok(())
    }

    /// Notes the cluster id in the identity file, so a later start can check its
    /// peers before it opens (and perhaps repairs) its store.
    pub fn record_cluster(&self, cluster_id: &str) -> Result<(), Error> {
        self.write_identity(cluster_id)
    }

    fn write_identity(&self, cluster_id: &str) -> Result<(), Error> {
        let identity_path = self.path.join(IDENTITY_FILE);
        let text = serde_json::to_string_pretty(&Identity {
            format: FORMAT,
            node_id: self.node_id,
            cluster_id: cluster_id.to_string(),
        })
        .map_err(|e| bad(&identity_path, e.to_string()))?;
        let tmp = self.path.join(format!("{IDENTITY_FILE}.tmp"));
        std::fs::write(&tmp, text).map_err(|e| bad(&tmp, format!("cannot be written: {e}")))?;
        std::fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| bad(&tmp, format!("cannot be synced: {e}")))?;
        std::fs::rename(&tmp, &identity_path)
            .map_err(|e| bad(&identity_path, format!("cannot be written: {e}")))?;
        Ok(())
    }

    /// Opens (or creates) one of the redb files, naming it in any error.
    pub fn open_db(&self, file: &str) -> Result<redb::Database, Error> {
        let path = self.path.join(file);
        redb::Database::create(&path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => Error::DataDirInUse {
                path: self.path.clone(),
            },
            other => bad(
                &path,
                format!("is not a readable store ({other}); restore it, or empty the data dir and rejoin the cluster"),
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_of_other_files_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "hello").unwrap();
        let err = DataDir::inspect(dir.path(), None).unwrap_err().to_string();
        assert!(err.contains("is not a Trellis server data dir"), "{err}");
        assert!(err.contains("'notes.txt'"), "{err}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_damaged_identity_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(IDENTITY_FILE), "{not json").unwrap();
        let err = DataDir::inspect(dir.path(), None).unwrap_err().to_string();
        assert!(err.contains("server.json: is damaged"), "{err}");
    }

    #[test]
    fn a_new_dir_gets_a_nonzero_id_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d");
        let d = DataDir::inspect(&path, None).unwrap();
        assert!(!d.existing);
        assert_ne!(d.node_id, 0);
        d.create().unwrap();
        d.open_db(LOG_FILE).unwrap();
        d.open_db(STATE_FILE).unwrap();
        let again = DataDir::inspect(&path, None).unwrap();
        assert!(again.existing);
        assert_eq!(again.node_id, d.node_id);
        let err = DataDir::inspect(&path, Some(d.node_id + 1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--node-id"), "{err}");
    }

    #[test]
    fn a_dir_of_a_newer_format_is_refused_and_an_older_one_is_marked_current() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::inspect(dir.path(), Some(7)).unwrap();
        d.create().unwrap();
        d.open_db(LOG_FILE).unwrap();
        d.open_db(STATE_FILE).unwrap();
        let identity = dir.path().join(IDENTITY_FILE);
        let text = std::fs::read_to_string(&identity).unwrap();
        let with_format = |n: u32| {
            text.replace(
                &format!("\"format\": {FORMAT}"),
                &format!("\"format\": {n}"),
            )
        };

        std::fs::write(&identity, with_format(FORMAT + 1)).unwrap();
        let err = DataDir::inspect(dir.path(), None).unwrap_err().to_string();
        assert!(err.contains(&format!("has format {}", FORMAT + 1)), "{err}");

        std::fs::write(&identity, with_format(OLDEST_FORMAT)).unwrap();
        let old = DataDir::inspect(dir.path(), None).unwrap();
        assert_eq!(old.format, OLDEST_FORMAT);
        old.mark_current_format().unwrap();
        assert_eq!(DataDir::inspect(dir.path(), None).unwrap().format, FORMAT);
    }

    #[test]
    fn a_garbage_store_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let d = DataDir::inspect(dir.path(), Some(7)).unwrap();
        d.create().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), vec![0x42; 4096]).unwrap();
        let err = d.open_db(STATE_FILE).unwrap_err().to_string();
        assert!(err.contains("state.redb"), "{err}");
    }
}

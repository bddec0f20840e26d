//! Compiled config: the snapshot types, the static file format, and the compiler from the
//! resource model into a snapshot.

mod compile;
pub mod file;
pub mod matcher;
pub mod snapshot;

pub use compile::compile;
pub use file::ProxyConfig;
pub use snapshot::*;

use std::path::Path;

use crate::error::FileError;

/// Reads and compiles a config file; errors name the file, the resource and the field.
pub fn load_file(path: &Path) -> Result<Snapshot, FileError> {
    let config = ProxyConfig::from_file(path)?;
    compile(&config).map_err(|source| FileError::Compile {
        path: path.to_owned(),
        source,
    })
}

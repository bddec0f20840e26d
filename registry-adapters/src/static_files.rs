//! The static VM inventory: a directory of YAML or JSON files that declare services
//! (`trellis.dev/v1 Service`) and the VMs that run them (Istio `WorkloadEntry`), as an
//! operator would keep them in configuration management.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;
use trellis_api::{Resource, parse_documents};

use crate::{DesiredSet, RegistryError};

fn is_inventory_file(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// Reads every inventory file in `dir` (not recursive), in name order.
pub fn load_dir(dir: &Path) -> Result<DesiredSet, RegistryError> {
    let entries = std::fs::read_dir(dir).map_err(|source| RegistryError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && is_inventory_file(p))
        .collect();
    files.sort();
    let mut set = DesiredSet {
        source: format!("file:{}", dir.display()),
        resources: BTreeMap::new(),
    };
    let mut origin: BTreeMap<trellis_api::ResourceKey, String> = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|source| RegistryError::Read {
            path: file.clone(),
            source,
        })?;
        let name = file.display().to_string();
        let documents = parse_documents(&name, &text).map_err(RegistryError::Parse)?;
        for doc in documents {
            if !matches!(
                doc.resource,
                Resource::Service(_) | Resource::WorkloadEntry(_)
            ) {
                return Err(RegistryError::NotInventory {
                    path: file.clone(),
                    index: doc.id.index,
                    kind: doc.id.kind.clone().unwrap_or_default(),
                });
            }
            let key = doc.resource.key();
            let here = format!("{name}[{}]", doc.id.index);
            if let Some(first) = origin.get(&key) {
                return Err(RegistryError::Duplicate {
                    key: format!("{}/{}/{}", key.kind, key.namespace, key.name),
                    first: first.clone(),
                    second: here,
                });
            }
            origin.insert(key.clone(), here);
            set.resources.insert(key, doc.resource);
        }
    }
    Ok(set)
}

/// Sends the directory's desired set now and after every change (changes within
/// `settle` of each other are read once). A bad read is sent as an error; the caller
/// keeps the last good set. Ends when the receiver is dropped.
pub fn watch_dir(
    dir: PathBuf,
    settle: Duration,
) -> Result<mpsc::Receiver<Result<DesiredSet, RegistryError>>, RegistryError> {
    let (tx, rx) = mpsc::channel(4);
    let (fs_tx, mut fs_rx) = mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            let _ = fs_tx.send(());
        }
    })
    .map_err(|e| RegistryError::Watch {
        path: dir.clone(),
        reason: e.to_string(),
    })?;
    watcher
        .watch(&dir, RecursiveMode::NonRecursive)
        .map_err(|e| RegistryError::Watch {
            path: dir.clone(),
            reason: e.to_string(),
        })?;
    tokio::spawn(async move {
        // The watcher lives as long as this task.
        let _watcher = watcher;
        let mut last: Option<DesiredSet> = None;
        loop {
            let read = {
                let dir = dir.clone();
                tokio::task::spawn_blocking(move || load_dir(&dir)).await
            };
            let Ok(read) = read else { return };
            let changed = match (&read, &last) {
                (Ok(set), Some(prev)) => set != prev,
                _ => true,
            };
            if changed {
                if let Ok(set) = &read {
                    last = Some(set.clone());
                }
                if tx.send(read).await.is_err() {
                    return;
                }
            }
            if fs_rx.recv().await.is_none() {
                return;
            }
            // Let an editor's write-rename-chmod finish before reading.
            tokio::time::sleep(settle).await;
            while fs_rx.try_recv().is_ok() {}
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVENTORY: &str = r#"
apiVersion: trellis.dev/v1
kind: Service
metadata:
  name: reviews
  namespace: shop
spec:
  ports:
  - name: http
    number: 9080
    protocol: HTTP
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata:
  name: reviews-vm-1
  namespace: shop
spec:
  address: 10.0.0.21
  labels:
    app: reviews
    version: v1
"#;

    #[test]
    fn a_directory_of_files_becomes_one_desired_set() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("reviews.yaml"), INVENTORY).unwrap();
        std::fs::write(dir.path().join("README.txt"), "not read").unwrap();
        let set = load_dir(dir.path()).unwrap();
        assert_eq!(set.resources.len(), 2);
        assert!(set.source.starts_with("file:"));
        let names: Vec<_> = set.resources.keys().map(|k| k.name.clone()).collect();
        assert!(
            names.contains(&"reviews".to_string()) && names.contains(&"reviews-vm-1".to_string())
        );
    }

    #[test]
    fn a_bad_file_is_named_with_its_field() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("bad.yaml"),
            INVENTORY.replace("address:", "adress:"),
        )
        .unwrap();
        let err = load_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("bad.yaml") && err.contains("adress"), "{err}");
    }

    #[test]
    fn a_declaration_in_two_files_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), INVENTORY).unwrap();
        std::fs::write(dir.path().join("b.yaml"), INVENTORY).unwrap();
        let err = load_dir(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("declared twice") && err.contains("a.yaml") && err.contains("b.yaml"),
            "{err}"
        );
    }

    #[test]
    fn routing_config_is_not_inventory() {
        let dir = tempfile::tempdir().unwrap();
        let vs = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: r}\nspec:\n  hosts: [reviews]\n  http:\n  - route:\n    - destination: {host: reviews}\n";
        std::fs::write(dir.path().join("vs.yaml"), vs).unwrap();
        let err = load_dir(dir.path()).unwrap_err().to_string();
        assert!(err.contains("VirtualService is not inventory"), "{err}");
    }

    #[tokio::test]
    async fn a_change_on_disk_is_sent_and_a_broken_file_is_an_error_not_an_empty_set() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("reviews.yaml"), INVENTORY).unwrap();
        let mut rx = watch_dir(dir.path().to_path_buf(), Duration::from_millis(50)).unwrap();
        let deadline = Duration::from_secs(10);
        let first = tokio::time::timeout(deadline, rx.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(first.resources.len(), 2);

        let second_vm = INVENTORY
            .replace("reviews-vm-1", "reviews-vm-2")
            .replace("10.0.0.21", "10.0.0.22");
        std::fs::write(
            dir.path().join("more.yaml"),
            second_vm.split("---").nth(1).unwrap(),
        )
        .unwrap();
        let next = tokio::time::timeout(deadline, rx.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(next.resources.len(), 3);

        std::fs::write(dir.path().join("more.yaml"), "kind: [").unwrap();
        let broken = tokio::time::timeout(deadline, rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(broken.unwrap_err().to_string().contains("more.yaml"));
    }
}

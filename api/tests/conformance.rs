//! Istio's own YAML, read in place from `shared/conformance/istio/`: every document Istio
//! accepts must be accepted, and every document Istio refuses must be refused with an error
//! naming the field path (or, where Istio's message names none, saying what Istio says).

use std::fs;
use std::path::{Path, PathBuf};

use trellis_api::{ConfigError, FieldPath, decode_document, split_documents};

fn corpus_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance/istio");
    assert!(
        root.is_dir(),
        "the Istio conformance corpus is missing: expected it at {} (shared/conformance/istio beside the workspace)",
        root.display()
    );
    root
}

fn yaml_files(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no {suffix} files in {}", dir.display());
    files
}

#[derive(Default)]
struct Tally {
    accepted: usize,
    refused: usize,
    skipped_kubernetes: usize,
    disagreements: Vec<String>,
}

fn display_name(root: &Path, file: &Path) -> String {
    file.strip_prefix(root)
        .unwrap_or(file)
        .display()
        .to_string()
}

fn check_accepted(root: &Path, file: &Path, tally: &mut Tally) {
    let name = display_name(root, file);
    let text = fs::read_to_string(file).expect("read corpus file");
    let raws = match split_documents(&name, &text) {
        Ok(raws) => raws,
        Err(e) => {
            tally
                .disagreements
                .push(format!("{name}: could not be split: {e}"));
            return;
        }
    };
    for raw in raws {
        match decode_document(raw) {
            Ok(_) => tally.accepted += 1,
            Err(errors) => {
                // Kubernetes Service/Deployment objects sit beside mesh config in some
                // samples; they are recognised as such and are not the mesh's to store.
                if errors
                    .iter()
                    .all(|e| matches!(e, ConfigError::NotMeshConfig { .. }))
                {
                    tally.skipped_kubernetes += 1;
                } else {
                    tally.disagreements.push(format!(
                        "Istio accepts, Trellis refused:\n    {}",
                        errors.to_string().replace('\n', "\n    ")
                    ));
                }
            }
        }
    }
}

/// The field path an `_err` line names, if it names one: `spec.hosts: Required value`,
/// `audiences[0] in body should be ...`, `header in body should match`.
fn expected_path(err: &str) -> Option<String> {
    let re = regex::Regex::new(r"^([A-Za-z_][A-Za-z0-9_]*(?:\[\d+\])?(?:\.[A-Za-z_][A-Za-z0-9_]*(?:\[\d+\])?)*)(?::\s| in body)")
        .expect("valid regex");
    re.captures(err).map(|c| c[1].to_owned())
}

fn check_refused(root: &Path, file: &Path, tally: &mut Tally) {
    let name = display_name(root, file);
    let text = fs::read_to_string(file).expect("read corpus file");
    let raws = match split_documents(&name, &text) {
        Ok(raws) => raws,
        Err(e) => {
            tally
                .disagreements
                .push(format!("{name}: could not be split: {e}"));
            return;
        }
    };
    for mut raw in raws {
        let expected = raw
            .value
            .as_object_mut()
            .and_then(|o| o.remove("_err"))
            .and_then(|v| v.as_str().map(str::to_owned));
        let Some(expected) = expected else {
            tally.disagreements.push(format!(
                "{}: invalid-corpus document without an _err line",
                raw.id
            ));
            continue;
        };
        let id = raw.id.clone();
        match decode_document(raw) {
            Ok(doc) => tally.disagreements.push(format!(
                "{}: Istio refuses ({expected}), Trellis accepted",
                doc.id
            )),
            Err(errors) => {
                let matched = match expected_path(&expected) {
                    Some(path) => errors.iter().find(|e| {
                        e.path()
                            .is_some_and(|p: &FieldPath| p.contains_segment_path(&path))
                    }),
                    None => {
                        let want = expected.to_ascii_lowercase();
                        errors
                            .iter()
                            .find(|e| e.to_string().to_ascii_lowercase().contains(&want))
                    }
                };
                if let Some(error) = matched {
                    // Visible with --nocapture, to compare Istio's wording with ours.
                    println!("refused as Istio does: {expected}\n    {error}");
                    tally.refused += 1;
                } else {
                    tally.disagreements.push(format!(
                        "{id}: refused, but not as Istio says ({expected}):\n    {}",
                        errors.to_string().replace('\n', "\n    ")
                    ));
                }
            }
        }
    }
}

#[test]
fn istio_corpus_agrees_with_istio() {
    let root = corpus_root();
    let mut tally = Tally::default();
    for dir in ["bookinfo", "testdata-config", "validation-dataset"] {
        for file in yaml_files(&root.join(dir), ".yaml") {
            check_accepted(&root, &file, &mut tally);
        }
    }
    let crds = root.join("validation-crds");
    for file in yaml_files(&crds, "-valid.yaml") {
        check_accepted(&root, &file, &mut tally);
    }
    for file in yaml_files(&crds, "-invalid.yaml") {
        check_refused(&root, &file, &mut tally);
    }
    println!(
        "istio conformance: {} accepted, {} refused as Istio does, {} Kubernetes objects skipped, {} disagreeing",
        tally.accepted,
        tally.refused,
        tally.skipped_kubernetes,
        tally.disagreements.len()
    );
    assert!(
        tally.accepted > 0 && tally.refused > 0,
        "the corpus yielded no documents"
    );
    assert!(
        tally.disagreements.is_empty(),
        "{} disagreements with Istio:\n{}",
        tally.disagreements.len(),
        tally.disagreements.join("\n")
    );
}

#[test]
fn err_lines_are_read_as_istio_writes_them() {
    assert_eq!(
        expected_path("spec: Required value").as_deref(),
        Some("spec")
    );
    assert_eq!(
        expected_path("spec.trafficPolicy.loadBalancer.warmup.duration: Required value").as_deref(),
        Some("spec.trafficPolicy.loadBalancer.warmup.duration")
    );
    assert_eq!(
        expected_path("audiences[0] in body should be at least 1 chars long").as_deref(),
        Some("audiences[0]")
    );
    assert_eq!(
        expected_path("header in body should match").as_deref(),
        Some("header")
    );
    assert_eq!(expected_path("portLevelMtls requires selector"), None);
    assert_eq!(expected_path("Unsupported value: \"BLAH\""), None);
}

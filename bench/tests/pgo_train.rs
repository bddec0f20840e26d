//! The training run of the release build (`deploy/build-release.sh`), against the debug
//! binary: a change that breaks a route, a protocol or a clean exit on SIGTERM fails here,
//! not twenty minutes into a release build.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn every_training_phase_succeeds_and_every_process_exits_cleanly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stderr = std::fs::File::create(dir.path().join("train.out")).expect("output file");
    // pgo-train finds the trellis binary beside itself, as in the release build.
    let mut child = Command::new(env!("CARGO_BIN_EXE_pgo-train"))
        .args(["--seconds", "1", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("pgo-train starts");
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "pgo-train still running after 180 s:\n{}",
                std::fs::read_to_string(dir.path().join("train.out")).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let report = std::fs::read_to_string(dir.path().join("train.out")).expect("output");
    assert!(status.success(), "pgo-train failed ({status}):\n{report}");
    let phases: Vec<&str> = report.lines().filter(|l| l.contains(" ok ")).collect();
    assert_eq!(phases.len(), 12, "every phase ran:\n{report}");
    for line in phases {
        let ok: u64 = line
            .split_whitespace()
            .rev()
            .nth(5)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a count in {line:?}"));
        assert!(ok > 0, "{line}");
    }
}

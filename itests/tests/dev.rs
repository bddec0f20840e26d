//! `trellis dev`: one command brings up a whole mesh with demo services; the lines it
//! prints work as printed.

use std::time::Duration;

use trellis_itests::{AgentProcess, eventually, http, run_trellis_with_stdin};

fn url_of(lines: &[String], service: &str) -> Option<String> {
    lines.iter().find_map(|l| {
        let parts: Vec<&str> = l.split_whitespace().collect();
        match (parts.first(), parts.last()) {
            (Some(first), Some(last)) if *first == service && last.starts_with("http://") => {
                Some((*last).to_string())
            }
            _ => None,
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_runs_a_mesh_with_demo_services() {
    let dir = tempfile::tempdir().unwrap();
    let dev = AgentProcess::dev(&[
        "--data-dir",
        &dir.path().display().to_string(),
        "--http-addr",
        "127.0.0.1:0",
        "--grpc-addr",
        "127.0.0.1:0",
        "--proxy-admin-addr",
        "127.0.0.1:0",
    ])
    .unwrap();
    // Everything it prints, up to its last line (`trellis get nodes`), not just the URLs: the
    // examples to apply come after them.
    let lines = eventually(
        Duration::from_secs(30),
        "the demo URLs and examples",
        || async {
            let lines = dev.stdout_lines();
            lines
                .iter()
                .any(|l| l.contains("get nodes"))
                .then_some(lines)
        },
    )
    .await;
    let api = url_of(&lines, "admin").expect("the admin API line");
    let frontend = url_of(&lines, "frontend").unwrap();
    let reviews = url_of(&lines, "reviews").unwrap();

    // The frontend answers through the proxy, and reaches reviews through it too.
    let body: serde_json::Value = http()
        .get(&frontend)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["service"], "frontend", "{body}");
    assert_eq!(body["reviews"]["service"], "reviews", "{body}");

    // The printed split, applied with the CLI, shows in the answers.
    let split = lines
        .iter()
        .skip_while(|l| !l.contains("90 %"))
        .skip(1)
        .take_while(|l| *l != "EOF")
        .cloned()
        .collect::<Vec<_>>()
        .join("\n");
    let (code, _, err) = run_trellis_with_stdin(
        &["--server", &api, "apply", "-f", "-"],
        &[],
        Some(&split),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let counted = eventually(Duration::from_secs(20), "a 90/10 split", || async {
        let mut v1 = 0;
        for _ in 0..200 {
            let b: serde_json::Value = http().get(&reviews).send().await.ok()?.json().await.ok()?;
            if b["version"] == "v1" {
                v1 += 1;
            }
        }
        (174..=186).contains(&v1).then_some(v1)
    })
    .await;
    assert!((174..=186).contains(&counted));
    eventually(
        Duration::from_secs(10),
        "the dev node in get nodes",
        || async {
            let (code, out, _) = run_trellis_with_stdin(
                &["--server", &api, "get", "nodes"],
                &[],
                None,
                Duration::from_secs(30),
            )
            .ok()?;
            (code == 0
                && out
                    .lines()
                    .any(|l| l.starts_with("dev ") && l.contains("true")))
            .then_some(())
        },
    )
    .await;
    let (code, out, err) = run_trellis_with_stdin(
        &["--server", &api, "describe", "service", "reviews"],
        &[],
        None,
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let passing = out.lines().filter(|l| l.contains("passing")).count();
    assert_eq!(passing, 2, "v1 and v2 registered and healthy:\n{out}");
    assert!(
        out.contains("version=v1") && out.contains("version=v2"),
        "{out}"
    );
    assert!(out.contains("virtualservice/default/reviews"), "{out}");
}

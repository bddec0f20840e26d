//! `trellis apply | get | delete | validate | describe` run as the real binary against a
//! running server, and the admin API's token.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use trellis_itests::{ServerProcess, eventually, http, run_trellis, run_trellis_with_stdin};

const WAIT: Duration = Duration::from_secs(30);
const RUN: Duration = Duration::from_secs(30);

/// A one-server cluster, ready to take writes.
async fn single_server(dir: &Path, extra: &[&str]) -> ServerProcess {
    let mut args = vec!["--bootstrap-expect".to_string(), "1".into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    let server = ServerProcess::start(&dir.join("s1"), "127.0.0.1:0", "127.0.0.1:0", &args)
        .expect("server starts");
    let client = http();
    let url = server.url("/v1/status/ready");
    eventually(WAIT, "the server is ready", || async {
        let r = client.get(&url).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    server
}

/// Runs `trellis ARGS --server URL`; fails the test on a hung process.
fn trellis(server: &ServerProcess, args: &[&str]) -> (i32, String, String) {
    let url = server.url("");
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--server", &url]);
    run_trellis(&all, &[], RUN).expect("trellis ran")
}

fn ok(out: (i32, String, String)) -> String {
    assert_eq!(
        out.0, 0,
        "exit {}; stdout:\n{}\nstderr:\n{}",
        out.0, out.1, out.2
    );
    out.1
}

fn write(dir: &Path, name: &str, text: &str) {
    let path = dir.join(name);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn vs(name: &str, ns: &str, host: &str, labels: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels: {{{labels}}}\nspec:\n  hosts: [{host}]\n  http:\n  - route:\n    - destination: {{host: {host}}}\n"
    )
}

const BAD_VS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bad}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
      weight: 150
    - destination: {host: reviews}
      weight: 10
";

fn names(json: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(json).expect("JSON output");
    let mut out: Vec<String> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| {
            format!(
                "{}/{}",
                i["metadata"]["namespace"].as_str().unwrap(),
                i["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn validate_works_offline_and_names_the_bad_field() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    write(&good, "a.yaml", &vs("a", "default", "a", ""));
    write(
        &good,
        "nested/b.yml",
        &format!(
            "{}---\n{}",
            vs("b", "default", "b", ""),
            vs("c", "shop", "c", "")
        ),
    );
    write(&good, "notes.txt", "not config");
    // No server anywhere: validate must not need one.
    let out = run_trellis(
        &[
            "validate",
            "-f",
            good.to_str().unwrap(),
            "--server",
            "http://127.0.0.1:1",
        ],
        &[],
        RUN,
    )
    .unwrap();
    assert!(ok(out).contains("3 documents valid"));

    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        format!("{}---\n{BAD_VS}", vs("fine", "default", "f", "")),
    )
    .unwrap();
    let (code, _, stderr) =
        run_trellis(&["validate", "-f", bad.to_str().unwrap()], &[], RUN).unwrap();
    assert_eq!(code, 1, "{stderr}");
    let want = format!(
        "{}[1] VirtualService default/bad: spec.http[0].route",
        bad.display()
    );
    assert!(stderr.contains(&want), "stderr lacks '{want}':\n{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_delete_and_describe_against_a_running_server() {
    let dir = tempfile::tempdir().unwrap();
    let server = single_server(dir.path(), &[]).await;

    // apply -f DIR reads it recursively.
    let conf = dir.path().join("conf");
    write(
        &conf,
        "reviews/vs.yaml",
        &vs("reviews", "default", "reviews", "team: books"),
    );
    write(
        &conf,
        "reviews/more/dr.json",
        r#"{"apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": "reviews"}, "spec": {"host": "reviews.default.svc.cluster.local"}}"#,
    );
    write(
        &conf,
        "svc.yaml",
        "apiVersion: trellis.dev/v1
kind: Service
metadata: {name: reviews}
spec:
  ports: [{name: http, number: 9080, protocol: HTTP}]
  labels: {app: reviews}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: reviews-vm-1}
spec: {address: 10.0.0.11, labels: {app: reviews, version: v1}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ratings-vm-1}
spec: {address: 10.0.0.21, labels: {app: ratings}}
",
    );
    let out = ok(trellis(&server, &["apply", "-f", conf.to_str().unwrap()]));
    assert!(
        out.contains("VirtualService default/reviews created"),
        "{out}"
    );
    assert!(
        out.contains("DestinationRule default/reviews created"),
        "{out}"
    );

    // apply -f - reads standard input.
    let url = server.url("");
    let stdin = format!(
        "{}---\n{}",
        vs("ratings", "shop", "ratings", "team: books"),
        vs("details", "shop", "details", "team: other")
    );
    let out = run_trellis_with_stdin(
        &["apply", "-f", "-", "--server", &url],
        &[],
        Some(&stdin),
        RUN,
    )
    .unwrap();
    assert!(ok(out).contains("VirtualService shop/ratings created"));
    // Applying the same again changes nothing.
    let out = run_trellis_with_stdin(
        &["apply", "-f", "-", "--server", &url],
        &[],
        Some(&stdin),
        RUN,
    )
    .unwrap();
    assert!(ok(out).contains("VirtualService shop/ratings unchanged"));
    // --dry-run shows the change as a diff and writes nothing.
    let changed = vs("ratings", "shop", "ratings-v2", "team: books");
    let out = run_trellis_with_stdin(
        &["apply", "--dry-run", "-f", "-", "--server", &url],
        &[],
        Some(&changed),
        RUN,
    )
    .unwrap();
    let out = ok(out);
    assert!(
        out.contains("VirtualService shop/ratings updated (dry run)"),
        "{out}"
    );
    assert!(out.contains("+   - ratings-v2"), "{out}");
    let now: Value = serde_json::from_str(&ok(trellis(
        &server,
        &["get", "vs", "ratings", "-n", "shop", "-o", "json"],
    )))
    .unwrap();
    assert_eq!(now["spec"]["hosts"][0], "ratings");

    // get: namespaces, -A, -l, and every output form.
    assert_eq!(
        names(&ok(trellis(&server, &["get", "vs", "-o", "json"]))),
        ["default/reviews"]
    );
    assert_eq!(
        names(&ok(trellis(
            &server,
            &["get", "virtualservices", "-A", "-o", "json"]
        ))),
        ["default/reviews", "shop/details", "shop/ratings"]
    );
    assert_eq!(
        names(&ok(trellis(
            &server,
            &["get", "vs", "-A", "-l", "team=books", "-o", "json"]
        ))),
        ["default/reviews", "shop/ratings"]
    );
    assert_eq!(
        names(&ok(trellis(
            &server,
            &[
                "get",
                "VirtualService",
                "-n",
                "shop",
                "-l",
                "team!=books",
                "-o",
                "json"
            ]
        ))),
        ["shop/details"]
    );
    let one: Value = serde_json::from_str(&ok(trellis(
        &server,
        &["get", "dr", "reviews", "-o", "json"],
    )))
    .unwrap();
    assert_eq!(one["spec"]["host"], "reviews.default.svc.cluster.local");
    let yaml = ok(trellis(
        &server,
        &["get", "vs", "ratings", "-n", "shop", "-o", "yaml"],
    ));
    let docs = trellis_api::parse_documents("out", &yaml).expect("-o yaml output applies as it is");
    assert_eq!(docs.len(), 1);
    assert_eq!(
        docs[0].resource.key().to_string(),
        trellis_api::ResourceKey::new(trellis_api::Kind::VirtualService, "shop", "ratings")
            .to_string()
    );
    let table = ok(trellis(&server, &["get", "vs", "-A"]));
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("NAMESPACE") && lines[0].contains("NAME"),
        "{table}"
    );
    assert_eq!(lines.len(), 4, "{table}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("shop") && l.contains("ratings") && l.contains("team=books")),
        "{table}"
    );
    let (code, _, stderr) = trellis(&server, &["get", "vs", "nope"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("not found"), "{stderr}");

    // describe: endpoints by the Service's labels, and what names it.
    let out = ok(trellis(&server, &["describe", "service", "reviews"]));
    assert!(
        out.contains("reviews-vm-1") && out.contains("10.0.0.11"),
        "{out}"
    );
    assert!(!out.contains("ratings-vm-1"), "{out}");
    assert!(out.contains("virtualservice/default/reviews"), "{out}");
    assert!(out.contains("destinationrule/default/reviews"), "{out}");
    assert!(!out.contains("virtualservice/shop/ratings"), "{out}");

    // delete KIND NAME, and delete -f.
    let out = ok(trellis(&server, &["delete", "vs", "details", "-n", "shop"]));
    assert!(out.contains("deleted"), "{out}");
    let out = ok(trellis(
        &server,
        &["delete", "-f", conf.join("reviews").to_str().unwrap()],
    ));
    assert!(
        out.contains("VirtualService default/reviews deleted")
            && out.contains("DestinationRule default/reviews deleted"),
        "{out}"
    );
    assert_eq!(
        names(&ok(trellis(&server, &["get", "vs", "-A", "-o", "json"]))),
        ["shop/ratings"]
    );
    let (code, _, stderr) = trellis(&server, &["delete", "vs", "details", "-n", "shop"]);
    assert_eq!(code, 1, "deleting what is not there fails");
    assert!(stderr.contains("not found"), "{stderr}");

    // A refused apply exits non-zero and stores nothing, even the good documents.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        format!("{}---\n{BAD_VS}", vs("fine", "default", "f", "")),
    )
    .unwrap();
    let (code, _, stderr) = trellis(&server, &["apply", "-f", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("[1] VirtualService default/bad: spec.http[0].route"),
        "{stderr}"
    );
    let (code, _, stderr) = trellis(&server, &["get", "vs", "fine"]);
    assert_eq!(code, 1, "{stderr}");
    // The same resource in two files is refused before anything is sent.
    let twice = dir.path().join("twice");
    write(&twice, "1.yaml", &vs("twice", "default", "t", ""));
    write(&twice, "2.yaml", &vs("twice", "default", "t2", ""));
    let (code, _, stderr) = trellis(&server, &["apply", "-f", twice.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("the same resource as"), "{stderr}");
    assert_eq!(trellis(&server, &["get", "vs", "twice"]).0, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_address_comes_from_the_flag_or_trellis_addr() {
    let dir = tempfile::tempdir().unwrap();
    let server = single_server(dir.path(), &[]).await;
    let url = server.url("");
    // host:port alone is read as Consul reads CONSUL_HTTP_ADDR.
    for env in [url.as_str(), server.http.as_str()] {
        let out = run_trellis(&["get", "vs", "-o", "json"], &[("TRELLIS_ADDR", env)], RUN).unwrap();
        assert_eq!(names(&ok(out)), Vec::<String>::new());
    }
    // The flag wins over the environment.
    let out = run_trellis(
        &["get", "vs", "-o", "json", "--server", &url],
        &[("TRELLIS_ADDR", "http://127.0.0.1:1")],
        RUN,
    )
    .unwrap();
    ok(out);
    let (code, _, stderr) = run_trellis(
        &["get", "vs"],
        &[("TRELLIS_ADDR", "http://127.0.0.1:1")],
        RUN,
    )
    .unwrap();
    assert_eq!(code, 1);
    assert!(
        stderr.contains("cannot reach the Trellis server at http://127.0.0.1:1"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_closes_the_api_to_requests_without_the_token() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "tok-3f9c2e7a1b";
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{secret}\n")).unwrap();
    let server = single_server(
        dir.path(),
        &["--acl-token-file", token_file.to_str().unwrap()],
    )
    .await;
    let client = http();
    let url = |p: &str| server.url(p);

    // Status probes stay open; everything else needs the token.
    for p in ["/v1/status/ready", "/v1/status/leader"] {
        assert!(
            client
                .get(url(p))
                .send()
                .await
                .unwrap()
                .status()
                .is_success(),
            "{p}"
        );
    }
    for (method, p) in [
        (reqwest::Method::GET, "/v1/config/virtualservice"),
        (reqwest::Method::PUT, "/v1/kv/x"),
        (reqwest::Method::GET, "/v1/openapi.json"),
        (reqwest::Method::GET, "/v1/operator/raft/configuration"),
        (reqwest::Method::POST, "/v1/status/ready"),
    ] {
        for token in [
            None,
            Some("wrong"),
            Some("tok-3f9c2e7a1"),
            Some("tok-3f9c2e7a1b2"),
        ] {
            let mut r = client.request(method.clone(), url(p));
            if let Some(t) = token {
                r = r.header("x-trellis-token", t);
            }
            let r = r.send().await.unwrap();
            assert_eq!(
                r.status(),
                reqwest::StatusCode::FORBIDDEN,
                "{method} {p} with {token:?}"
            );
            let body: Value = r.json().await.expect("JSON error");
            assert!(body["error"].is_string());
        }
    }
    let r = client
        .get(url("/v1/config/virtualservice"))
        .header("x-trellis-token", secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    let r = client
        .get(url("/v1/config/virtualservice"))
        .bearer_auth(secret)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::OK);

    // The CLI: refused without the token, served with --token or TRELLIS_TOKEN.
    let base = server.url("");
    let vs_file = dir.path().join("vs.yaml");
    std::fs::write(&vs_file, vs("guarded", "default", "g", "")).unwrap();
    let f = vs_file.to_str().unwrap();
    let (code, _, stderr) = run_trellis(&["apply", "-f", f, "--server", &base], &[], RUN).unwrap();
    assert_eq!(code, 1);
    assert!(
        stderr.contains("requires a token") && stderr.contains("403"),
        "{stderr}"
    );
    ok(run_trellis(
        &["apply", "-f", f, "--server", &base, "--token", secret],
        &[],
        RUN,
    )
    .unwrap());
    let out = run_trellis(
        &["get", "vs", "-o", "json", "--server", &base],
        &[("TRELLIS_TOKEN", secret)],
        RUN,
    )
    .unwrap();
    assert_eq!(names(&ok(out)), ["default/guarded"]);

    assert!(
        !server.log().contains(secret),
        "the token reached the log:\n{}",
        server.log()
    );

    // An empty token file would open the API to anyone: the server refuses to start.
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    let data = dir.path().join("s2");
    let (code, _, stderr) = run_trellis(
        &[
            "server",
            "--data-dir",
            data.to_str().unwrap(),
            "--grpc-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            "--bootstrap-expect",
            "1",
            "--acl-token-file",
            empty.to_str().unwrap(),
        ],
        &[],
        RUN,
    )
    .unwrap();
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("--acl-token-file") && stderr.contains("empty"),
        "{stderr}"
    );
}

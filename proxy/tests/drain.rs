//! Graceful drain: stop accepting, finish in-flight work, cut the rest at the deadline.

mod common;

use std::sync::atomic::Ordering;

use common::*;
use tokio::net::TcpStream;

#[tokio::test]
async fn drain_finishes_in_flight_requests_and_stops_accepting() {
    let (slow, release, arrived) = serve_held("finished").await;
    let yaml = format!(
        r#"
drainTimeout: 30s
listeners:
  admin: {{bind: "127.0.0.1:0"}}
  upstreams: [{{name: up, bind: "127.0.0.1:0", service: slow}}]
services:
  - name: slow
    ports: [{{number: 80, protocol: HTTP}}]
    endpoints: [{{address: 127.0.0.1, port: {}}}]
"#,
        slow.port()
    );
    let proxy = start_proxy(&yaml).await;
    let a = addr(&proxy, "up");
    let c = client();
    let in_flight = tokio::spawn({
        let c = c.clone();
        async move { get(&c, a, "/").await }
    });
    eventually("request in flight", || arrived.load(Ordering::SeqCst) == 1).await;
    let drained = tokio::spawn({
        let proxy = proxy.clone();
        async move { proxy.shutdown().await }
    });
    // New connections are refused once the listener has stopped.
    within("listener to close", async {
        while TcpStream::connect(a).await.is_ok() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    let r = get(&c, addr(&proxy, "admin"), "/ready").await;
    assert_eq!(
        r.status.as_u16(),
        503,
        "admin stays up and says it is draining"
    );
    release.notify_one();
    let r = within("in-flight request", in_flight).await.unwrap();
    assert_eq!(r.status.as_u16(), 200);
    assert_eq!(r.body, "finished");
    assert_eq!(
        within("drain", drained).await.unwrap(),
        0,
        "nothing had to be cut"
    );
}

#[tokio::test]
async fn drain_cuts_what_is_left_at_the_deadline() {
    let echo = tcp_echo(b"").await;
    let yaml = format!(
        r#"
drainTimeout: 50ms
listeners:
  upstreams: [{{name: db, bind: "127.0.0.1:0", service: db}}]
services:
  - name: db
    ports: [{{number: 5432, protocol: TCP}}]
    endpoints: [{{address: 127.0.0.1, port: {}}}]
"#,
        echo.port()
    );
    let proxy = start_proxy(&yaml).await;
    let mut s = TcpStream::connect(addr(&proxy, "db")).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"hi").await.unwrap();
    let mut buf = [0u8; 2];
    within("echo", s.read_exact(&mut buf)).await.unwrap();
    let cut = within("drain", proxy.shutdown()).await;
    assert_eq!(cut, 1, "the idle TCP connection outlived the drain timeout");
    let mut rest = Vec::new();
    let n = within("the cut connection to close", s.read_to_end(&mut rest)).await;
    assert!(n.is_err() || rest.is_empty());
}

#[tokio::test]
async fn run_from_file_serves_until_shutdown_then_drains() {
    let up = upstream("web").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("proxy.yaml");
    std::fs::write(
        &path,
        format!(
            r#"
listeners:
  upstreams: [{{name: web, bind: "127.0.0.1:0", service: web}}]
services:
  - name: web
    ports: [{{number: 80, protocol: HTTP}}]
    endpoints: [{{address: 127.0.0.1, port: {}}}]
"#,
            up.port()
        ),
    )
    .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(async move {
        trellis_proxy::run_from_file(&path, async {
            let _ = rx.await;
        })
        .await
    });
    tx.send(()).unwrap();
    within("run_from_file to return", run)
        .await
        .unwrap()
        .expect("clean exit");
}

#[tokio::test]
async fn run_from_file_reports_a_bad_file_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, "listeners:\n  admin: {bind: not-an-address}\n").unwrap();
    let err = trellis_proxy::run_from_file(&path, std::future::pending())
        .await
        .expect_err("bad file");
    let text = err.to_string();
    assert!(text.contains("broken.yaml"), "{text}");
    assert!(text.contains("listeners.admin.bind"), "{text}");
}

/// Threads of this test process named like the proxy's workers.
fn worker_threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|tasks| {
            tasks
                .filter_map(Result::ok)
                .filter(|t| {
                    std::fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.starts_with("proxy-worker-"))
                })
                .count()
        })
        .unwrap_or(0)
}

// Relies on one process per test (cargo nextest), so no other proxy's workers are counted.
#[tokio::test]
async fn connections_are_served_by_the_configured_workers_which_end_with_the_proxy() {
    let up = upstream("one").await;
    let yaml = format!(
        r#"
concurrency: 3
drainTimeout: 1s
listeners:
  upstreams: [{{name: up, bind: "127.0.0.1:0", service: one}}]
services:
  - name: one
    ports: [{{number: 80, protocol: HTTP}}]
    endpoints: [{{address: 127.0.0.1, port: {}}}]
"#,
        up.port()
    );
    let before = worker_threads();
    let proxy = start_proxy(&yaml).await;
    // A new thread takes its name once it runs, so this may take a moment.
    eventually("three workers (concurrency: 3)", || {
        worker_threads() == before + 3
    })
    .await;
    // Six connections land on the three workers in turn; every one is served.
    for _ in 0..6 {
        let r = get(&client(), addr(&proxy, "up"), "/").await;
        assert_eq!(r.status.as_u16(), 200);
        assert_eq!(r.body, "one");
    }
    assert_eq!(up.hits(), 6);
    assert_eq!(proxy.shutdown().await, 0);
    // `shutdown` has joined the workers' threads, but the kernel takes a thread's entry out of
    // /proc/self/task a moment after a join returns.
    eventually("the workers to end with the proxy", || {
        worker_threads() == before
    })
    .await;
}

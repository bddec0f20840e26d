//! The replicated store as real `trellis server` processes on loopback.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use trellis_itests::{
    Cluster, ServerProcess, Status, eventually, http, run_trellis, snapshot_dir, status,
};

const WAIT: Duration = Duration::from_secs(30);

/// Waits until every given server reports the same leader among them and `voters` voters.
async fn settled(client: &reqwest::Client, servers: &[&ServerProcess], voters: usize) -> Status {
    eventually(WAIT, "servers agree on a leader", || async {
        let mut leader = None;
        let mut last = None;
        for s in servers {
            let st = status(client, s).await?;
            let l = st.leader?;
            if leader.is_some_and(|x| x != l) {
                return None;
            }
            if st.members.iter().filter(|m| m.voter).count() != voters {
                return None;
            }
            leader = Some(l);
            last = Some(st);
        }
        let st = last?;
        servers
            .iter()
            .any(|s| Some(s.node_id) == st.leader)
            .then_some(st)
    })
    .await
}

async fn keys_under(
    client: &reqwest::Client,
    server: &ServerProcess,
    prefix: &str,
    stale: bool,
) -> Option<BTreeSet<String>> {
    let mut url = server.url(&format!("/v1/kv/{prefix}?keys"));
    if stale {
        url.push_str("&stale");
    }
    let r = client.get(url).send().await.ok()?;
    if r.status() == reqwest::StatusCode::NOT_FOUND {
        return Some(BTreeSet::new());
    }
    if !r.status().is_success() {
        return None;
    }
    r.json::<BTreeSet<String>>().await.ok()
}

async fn put(client: &reqwest::Client, server: &ServerProcess, key: &str, value: &str) -> bool {
    match client
        .put(server.url(&format!("/v1/kv/{key}")))
        .body(value.to_string())
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => r.json::<bool>().await.unwrap_or(false),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_mid_stream_loses_no_acknowledged_write() {
    let client = http();
    let mut cluster = Cluster::start(&[]).expect("cluster");
    let refs: Vec<&ServerProcess> = cluster.servers.iter().collect();
    let st = settled(&client, &refs, 3).await;
    let leader = st.leader.unwrap();
    let leader_pos = cluster
        .servers
        .iter()
        .position(|s| s.node_id == leader)
        .unwrap();
    let writer_pos = (leader_pos + 1) % 3;

    // A steady stream of writes through a follower; only acknowledged keys count.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let writer = {
        let (stop, acked, client) = (stop.clone(), acked.clone(), client.clone());
        let url = cluster.servers[writer_pos].url("/v1/kv/stream/");
        tokio::spawn(async move {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("k{i:06}");
                let ok = match client.put(format!("{url}{key}")).body("v").send().await {
                    Ok(r) if r.status().is_success() => r.json::<bool>().await.unwrap_or(false),
                    _ => false,
                };
                if ok {
                    acked.lock().unwrap().push(format!("stream/{key}"));
                }
                i += 1;
            }
        })
    };
    let count = || acked.lock().unwrap().len();
    eventually(WAIT, "100 acknowledged writes before the kill", || async {
        (count() >= 100).then_some(())
    })
    .await;
    cluster.servers[leader_pos].kill();
    let at_kill = count();
    eventually(
        WAIT,
        "100 more acknowledged writes after the kill",
        || async { (count() >= at_kill + 100).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    writer.await.unwrap();
    let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();

    let survivors: Vec<&ServerProcess> = cluster
        .servers
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader_pos)
        .map(|(_, s)| s)
        .collect();
    let st = settled(&client, &survivors, 3).await;
    assert_ne!(st.leader, Some(leader), "a new leader was elected");
    for s in &survivors {
        let keys = eventually(WAIT, "a linearizable listing", || {
            keys_under(&client, s, "stream/", false)
        })
        .await;
        let missing: Vec<_> = acked.difference(&keys).collect();
        assert!(
            missing.is_empty(),
            "server {} lost acknowledged writes: {missing:?}",
            s.node_id
        );
    }

    // The killed leader comes back from its data dir and catches up.
    cluster.servers[leader_pos].restart().expect("restart");
    let back = &cluster.servers[leader_pos];
    eventually(
        WAIT,
        "the restarted server holds every acknowledged write",
        || async {
            let keys = keys_under(&client, back, "stream/", true).await?;
            acked.is_subset(&keys).then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_down_during_compaction_catches_up_from_a_snapshot() {
    let client = http();
    let mut cluster = Cluster::start(&["--snapshot-every", "50"]).expect("cluster");
    let refs: Vec<&ServerProcess> = cluster.servers.iter().collect();
    let st = settled(&client, &refs, 3).await;
    let follower = cluster
        .servers
        .iter()
        .position(|s| Some(s.node_id) != st.leader)
        .unwrap();
    let other = (0..3).find(|i| *i != follower).unwrap();
    cluster.servers[follower].kill();
    for i in 0..300 {
        assert!(
            put(
                &client,
                &cluster.servers[other],
                &format!("snap/{i:03}"),
                "x"
            )
            .await,
            "write {i}"
        );
    }
    cluster.servers[follower].restart().expect("restart");
    let back = &cluster.servers[follower];
    let keys = eventually(WAIT, "the restarted server has all 300 keys", || async {
        let keys = keys_under(&client, back, "snap/", true).await?;
        (keys.len() == 300).then_some(keys)
    })
    .await;
    assert!(keys.contains("snap/299"));
    // Every member, the restarted one included, is back in the leader's replication.
    let st = settled(&client, &cluster.servers.iter().collect::<Vec<_>>(), 3).await;
    assert!(
        st.members
            .iter()
            .all(|m| m.last_index.is_some_and(|i| i >= 300)),
        "{st:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_lists_adds_and_removes_peers() {
    let client = http();
    let cluster = Cluster::start(&[]).expect("cluster");
    let refs: Vec<&ServerProcess> = cluster.servers.iter().collect();
    settled(&client, &refs, 3).await;
    let server = cluster.servers[1].url("");

    let (code, out, err) = run_trellis(
        &["operator", "raft", "list-peers", "-o", "json"],
        &[("TRELLIS_ADDR", &server)],
        WAIT,
    )
    .unwrap();
    assert_eq!(code, 0, "{err}");
    let peers: Vec<serde_json::Value> = serde_json::from_str(&out).expect("json peers");
    assert_eq!(peers.len(), 3);
    assert_eq!(peers.iter().filter(|p| p["leader"] == true).count(), 1);
    assert!(peers.iter().all(|p| p["voter"] == true));

    let (code, out, _) = run_trellis(
        &["operator", "raft", "list-peers", "--server", &server],
        &[],
        WAIT,
    )
    .unwrap();
    assert_eq!(code, 0);
    assert!(out.starts_with("ID"), "{out}");
    assert_eq!(out.lines().count(), 4, "{out}");
    assert_eq!(out.matches("leader").count(), 1, "{out}");

    // A fourth server joins: first a learner, then a voter.
    let fourth = ServerProcess::start(
        &cluster.dir.path().join("s4"),
        "127.0.0.1:0",
        "127.0.0.1:0",
        &["--join".into(), cluster.servers[2].grpc.clone()],
    )
    .unwrap();
    let mut all: Vec<&ServerProcess> = cluster.servers.iter().collect();
    all.push(&fourth);
    let st = settled(&client, &all, 4).await;
    assert!(st.members.iter().any(|m| m.id == fourth.node_id && m.voter));

    let id = fourth.node_id.to_string();
    let (code, out, err) = run_trellis(
        &[
            "operator",
            "raft",
            "remove-peer",
            "--id",
            &id,
            "--server",
            &server,
        ],
        &[],
        WAIT,
    )
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let st = settled(&client, &refs, 3).await;
    assert!(st.members.iter().all(|m| m.id != fourth.node_id), "{st:?}");

    // An unreachable server gives a clear error and a failing exit code.
    let (code, _, err) = run_trellis(
        &[
            "operator",
            "raft",
            "list-peers",
            "--server",
            "http://127.0.0.1:1",
        ],
        &[],
        WAIT,
    )
    .unwrap();
    assert_ne!(code, 0);
    assert!(
        err.contains("cannot reach the Trellis server at http://127.0.0.1:1"),
        "{err}"
    );
}

/// Runs `trellis server` expecting it to refuse to start; returns its stderr.
fn refused(data_dir: &std::path::Path, extra: &[&str]) -> String {
    let dir = data_dir.display().to_string();
    let mut args = vec![
        "server",
        "--data-dir",
        dir.as_str(),
        "--grpc-addr",
        "127.0.0.1:0",
        "--http-addr",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let (code, _out, err) = run_trellis(&args, &[], WAIT).expect("trellis exits by itself");
    assert_ne!(code, 0, "the server must refuse to start; stderr:\n{err}");
    err
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_data_dirs_and_bad_peers_are_refused_and_nothing_is_written() {
    let client = http();
    let tmp = tempfile::tempdir().unwrap();

    // A directory that belongs to something else.
    let foreign = tmp.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
    let before = snapshot_dir(&foreign);
    let err = refused(&foreign, &["--bootstrap-expect", "1"]);
    assert!(
        err.contains("is not a Trellis server data dir") && err.contains("'notes.txt'"),
        "{err}"
    );
    assert_eq!(snapshot_dir(&foreign), before);

    // A store file that is not a store.
    let single = tmp.path().join("single");
    let mut one = ServerProcess::start(
        &single,
        "127.0.0.1:0",
        "127.0.0.1:0",
        &["--bootstrap-expect".into(), "1".into()],
    )
    .unwrap();
    eventually(WAIT, "single server ready", || async {
        status(&client, &one).await?.leader
    })
    .await;
    one.kill();

    // A log segment damaged on disk (not a write cut short by a crash).
    let damaged_log = tmp.path().join("damaged-log");
    copy_dir(&single, &damaged_log);
    let segments = damaged_log.join("raft-log");
    let mut names: Vec<_> = std::fs::read_dir(&segments)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let first = segments.join(&names[0]);
    let mut bytes = std::fs::read(&first).unwrap();
    bytes[20] ^= 0x5A;
    std::fs::write(&first, &bytes).unwrap();
    let before = snapshot_dir(&damaged_log);
    let err = refused(&damaged_log, &[]);
    assert!(
        err.contains(&names[0]) && err.contains("checksum") && err.contains("restore"),
        "{err}"
    );
    assert_eq!(snapshot_dir(&damaged_log), before);

    std::fs::write(single.join("state.redb"), vec![0xAB; 8192]).unwrap();
    let before = snapshot_dir(&single);
    let err = refused(&single, &[]);
    assert!(
        err.contains("state.redb") && err.contains("not a readable store"),
        "{err}"
    );
    assert_eq!(snapshot_dir(&single), before);

    // A join address that is not a Trellis server.
    let http_only = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let not_trellis = http_only.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for mut conn in http_only.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let _ = conn.write_all(
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
            );
        }
    });
    let fresh = tmp.path().join("fresh");
    let err = refused(&fresh, &["--bootstrap-expect", "3", "--join", &not_trellis]);
    assert!(
        err.contains(&format!("--join {not_trellis}: not a Trellis server")),
        "{err}"
    );
    assert!(
        !fresh.exists(),
        "nothing may be written for a refused start"
    );

    // A copy of a member's data dir: same node id, other address.
    let cluster = Cluster::start(&[]).expect("cluster");
    settled(&client, &cluster.servers.iter().collect::<Vec<_>>(), 3).await;
    let copy = tmp.path().join("copy");
    copy_dir(&cluster.servers[1].data_dir, &copy);
    let before = snapshot_dir(&copy);
    let join = cluster.servers[0].grpc.clone();
    let err = refused(&copy, &["--join", &join]);
    let id = cluster.servers[1].node_id;
    assert!(
        err.contains(&format!("node id {id} clashes")) && err.contains("empty --data-dir"),
        "{err}"
    );
    assert_eq!(snapshot_dir(&copy), before);
    // The cluster is untouched by the impostor.
    let st = settled(&client, &cluster.servers.iter().collect::<Vec<_>>(), 3).await;
    assert_eq!(st.members.len(), 3);
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.path().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

//! Three store servers in one process over real gRPC, with links the test controls.

mod support;

use std::time::Duration;

use futures::StreamExt;
use support::{Cluster, IDS, agreed_leader, applied};
use trellis_raft_store::{EventKind, StoreClient, Txn, WatchUpdate};

const WAIT: Duration = Duration::from_secs(20);

fn defaults(_: &mut trellis_raft_store::NodeConfig) {}

/// Puts `value` at `key` only if the key's mod revision is `expected` (0: absent).
fn put_if(key: &[u8], expected: u64, value: &[u8]) -> Txn {
    Txn {
        compare: vec![trellis_raft_store::Compare {
            key: key.to_vec(),
            mod_revision: expected,
        }],
        success: vec![trellis_raft_store::Op::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        }],
        failure: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_on_any_server_replicate_to_all() {
    let cluster = Cluster::new(defaults);
    let servers = cluster.start_three().await;
    let mut last = 0;
    for (i, s) in servers.iter().enumerate() {
        last = s
            .node
            .put(format!("k/{i}"), format!("v{i}"))
            .await
            .expect("put");
    }
    for s in &servers {
        applied(s, last, WAIT).await;
        let (_, kvs, _) = s
            .node
            .range(b"k/", true, 0, true)
            .await
            .expect("stale read");
        let got: Vec<_> = kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
            .collect();
        assert_eq!(got, ["v0", "v1", "v2"], "server {}", s.id);
    }
    // A linearizable read from a follower sees the newest write at once.
    let leader = agreed_leader(&servers.iter().collect::<Vec<_>>(), WAIT).await;
    let follower = servers.iter().find(|s| s.id != leader).unwrap();
    let rev = servers[0].node.put("k/fresh", "now").await.unwrap();
    let kv = follower
        .node
        .get(b"k/fresh")
        .await
        .unwrap()
        .expect("fresh key visible");
    assert_eq!(kv.mod_revision, rev);
    for s in servers {
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compare_and_swap_commits_only_on_the_expected_revision() {
    let cluster = Cluster::new(defaults);
    let servers = cluster.start_three().await;
    let node = &servers[1].node;
    let created = node.txn(put_if(b"lock", 0, b"a")).await.unwrap();
    assert!(created.succeeded);
    let stale = node.txn(put_if(b"lock", 0, b"b")).await.unwrap();
    assert!(
        !stale.succeeded,
        "a create-if-absent on an existing key must fail"
    );
    assert_eq!(node.get(b"lock").await.unwrap().unwrap().value, b"a");
    let swapped = node
        .txn(put_if(b"lock", created.revision, b"c"))
        .await
        .unwrap();
    assert!(swapped.succeeded);
    let kv = node.get(b"lock").await.unwrap().unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.version, kv.create_revision),
        (&b"c"[..], 2, created.revision)
    );
    for s in servers {
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_minority_cannot_commit_and_the_majority_can() {
    let cluster = Cluster::new(defaults);
    let servers = cluster.start_three().await;
    let all: Vec<_> = servers.iter().collect();
    let leader = agreed_leader(&all, WAIT).await;
    servers[0].node.put("before", "1").await.unwrap();

    // Cut the leader off: it is the minority.
    cluster.links.isolate(&[leader], &IDS);
    let minority = servers.iter().find(|s| s.id == leader).unwrap();
    let majority: Vec<_> = servers.iter().filter(|s| s.id != leader).collect();

    let attempt = tokio::time::timeout(
        Duration::from_secs(3),
        minority
            .node
            .raft()
            .unwrap()
            .client_write(trellis_raft_store::types::Command::Txn(Txn::put(
                "minority", "x",
            ))),
    )
    .await;
    assert!(
        !matches!(attempt, Ok(Ok(_))),
        "a write on the isolated old leader must not commit"
    );

    let new_leader = agreed_leader(&majority, WAIT).await;
    assert_ne!(new_leader, leader);
    let mut last = 0;
    for i in 0..20 {
        last = majority[i % 2]
            .node
            .put(format!("majority/{i}"), "y")
            .await
            .expect("majority commits");
    }
    assert!(majority[0].node.get(b"minority").await.unwrap().is_none());

    cluster.links.heal();
    for s in &servers {
        applied(s, last, WAIT).await;
    }
    let mut views = Vec::new();
    for s in &servers {
        let (_, kvs, _) = s.node.range(b"", true, 0, true).await.unwrap();
        views.push(kvs);
    }
    assert_eq!(
        views[0].len(),
        21,
        "before + 20 majority writes, and no minority write"
    );
    assert!(
        views.iter().all(|v| *v == views[0]),
        "all servers agree after healing"
    );
    for s in servers {
        s.stop().await;
    }
}

fn small_log(config: &mut trellis_raft_store::NodeConfig) {
    config.snapshot_every = 50;
    config.keep_behind_snapshot = 5;
    config.history.revisions = 40;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_that_missed_compaction_catches_up_by_snapshot() {
    let cluster = Cluster::new(small_log);
    let mut servers = cluster.start_three().await;
    let leader = agreed_leader(&servers.iter().collect::<Vec<_>>(), WAIT).await;
    let pos = servers.iter().position(|s| s.id != leader).unwrap();
    let down = servers.remove(pos);
    let (down_id, down_addr) = (down.id, down.addr);
    let behind = down.node.last_log_index().unwrap();
    down.stop().await;

    let mut last = 0;
    for i in 0..300 {
        last = servers[i % 2]
            .node
            .put(format!("s/{i:03}"), format!("{i}"))
            .await
            .unwrap();
    }
    let leader_node = servers.iter().find(|s| s.id == leader).unwrap();
    applied(leader_node, last, WAIT).await;
    // The purge follows the snapshot in the background, and waits while a request to the
    // stopped server still holds the entries it would remove.
    let raft = leader_node.node.raft().unwrap();
    let purged = raft
        .wait(Some(WAIT))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index > behind),
            "purge past the stopped server",
        )
        .await;
    assert!(
        purged.is_ok(),
        "the leader purged its log past the stopped server ({:?} vs {behind})",
        raft.metrics().borrow().purged
    );

    let back = cluster
        .start(down_id, down_addr, vec![servers[0].addr.to_string()])
        .await;
    applied(&back, last, WAIT).await;
    let snapshot = back.node.raft().unwrap().metrics().borrow().snapshot;
    assert!(
        snapshot.is_some_and(|s| s.index > behind),
        "caught up through a snapshot: {snapshot:?}"
    );
    let (_, kvs, _) = back.node.range(b"s/", true, 0, true).await.unwrap();
    assert_eq!(kvs.len(), 300);
    assert_eq!(kvs[299].value, b"299");
    // Each server keeps its current snapshot as one file beside its database, no more.
    for id in [leader, down_id] {
        let files: Vec<String> = std::fs::read_dir(cluster.dir.path().join(format!("n{id}")))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("snapshot-"))
            .collect();
        assert_eq!(files.len(), 1, "server {id}: {files:?}");
        assert!(files[0].ends_with(".bin"), "server {id}: {files:?}");
    }

    // History before the snapshot is gone there: an old watch is told to re-list.
    let mut old = back.node.watch(b"s/".to_vec(), 1).unwrap();
    match tokio::time::timeout(WAIT, old.next())
        .await
        .expect("watch answers")
    {
        Some(WatchUpdate::Compacted { compact_revision }) => assert!(compact_revision > behind),
        other => panic!("expected Compacted, got {other:?}"),
    }
    back.stop().await;
    for s in servers {
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_sees_every_event_once_in_order_across_a_leader_change() {
    let cluster = Cluster::new(defaults);
    let mut servers = cluster.start_three().await;
    let start_rev = servers[0].node.put("w/0", "0").await.unwrap();
    let leader = agreed_leader(&servers.iter().collect::<Vec<_>>(), WAIT).await;

    // The watcher talks to the leader, which is about to die; it resumes elsewhere.
    let leader_pos = servers.iter().position(|s| s.id == leader).unwrap();
    let leader_addr = servers[leader_pos].addr.to_string();
    let others: Vec<String> = servers
        .iter()
        .filter(|s| s.id != leader)
        .map(|s| s.addr.to_string())
        .collect();

    let watcher = tokio::spawn(async move {
        let mut seen: Vec<(u64, String)> = Vec::new();
        let mut next = start_rev;
        let mut addrs = vec![leader_addr];
        addrs.extend(others);
        let client = StoreClient::new(addrs).unwrap();
        let deadline = tokio::time::Instant::now() + WAIT * 2;
        while seen.len() < 201 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "watch stalled at {} events",
                seen.len()
            );
            let Ok(mut stream) = client.watch(b"w/".to_vec(), next).await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            while let Some(Ok(update)) = stream.next().await {
                match update {
                    WatchUpdate::Events(events) => {
                        for e in events {
                            assert_eq!(e.kind, EventKind::Put);
                            next = e.kv.mod_revision + 1;
                            seen.push((e.kv.mod_revision, String::from_utf8(e.kv.key).unwrap()));
                        }
                    }
                    WatchUpdate::Compacted { .. } => {
                        panic!("history of the default size must cover this test")
                    }
                }
                if seen.len() >= 201 {
                    break;
                }
            }
        }
        seen
    });

    for i in 1..=100 {
        servers[(i as usize) % 3]
            .node
            .put(format!("w/{i}"), "x")
            .await
            .unwrap();
    }
    let dead = servers.remove(leader_pos);
    dead.stop().await;
    let survivors: Vec<_> = servers.iter().collect();
    let new_leader = agreed_leader(&survivors, WAIT).await;
    assert_ne!(new_leader, leader);
    for i in 101..=200 {
        servers[(i as usize) % 2]
            .node
            .put(format!("w/{i}"), "x")
            .await
            .unwrap();
    }
    let seen = tokio::time::timeout(WAIT * 3, watcher)
        .await
        .expect("watcher done")
        .unwrap();
    let keys: Vec<_> = seen.iter().map(|(_, k)| k.clone()).collect();
    let expected: Vec<_> = (0..=200).map(|i| format!("w/{i}")).collect();
    assert_eq!(keys, expected, "every event exactly once, in order");
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "revisions strictly increase"
    );
    for s in servers {
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_below_the_kept_history_is_told_to_relist() {
    let cluster = Cluster::new(small_log);
    let servers = cluster.start_three().await;
    let first = servers[0].node.put("h/0", "0").await.unwrap();
    let mut last = 0;
    for i in 1..200 {
        last = servers[0].node.put(format!("h/{i}"), "x").await.unwrap();
    }
    applied(&servers[0], last, WAIT).await;
    let mut stream = servers[0].node.watch(b"h/".to_vec(), first).unwrap();
    match tokio::time::timeout(WAIT, stream.next()).await.unwrap() {
        Some(WatchUpdate::Compacted { compact_revision }) => {
            assert!(compact_revision >= first && compact_revision < last)
        }
        other => panic!("expected Compacted, got {other:?}"),
    }
    // A watch inside the window gets exactly the newer events.
    let mut recent = servers[0].node.watch(b"h/".to_vec(), last).unwrap();
    match tokio::time::timeout(WAIT, recent.next()).await.unwrap() {
        Some(WatchUpdate::Events(events)) => {
            assert_eq!(events.len(), 1);
            assert_eq!(events[0].kv.key, b"h/199");
        }
        other => panic!("expected the last event, got {other:?}"),
    }
    for s in servers {
        s.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_of_one_key_let_exactly_one_win() {
    let cluster = Cluster::new(defaults);
    let servers = cluster.start_three().await;
    let mut attempts = Vec::new();
    for i in 0..60 {
        let node = servers[i % 3].node.clone();
        attempts.push(tokio::spawn(async move {
            node.txn(put_if(b"leader-lock", 0, &format!("{i}").into_bytes()))
                .await
                .expect("txn answered")
        }));
    }
    let mut winners = Vec::new();
    for (i, a) in attempts.into_iter().enumerate() {
        if a.await.unwrap().succeeded {
            winners.push(i);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one create may win: {winners:?}");
    let kv = servers[0].node.get(b"leader-lock").await.unwrap().unwrap();
    assert_eq!(kv.value, winners[0].to_string().into_bytes());
    assert_eq!(kv.version, 1);
    for s in servers {
        s.stop().await;
    }
}

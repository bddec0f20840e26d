//! The discovery protocol spoken directly to a real server: what a stream must start with,
//! what the first push holds, and the difference a resuming agent gets.

use std::path::Path;
use std::time::Duration;

use trellis_api::discovery::{
    Ack, AgentMessage, Held, Hello, ServerMessage, agent_message,
    discovery_client::DiscoveryClient, server_message,
};
use trellis_itests::{ServerProcess, apply, eventually, http};

async fn single_server(dir: &Path) -> ServerProcess {
    let server = ServerProcess::start(
        &dir.join("s1"),
        "127.0.0.1:0",
        "127.0.0.1:0",
        &["--bootstrap-expect".into(), "1".into()],
    )
    .unwrap();
    eventually(Duration::from_secs(30), "the server is ready", || async {
        let r = http()
            .get(server.url("/v1/status/ready"))
            .send()
            .await
            .ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    server
}

fn hello(node: &str, held: Vec<Held>) -> AgentMessage {
    AgentMessage {
        kind: Some(agent_message::Kind::Hello(Hello {
            node: node.into(),
            held,
            proxy_only: true,
            ..Hello::default()
        })),
    }
}

/// Opens a stream whose agent side is the given messages, then silence.
async fn open(
    server: &ServerProcess,
    first: Vec<AgentMessage>,
) -> Result<tonic::Streaming<ServerMessage>, tonic::Status> {
    let mut client = DiscoveryClient::connect(format!("http://{}", server.grpc))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    for m in first {
        tx.send(m).await.unwrap();
    }
    // Kept open (and silent) for as long as the test holds the stream.
    std::mem::forget(tx);
    client
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map(|r| r.into_inner())
}

async fn next_push(stream: &mut tonic::Streaming<ServerMessage>) -> trellis_api::discovery::Push {
    let within = Duration::from_secs(20);
    loop {
        let msg = tokio::time::timeout(within, stream.message())
            .await
            .expect("a push within 20s")
            .expect("the stream is healthy")
            .expect("the stream is open");
        if let Some(server_message::Kind::Push(p)) = msg.kind {
            return p;
        }
    }
}

fn vs(name: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}}}
spec:
  hosts: [{name}]
  http:
    - route: [{{destination: {{host: {name}}}}}]
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_start_with_a_hello_and_resume_from_what_is_held() {
    trellis_itests::init_tls();
    let dir = tempfile::tempdir().unwrap();
    let server = single_server(dir.path()).await;

    // A bad start is refused, naming what is wrong.
    let err = open(&server, vec![hello("Not A Name!", vec![])])
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("hello.node"), "{}", err.message());
    let ack = AgentMessage {
        kind: Some(agent_message::Kind::Ack(Ack::default())),
    };
    let err = open(&server, vec![ack]).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("hello"), "{}", err.message());

    // A new node gets the whole view, marked full, at the store's revision.
    let a = apply(&server, &vs("alpha")).await;
    let mut stream = open(&server, vec![hello("n1", vec![])]).await.unwrap();
    let first = next_push(&mut stream).await;
    assert!(first.full, "a node that holds nothing gets a full view");
    // The view is the one this server has when the stream opens; a write acknowledged a
    // moment before may follow in the next push.
    let mut got = first.upserts;
    while !got
        .iter()
        .any(|i| i.key == "/config/virtualservice/default/alpha")
    {
        let p = next_push(&mut stream).await;
        assert!(!p.full);
        got.extend(p.upserts);
    }
    let alpha = got
        .iter()
        .find(|i| i.key == "/config/virtualservice/default/alpha")
        .unwrap();
    assert_eq!(alpha.revision, a);
    // A change after that comes alone.
    let b = apply(&server, &vs("beta")).await;
    let second = next_push(&mut stream).await;
    assert!(!second.full);
    let keys: Vec<&str> = second.upserts.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["/config/virtualservice/default/beta"]);
    assert_eq!(second.version, b.to_string());

    // A node resuming with what it holds gets only the difference: beta changed, alpha is
    // current, gamma went away.
    let b2 = apply(
        &server,
        &vs("beta").replace("route:", "timeout: 5s\n      route:"),
    )
    .await;
    let held = vec![
        Held {
            key: "/config/virtualservice/default/alpha".into(),
            revision: a,
        },
        Held {
            key: "/config/virtualservice/default/beta".into(),
            revision: b,
        },
        Held {
            key: "/config/virtualservice/default/gamma".into(),
            revision: 1,
        },
    ];
    let mut resumed = open(&server, vec![hello("n2", held)]).await.unwrap();
    // The first push is the view as this server had it when the stream opened; the newest
    // write may come in the next one.
    let mut upserts = Vec::new();
    let mut removals = Vec::new();
    while !upserts.contains(&("/config/virtualservice/default/beta".to_string(), b2)) {
        let p = next_push(&mut resumed).await;
        assert!(!p.full, "a resume is never a full reset");
        upserts.extend(p.upserts.into_iter().map(|i| (i.key, i.revision)));
        removals.extend(p.removals);
    }
    assert!(
        upserts.iter().all(|(k, _)| k.ends_with("/beta")),
        "only beta changed: {upserts:?}"
    );
    assert_eq!(removals, ["/config/virtualservice/default/gamma"]);
}

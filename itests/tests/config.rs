//! The admin config API on a real three-server cluster: apply, read back from a
//! follower, atomic batches, blocking queries, cas, dry runs, errors, OpenAPI.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use trellis_itests::{Cluster, ServerProcess, eventually, http, status};

const WAIT: Duration = Duration::from_secs(30);
const DATASET: &str = "/work/shared/conformance/istio/validation-dataset";

/// A settled cluster: which server leads, and two followers to write and read through.
struct Mesh {
    cluster: Cluster,
    leader: usize,
    followers: [usize; 2],
}

impl Mesh {
    async fn start(client: &reqwest::Client) -> Mesh {
        let cluster = Cluster::start(&[]).expect("cluster");
        let leader_id = eventually(WAIT, "the three servers agree on a leader", || async {
            let mut leader = None;
            for s in &cluster.servers {
                let st = status(client, s).await?;
                if st.members.iter().filter(|m| m.voter).count() != 3 {
                    return None;
                }
                let l = st.leader?;
                if leader.is_some_and(|x| x != l) {
                    return None;
                }
                leader = Some(l);
            }
            leader
        })
        .await;
        let leader = cluster
            .servers
            .iter()
            .position(|s| s.node_id == leader_id)
            .expect("the leader is one of ours");
        let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
        Mesh {
            cluster,
            leader,
            followers: [others[0], others[1]],
        }
    }

    fn leader(&self) -> &ServerProcess {
        &self.cluster.servers[self.leader]
    }

    fn follower(&self, i: usize) -> &ServerProcess {
        &self.cluster.servers[self.followers[i]]
    }
}

/// One answer: status, `X-Trellis-Index`, JSON body.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    index: u64,
    body: Value,
    content_type: String,
}

async fn send(request: reqwest::RequestBuilder) -> Answer {
    let r = request.send().await.expect("the server answers");
    let status = r.status();
    let index = r
        .headers()
        .get("x-trellis-index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no X-Trellis-Index on a {status} answer"));
    let content_type = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let bytes = r.bytes().await.expect("body");
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        index,
        body,
        content_type,
    }
}

async fn apply(
    client: &reqwest::Client,
    server: &ServerProcess,
    query: &str,
    body: &str,
) -> Answer {
    send(
        client
            .post(server.url(&format!("/v1/apply{query}")))
            .body(body.to_string()),
    )
    .await
}

async fn get(client: &reqwest::Client, server: &ServerProcess, path: &str) -> Answer {
    send(client.get(server.url(path))).await
}

/// Asserts an error answer: the status, JSON `{"error": "..."}`, and returns the message.
fn error_of(a: &Answer, status: StatusCode) -> String {
    assert_eq!(a.status, status, "{a:?}");
    assert!(a.content_type.starts_with("application/json"), "{a:?}");
    a.body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error string in {a:?}"))
        .to_string()
}

/// A document as the mesh reads it. Comparing these compares meaning: the stored form
/// spells out fields left unset (empty lists, zero enums), which read back the same.
fn resource_of(what: &str, doc: &Value) -> trellis_api::Resource {
    let mut docs = trellis_api::parse_documents(what, &doc.to_string())
        .unwrap_or_else(|e| panic!("{what} does not read back: {e}\n{doc}"));
    assert_eq!(docs.len(), 1, "{what}");
    let mut resource = docs.remove(0).resource;
    resource.metadata_mut().resource_version = None;
    resource
}

/// What must survive a round trip: kind, name, namespace, labels and the spec.
fn essence(doc: &Value) -> Value {
    json!({
        "kind": doc["kind"],
        "name": doc["metadata"]["name"],
        "namespace": doc["metadata"].get("namespace").cloned().unwrap_or(json!("default")),
    })
}

fn dataset_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(DATASET)
        .expect("the Istio validation dataset is present")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// `networking-v1beta1-Gateway.yaml` → `v1beta1`.
fn version_of(file: &Path) -> String {
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    name.split('-').nth(1).unwrap_or_default().to_string()
}

const TRELLIS_KINDS: &str = r#"apiVersion: trellis.dev/v1
kind: Service
metadata:
  name: reviews
  labels: {team: books}
spec:
  ports:
  - {name: http, number: 9080, protocol: HTTP}
  labels: {app: reviews}
  serviceAccount: bookinfo-reviews
---
apiVersion: trellis.dev/v1
kind: RateLimit
metadata:
  name: reviews-limit
spec:
  host: reviews
  requestsPerUnit: 100
  unit: MINUTE
"#;

fn documents(source: &str, text: &str) -> Vec<Value> {
    trellis_api::split_documents(source, text)
        .expect("the test's documents are well-formed")
        .into_iter()
        .map(|d| d.value)
        .collect()
}

/// Reads every document back from `server` and compares it with what was applied.
async fn assert_stored(client: &reqwest::Client, server: &ServerProcess, docs: &[Value]) {
    for doc in docs {
        let want = essence(doc);
        let path = format!(
            "/v1/config/{}/{}/{}",
            want["kind"].as_str().unwrap().to_ascii_lowercase(),
            want["namespace"].as_str().unwrap(),
            want["name"].as_str().unwrap()
        );
        let a = get(client, server, &path).await;
        assert_eq!(a.status, StatusCode::OK, "{path}: {a:?}");
        assert_eq!(essence(&a.body), want, "{path}");
        assert_eq!(
            resource_of("stored", &a.body),
            resource_of("applied", doc),
            "{path} did not round-trip; stored: {}",
            a.body
        );
        let rv: u64 = a.body["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{path}: no resourceVersion"));
        assert_eq!(a.index, rv, "{path}: X-Trellis-Index is the last change");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_round_trips_as_yaml_and_json_through_a_follower() {
    let client = http();
    let mesh = Mesh::start(&client).await;
    let writer = mesh.follower(0);
    let reader = mesh.follower(1);

    let mut kinds = BTreeSet::new();
    let mut by_version: std::collections::BTreeMap<String, Vec<PathBuf>> = Default::default();
    for f in dataset_files() {
        by_version.entry(version_of(&f)).or_default().push(f);
    }
    assert_eq!(
        by_version.keys().cloned().collect::<Vec<_>>(),
        ["v1", "v1alpha3", "v1beta1"]
    );
    for (version, files) in &by_version {
        // As YAML, the files exactly as Istio's tests have them, one batch per version.
        let mut yaml: Vec<String> = files
            .iter()
            .map(|f| std::fs::read_to_string(f).expect("read"))
            .collect();
        if version == "v1" {
            yaml.push(TRELLIS_KINDS.to_string());
        }
        let yaml = yaml.join("\n---\n");
        let docs = documents("yaml", &yaml);
        let a = apply(&client, writer, "?source=dataset.yaml", &yaml).await;
        assert_eq!(a.status, StatusCode::OK, "{version} as YAML: {a:?}");
        assert_eq!(a.body["changes"].as_array().unwrap().len(), docs.len());
        assert_eq!(a.index, a.body["revision"].as_u64().unwrap());
        assert_stored(&client, reader, &docs).await;

        // As JSON: the same documents in a namespace of their own.
        let mut json_docs = docs.clone();
        for d in &mut json_docs {
            d["metadata"]["namespace"] = json!(format!("json-{version}"));
        }
        let body = serde_json::to_string(&json_docs).unwrap();
        let a = send(
            client
                .post(writer.url("/v1/apply"))
                .header("content-type", "application/json")
                .body(body),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{version} as JSON: {a:?}");
        for c in a.body["changes"].as_array().unwrap() {
            assert_eq!(c["action"], "created", "{c}");
        }
        assert_stored(&client, reader, &json_docs).await;
        for d in &docs {
            kinds.insert(d["kind"].as_str().unwrap().to_string());
        }
    }
    let all: BTreeSet<String> = trellis_api::Kind::ALL
        .iter()
        .map(|k| k.as_str().to_string())
        .collect();
    assert_eq!(kinds, all, "every kind is covered");

    // Lists: by kind, by namespace, by label.
    let a = get(&client, reader, "/v1/config/virtualservice").await;
    let ns: BTreeSet<String> = a.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["namespace"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        ns,
        ["default", "json-v1", "json-v1alpha3", "json-v1beta1"]
            .map(String::from)
            .into()
    );
    let a = get(&client, reader, "/v1/config/virtualservice/json-v1").await;
    assert_eq!(a.body["items"].as_array().unwrap().len(), 1, "{a:?}");
    let a = get(
        &client,
        reader,
        "/v1/config/service?labelSelector=team%3Dbooks",
    )
    .await;
    assert_eq!(a.body["items"].as_array().unwrap().len(), 2, "{a:?}");
    let a = get(
        &client,
        reader,
        "/v1/config/service?namespace=default&labelSelector=team!%3Dbooks",
    )
    .await;
    assert_eq!(a.body["items"], json!([]), "{a:?}");
}

const BAD_BATCH: &str = r#"apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: good}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bad}
spec:
  hosts: [reviews]
  http:
  - route:
    - destination: {host: reviews, subset: v1}
      weight: 150
    - destination: {host: reviews, subset: v2}
      weight: 10
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews}
spec:
  host: reviews
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_one_bad_document_stores_nothing_and_names_it() {
    let client = http();
    let mesh = Mesh::start(&client).await;
    let before = get(&client, mesh.follower(1), "/v1/config/virtualservice").await;
    let a = apply(&client, mesh.follower(0), "?source=batch.yaml", BAD_BATCH).await;
    let message = error_of(&a, StatusCode::BAD_REQUEST);
    assert!(
        message.contains("batch.yaml[1] VirtualService default/bad: spec.http[0].route"),
        "{message}"
    );
    let errors = a.body["errors"].as_array().expect("errors list");
    assert!(!errors.is_empty());
    for e in errors {
        assert_eq!(
            e["document"], "batch.yaml[1] VirtualService default/bad",
            "{e}"
        );
        assert!(
            e["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("spec.http[0].route")),
            "{e}"
        );
    }
    // Nothing of the batch is there, from any server.
    for s in &mesh.cluster.servers {
        for path in [
            "/v1/config/virtualservice/default/good",
            "/v1/config/destinationrule/default/reviews",
        ] {
            let a = get(&client, s, path).await;
            error_of(&a, StatusCode::NOT_FOUND);
        }
        let a = get(&client, s, "/v1/config/virtualservice").await;
        assert_eq!(a.body["items"], json!([]));
        assert_eq!(a.index, before.index, "no revision was spent");
    }
    // The same batch without the bad document goes in whole.
    let fixed: Vec<&str> = BAD_BATCH.split("---\n").collect();
    let good = format!("{}---\n{}", fixed[0], fixed[2]);
    let a = apply(&client, mesh.follower(0), "", &good).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let actions: Vec<&Value> = a.body["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["action"])
        .collect();
    assert_eq!(actions, [&json!("created"), &json!("created")]);
}

/// A blocking GET run in the background; answers with the time it took.
fn blocking_get(
    client: &reqwest::Client,
    url: String,
) -> tokio::task::JoinHandle<(Answer, Duration)> {
    let client = client.clone();
    tokio::spawn(async move {
        let started = Instant::now();
        let a = send(client.get(url)).await;
        (a, started.elapsed())
    })
}

fn vs(name: &str, host: &str, timeout: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{host}]\n  http:\n  - timeout: {timeout}\n    route:\n    - destination: {{host: {host}}}\n"
    )
}

fn dr(name: &str, host: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: {name}}}\nspec:\n  host: {host}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_query_wakes_on_its_resource_and_not_on_others() {
    let client = http();
    let mesh = Mesh::start(&client).await;
    let (writer, reader) = (mesh.leader(), mesh.follower(0));
    let a = apply(&client, writer, "", &vs("reviews", "reviews", "1s")).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let path = "/v1/config/virtualservice/default/reviews";
    let first = get(&client, reader, path).await;
    assert_eq!(first.status, StatusCode::OK);
    let n = first.index;

    // Changes elsewhere (another name, another kind with the same name, another
    // namespace) do not wake it: it answers when the wait is over, index unchanged.
    let waiting = blocking_get(&client, reader.url(&format!("{path}?index={n}&wait=2s")));
    for body in [
        vs("reviews-2", "reviews", "2s"),
        dr("reviews", "reviews"),
        vs("reviews", "reviews", "3s")
            .replace("name: reviews}", "name: reviews, namespace: other}"),
    ] {
        let a = apply(&client, writer, "", &body).await;
        assert_eq!(a.status, StatusCode::OK, "{a:?}");
        assert!(a.index > n);
    }
    let (a, took) = waiting.await.expect("task");
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.index, n, "only this resource's changes move its index");
    assert_eq!(a.body, first.body);
    assert!(
        took >= Duration::from_secs(2),
        "answered after {took:?}, before the wait was over"
    );

    // A change to it wakes it. The wait is longer than the client's own timeout, so
    // only the change can make it answer in time.
    let waiting = blocking_get(&client, reader.url(&format!("{path}?index={n}&wait=300s")));
    let a = apply(
        &client,
        mesh.follower(1),
        "",
        &vs("reviews", "reviews", "5s"),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let (woke, _) = waiting.await.expect("task");
    assert_eq!(woke.status, StatusCode::OK, "{woke:?}");
    assert!(woke.index > n, "{woke:?}");
    assert_eq!(woke.body["spec"]["http"][0]["timeout"], "5s");

    // Lists block the same way, per namespace.
    let list = get(&client, reader, "/v1/config/virtualservice/default").await;
    let waiting = blocking_get(
        &client,
        reader.url(&format!(
            "/v1/config/virtualservice/default?index={}&wait=2s",
            list.index
        )),
    );
    let a = apply(
        &client,
        writer,
        "",
        &vs("elsewhere", "x", "1s")
            .replace("name: elsewhere}", "name: elsewhere, namespace: other}"),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let (a, took) = waiting.await.expect("task");
    assert_eq!(a.body, list.body);
    assert!(
        took >= Duration::from_secs(2),
        "woke after {took:?} on another namespace"
    );
    let waiting = blocking_get(
        &client,
        reader.url(&format!(
            "/v1/config/virtualservice/default?index={}&wait=300s",
            a.index
        )),
    );
    let b = apply(&client, writer, "", &vs("ratings", "ratings", "1s")).await;
    assert_eq!(b.status, StatusCode::OK, "{b:?}");
    let (woke, _) = waiting.await.expect("task");
    assert_eq!(woke.body["items"].as_array().unwrap().len(), 3, "{woke:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_refuses_stale_and_missing_revisions() {
    let client = http();
    let mesh = Mesh::start(&client).await;
    let s = mesh.follower(0);
    let path = "/v1/config/virtualservice/default/cas";
    let put =
        |query: &str, body: String| send(client.put(s.url(&format!("{path}{query}"))).body(body));
    // 412: a revision of something that does not exist.
    let msg = error_of(
        &put("?cas=7", vs("cas", "cas", "1s")).await,
        StatusCode::PRECONDITION_FAILED,
    );
    assert!(msg.contains("does not exist"), "{msg}");
    error_of(&get(&client, s, path).await, StatusCode::NOT_FOUND);
    // cas=0: create only if absent.
    let created = put("?cas=0", vs("cas", "cas", "1s")).await;
    assert_eq!(created.status, StatusCode::OK, "{created:?}");
    assert_eq!(created.body["changes"][0]["action"], "created");
    let r1 = get(&client, s, path).await.index;
    error_of(
        &put("?cas=0", vs("cas", "cas", "2s")).await,
        StatusCode::CONFLICT,
    );
    let updated = put(&format!("?cas={r1}"), vs("cas", "cas", "2s")).await;
    assert_eq!(updated.status, StatusCode::OK, "{updated:?}");
    let r2 = get(&client, mesh.follower(1), path).await.index;
    assert!(r2 > r1);
    // 409: the revision read before the last change.
    let msg = error_of(
        &put(&format!("?cas={r1}"), vs("cas", "cas", "3s")).await,
        StatusCode::CONFLICT,
    );
    assert!(msg.contains(&format!("at revision {r2}")), "{msg}");
    let a = apply(&client, s, &format!("?cas={r1}"), &vs("cas", "cas", "3s")).await;
    error_of(&a, StatusCode::CONFLICT);
    let now = get(&client, s, path).await;
    assert_eq!(
        now.body["spec"]["http"][0]["timeout"], "2s",
        "refused writes left it alone"
    );
    // Deletes take cas too.
    error_of(
        &send(client.delete(s.url(&format!("{path}?cas={r1}")))).await,
        StatusCode::CONFLICT,
    );
    let a = send(client.delete(s.url(&format!("{path}?cas={r2}")))).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.body["changes"][0]["action"], "deleted");
    error_of(
        &send(client.delete(s.url(&format!("{path}?cas={r2}")))).await,
        StatusCode::PRECONDITION_FAILED,
    );
    error_of(
        &send(client.delete(s.url(path))).await,
        StatusCode::NOT_FOUND,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_answers_what_would_change_and_writes_nothing() {
    let client = http();
    let mesh = Mesh::start(&client).await;
    let s = mesh.follower(0);
    let batch = format!("{}---\n{}", vs("a", "a", "1s"), dr("a", "a"));
    let before = get(&client, s, "/v1/config/virtualservice").await.index;
    let a = apply(&client, s, "?dry-run=true", &batch).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    assert_eq!(a.body["dry_run"], true);
    for c in a.body["changes"].as_array().unwrap() {
        assert_eq!(c["action"], "created", "{c}");
        assert!(c.get("before").is_none());
        assert_eq!(c["after"]["metadata"]["name"], "a");
    }
    error_of(
        &get(&client, s, "/v1/config/virtualservice/default/a").await,
        StatusCode::NOT_FOUND,
    );
    assert_eq!(
        get(&client, s, "/v1/config/destinationrule").await.index,
        before
    );

    let a = apply(&client, s, "", &batch).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let written = a.index;
    // One changed, one not.
    let batch2 = format!("{}---\n{}", vs("a", "a", "9s"), dr("a", "a"));
    let a = apply(&client, s, "?dry-run=true", &batch2).await;
    assert_eq!(a.status, StatusCode::OK, "{a:?}");
    let changes = a.body["changes"].as_array().unwrap();
    assert_eq!(changes[0]["action"], "updated");
    assert_eq!(changes[0]["before"]["spec"]["http"][0]["timeout"], "1s");
    assert_eq!(changes[0]["after"]["spec"]["http"][0]["timeout"], "9s");
    assert_eq!(changes[1]["action"], "unchanged");
    let dry_delete =
        send(client.delete(s.url("/v1/config/virtualservice/default/a?dry-run=true"))).await;
    assert_eq!(dry_delete.body["changes"][0]["action"], "deleted");
    assert_eq!(
        dry_delete.body["changes"][0]["before"]["spec"]["http"][0]["timeout"],
        "1s"
    );
    let dry_delete = send(
        client
            .post(s.url("/v1/delete?dry-run"))
            .body(batch2.clone()),
    )
    .await;
    assert_eq!(dry_delete.status, StatusCode::OK, "{dry_delete:?}");
    assert_eq!(dry_delete.body["changes"].as_array().unwrap().len(), 2);
    for server in &mesh.cluster.servers {
        let a = get(&client, server, "/v1/config/virtualservice/default/a").await;
        assert_eq!(a.index, written, "nothing written since");
        assert_eq!(a.body["spec"]["http"][0]["timeout"], "1s");
        assert_eq!(
            get(&client, server, "/v1/config/destinationrule/default/a")
                .await
                .status,
            StatusCode::OK
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_json_with_fitting_statuses_and_openapi_lists_what_answers() {
    let client = http();
    let mesh = Mesh::start(&client).await;
    let s = mesh.follower(0);
    // 400s: a malformed query, bad YAML, a PUT whose document names something else.
    for (what, a) in [
        (
            "cas not a number",
            send(
                client
                    .put(s.url("/v1/config/virtualservice/default/x?cas=abc"))
                    .body(vs("x", "x", "1s")),
            )
            .await,
        ),
        (
            "unknown query parameter",
            get(&client, s, "/v1/config/virtualservice?colour=red").await,
        ),
        (
            "bad wait",
            get(
                &client,
                s,
                "/v1/config/virtualservice/default/x?index=1&wait=forever",
            )
            .await,
        ),
        (
            "bad selector",
            get(&client, s, "/v1/config/virtualservice?labelSelector=%3Dx").await,
        ),
        ("not YAML", apply(&client, s, "", "kind: [unclosed").await),
        ("empty body", apply(&client, s, "", "").await),
        (
            "path and document differ",
            send(
                client
                    .put(s.url("/v1/config/virtualservice/default/y"))
                    .body(vs("x", "x", "1s")),
            )
            .await,
        ),
        (
            "a resource twice",
            apply(
                &client,
                s,
                "",
                &format!("{}---\n{}", vs("x", "x", "1s"), vs("x", "x", "2s")),
            )
            .await,
        ),
    ] {
        let msg = error_of(&a, StatusCode::BAD_REQUEST);
        assert!(!msg.is_empty(), "{what}");
    }
    // 404s: no such resource, kind or endpoint; 405 on a known path.
    for path in [
        "/v1/config/virtualservice/default/nope",
        "/v1/config/nokind",
        "/v1/nowhere",
        "/v1/kv/missing",
    ] {
        error_of(&get(&client, s, path).await, StatusCode::NOT_FOUND);
    }
    let msg = error_of(
        &send(client.post(s.url("/v1/config/virtualservice"))).await,
        StatusCode::METHOD_NOT_ALLOWED,
    );
    assert!(msg.contains("POST /v1/config/virtualservice"), "{msg}");

    // Every documented operation reaches a handler: not the 404 fallback, not a 405.
    let doc = get(&client, s, "/v1/openapi.json").await;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(doc.body["openapi"], "3.0.3");
    let mut operations = 0;
    for (path, ops) in doc.body["paths"].as_object().unwrap() {
        let concrete = path
            .replace("{kind}", "virtualservice")
            .replace("{namespace}", "default")
            .replace("{name}", "openapi-probe")
            .replace("{key}", "openapi/probe");
        for (method, op) in ops.as_object().unwrap() {
            assert!(
                op["summary"].is_string() && op["responses"]["200"].is_object(),
                "{method} {path}"
            );
            let method =
                reqwest::Method::from_bytes(method.to_ascii_uppercase().as_bytes()).unwrap();
            let mut request = client.request(method.clone(), s.url(&concrete));
            if op.get("requestBody").is_some() {
                request = request.body(vs("openapi-probe", "p", "1s"));
            }
            let a = send(request).await;
            assert_ne!(
                a.status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {path}: {a:?}"
            );
            assert!(
                !(a.status == StatusCode::NOT_FOUND && a.body["error"] == "no such endpoint"),
                "{method} {path} is documented but not served"
            );
            operations += 1;
        }
    }
    assert!(operations >= 17, "{operations} operations documented");
}

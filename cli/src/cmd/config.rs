//! `trellis apply | get | delete | validate | describe`: mesh resources, the way
//! kubectl handles them.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use reqwest::Method;
use serde_json::Value;
use trellis_api::{Kind, parse_documents};

use crate::admin_client::AdminClient;

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Yaml,
    Json,
}

#[derive(Args, Debug)]
pub struct FileArgs {
    /// A file, a directory (read recursively) or - for standard input; repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub files: FileArgs,
    /// Show what would change, write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// A kind: virtualservice, vs, destinationrules, dr, gateway, serviceentry, ...
    pub kind: String,
    pub name: Option<String>,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct DeleteArgs {
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<String>,
    pub kind: Option<String>,
    pub name: Option<String>,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
}

#[derive(Args, Debug)]
pub struct DescribeArgs {
    /// `service` or `node`.
    pub what: String,
    pub name: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
}

/// Kind names as kubectl users type them: any case, plural, or Istio's short names.
pub fn kind_named(name: &str) -> anyhow::Result<Kind> {
    let short = match name.to_ascii_lowercase().as_str() {
        "vs" => "VirtualService",
        "dr" => "DestinationRule",
        "gw" => "Gateway",
        "se" => "ServiceEntry",
        "we" => "WorkloadEntry",
        "wg" => "WorkloadGroup",
        "pa" => "PeerAuthentication",
        "ap" => "AuthorizationPolicy",
        "ra" => "RequestAuthentication",
        "svc" => "Service",
        _ => name,
    };
    if let Ok(k) = Kind::from_str(short) {
        return Ok(k);
    }
    if let Some(singular) = short
        .strip_suffix("ies")
        .map(|s| format!("{s}y"))
        .or_else(|| short.strip_suffix('s').map(str::to_string))
        && let Ok(k) = Kind::from_str(&singular)
    {
        return Ok(k);
    }
    let known: Vec<String> = Kind::ALL.iter().map(|k| k.store_name()).collect();
    bail!("'{name}' is not a mesh kind; one of {}", known.join(", "))
}

/// Every (name, text) the -f arguments point at, directories read recursively.
fn read_sources(args: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    for arg in args {
        if arg == "-" {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("reading standard input")?;
            out.push(("<stdin>".to_string(), text));
            continue;
        }
        let path = PathBuf::from(arg);
        if path.is_dir() {
            let mut files = Vec::new();
            collect(&path, &mut files)?;
            files.sort();
            if files.is_empty() {
                bail!("{arg}: no .yaml, .yml or .json files in this directory");
            }
            for f in files {
                let text = std::fs::read_to_string(&f)
                    .with_context(|| format!("{}: cannot be read", f.display()))?;
                out.push((f.display().to_string(), text));
            }
        } else {
            let text =
                std::fs::read_to_string(&path).with_context(|| format!("{arg}: cannot be read"))?;
            out.push((arg.clone(), text));
        }
    }
    Ok(out)
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("{}: cannot be read", dir.display()))?
    {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, files)?;
        } else if matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        ) {
            files.push(path);
        }
    }
    Ok(())
}

/// Checks every source offline; prints every error and warning. True when all are valid.
fn check_offline(sources: &[(String, String)]) -> bool {
    let mut ok = true;
    for (name, text) in sources {
        match parse_documents(name, text) {
            Ok(docs) => {
                for doc in docs {
                    for w in &doc.warnings {
                        eprintln!("warning: {}: {w}", doc.id);
                    }
                }
            }
            Err(errors) => {
                ok = false;
                for e in errors.iter() {
                    eprintln!("error: {e}");
                }
            }
        }
    }
    ok
}

pub async fn validate(args: FileArgs) -> anyhow::Result<()> {
    let sources = read_sources(&args.files)?;
    if !check_offline(&sources) {
        bail!("validation failed; nothing was applied");
    }
    let count: usize = sources
        .iter()
        .map(|(n, t)| parse_documents(n, t).map(|d| d.len()).unwrap_or(0))
        .sum();
    println!("{count} documents valid");
    Ok(())
}

fn print_changes(answer: &Value, dry_run: bool) {
    let suffix = if dry_run { " (dry run)" } else { "" };
    for change in answer
        .get("changes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let field = |k: &str| {
            change
                .get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string()
        };
        println!(
            "{} {}/{} {}{suffix}",
            field("kind"),
            field("namespace"),
            field("name"),
            field("action")
        );
        if dry_run && field("action") != "unchanged" {
            let before = change.get("before").map(to_yaml).unwrap_or_default();
            let after = change.get("after").map(to_yaml).unwrap_or_default();
            for line in diff_lines(&before, &after) {
                println!("  {line}");
            }
        }
        for w in change
            .get("warnings")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            eprintln!(
                "warning: {} {}/{}: {}",
                field("kind"),
                field("namespace"),
                field("name"),
                w.as_str().unwrap_or_default()
            );
        }
    }
}

/// A plain line diff: lines only in `before` with `-`, only in `after` with `+`.
fn diff_lines(before: &str, after: &str) -> Vec<String> {
    let old: Vec<&str> = before.lines().collect();
    let new: Vec<&str> = after.lines().collect();
    let mut out: Vec<String> = old
        .iter()
        .filter(|l| !new.contains(l))
        .map(|l| format!("- {l}"))
        .collect();
    out.extend(
        new.iter()
            .filter(|l| !old.contains(l))
            .map(|l| format!("+ {l}")),
    );
    out
}

fn to_yaml(v: &Value) -> String {
    if v.is_null() {
        return String::new();
    }
    serde_norway::to_string(v).unwrap_or_else(|_| v.to_string())
}

/// A resource named by two files would be written twice in one apply, the second
/// silently winning; refuse it before anything is sent.
fn check_duplicates(sources: &[(String, String)]) -> bool {
    let mut seen: std::collections::BTreeMap<String, String> = Default::default();
    let mut ok = true;
    for (name, text) in sources {
        for doc in parse_documents(name, text).into_iter().flatten() {
            if let Some(first) = seen.insert(doc.resource.store_key(), doc.id.to_string()) {
                eprintln!(
                    "error: {}: the same resource as {first}; an apply names each resource once",
                    doc.id
                );
                ok = false;
            }
        }
    }
    ok
}

pub async fn apply(client: &AdminClient, args: ApplyArgs) -> anyhow::Result<()> {
    let sources = read_sources(&args.files.files)?;
    // Every file is checked before any is sent: a bad file leaves the mesh unchanged.
    // Each file is then one atomic batch on the server.
    if !check_offline(&sources) || !check_duplicates(&sources) {
        bail!("validation failed; nothing was applied");
    }
    for (name, text) in sources {
        let mut query = vec![("source", name.clone())];
        if args.dry_run {
            query.push(("dry-run", "true".into()));
        }
        let answer = client
            .request(Method::POST, "/v1/apply", &query, Some(text.into_bytes()))
            .await
            .map_err(explain)?;
        print_changes(&answer, args.dry_run);
    }
    Ok(())
}

/// Prints a refusal's per-document errors in field-path form.
fn explain(e: anyhow::Error) -> anyhow::Error {
    if let Some(r) = e.downcast_ref::<crate::admin_client::Refusal>()
        && let Some(errors) = r.body.get("errors").and_then(Value::as_array)
    {
        for err in errors {
            let doc = err
                .get("document")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let msg = err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or_default();
            eprintln!("error: {doc}: {msg}");
        }
        return anyhow::anyhow!("the server refused the documents; nothing was applied");
    }
    e
}

pub async fn get(client: &AdminClient, args: GetArgs) -> anyhow::Result<()> {
    if matches!(
        args.kind.to_ascii_lowercase().as_str(),
        "node" | "nodes" | "no"
    ) {
        return super::nodes::get(client, args.name.as_deref(), args.output).await;
    }
    let kind = kind_named(&args.kind)?;
    let store = kind.store_name();
    let items: Vec<Value> = match &args.name {
        Some(name) => {
            let path = format!("/v1/config/{store}/{}/{name}", args.namespace);
            vec![client.request(Method::GET, &path, &[], None).await?]
        }
        None => {
            let mut query = Vec::new();
            if !args.all_namespaces {
                query.push(("namespace", args.namespace.clone()));
            }
            if let Some(sel) = &args.selector {
                query.push(("labelSelector", sel.clone()));
            }
            let answer = client
                .request(Method::GET, &format!("/v1/config/{store}"), &query, None)
                .await?;
            answer
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        }
    };
    match args.output {
        Output::Json => {
            if args.name.is_some() && items.len() == 1 {
                println!("{}", serde_json::to_string_pretty(&items[0])?);
            } else {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({ "items": items }))?
                );
            }
        }
        Output::Yaml => {
            let docs: Vec<String> = items.iter().map(to_yaml).collect();
            print!("{}", docs.join("---\n"));
        }
        Output::Table => {
            if items.is_empty() {
                eprintln!("No resources found.");
                return Ok(());
            }
            let mut rows = vec![vec![
                "NAMESPACE".to_string(),
                "NAME".into(),
                "REVISION".into(),
                "LABELS".into(),
            ]];
            for item in &items {
                let meta = item.get("metadata");
                let s = |k: &str| {
                    meta.and_then(|m| m.get(k))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                let labels = labels_text(meta.and_then(|m| m.get("labels")));
                rows.push(vec![
                    s("namespace"),
                    s("name"),
                    s("resourceVersion"),
                    labels,
                ]);
            }
            print_rows(&rows);
        }
    }
    Ok(())
}

/// Labels as kubectl shows them: `app=reviews,version=v1`.
fn labels_text(labels: Option<&Value>) -> String {
    labels
        .and_then(Value::as_object)
        .map(|l| {
            l.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

pub fn print_rows(rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, String::len))
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
}

pub async fn delete(client: &AdminClient, args: DeleteArgs) -> anyhow::Result<()> {
    if !args.files.is_empty() {
        if args.kind.is_some() {
            bail!("give either -f FILE or KIND NAME, not both");
        }
        for (name, text) in read_sources(&args.files)? {
            let answer = client
                .request(
                    Method::POST,
                    "/v1/delete",
                    &[("source", name)],
                    Some(text.into_bytes()),
                )
                .await
                .map_err(explain)?;
            print_changes(&answer, false);
        }
        return Ok(());
    }
    let (Some(kind), Some(name)) = (&args.kind, &args.name) else {
        bail!("give -f FILE, or KIND NAME");
    };
    let kind = kind_named(kind)?;
    let path = format!("/v1/config/{}/{}/{name}", kind.store_name(), args.namespace);
    let answer = client.request(Method::DELETE, &path, &[], None).await?;
    print_changes(&answer, false);
    Ok(())
}

pub async fn describe(client: &AdminClient, args: DescribeArgs) -> anyhow::Result<()> {
    if matches!(args.what.as_str(), "node" | "nodes" | "no") {
        return super::nodes::describe(client, &args.name).await;
    }
    if !matches!(args.what.as_str(), "service" | "services" | "svc") {
        bail!(
            "describe: '{}' is not something Trellis describes; try: trellis describe service NAME, or node NAME",
            args.what
        );
    }
    let ns = &args.namespace;
    // Agents register endpoints without any Service resource; either makes a service.
    let declared = client
        .request(
            Method::GET,
            &format!("/v1/config/service/{ns}/{}", args.name),
            &[],
            None,
        )
        .await;
    let registered = client
        .request(
            Method::GET,
            &format!("/v1/health/service/{}", args.name),
            &[("namespace", ns.clone())],
            None,
        )
        .await?
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let service = match declared {
        Ok(s) => s,
        Err(_) if !registered.is_empty() => Value::Null,
        Err(e) => return Err(e).with_context(|| format!("service {ns}/{}", args.name)),
    };
    println!("Service: {ns}/{}", args.name);
    let spec = service.get("spec").cloned().unwrap_or(Value::Null);
    for port in spec
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        println!(
            "  port {} {} {}",
            port.get("number").and_then(Value::as_u64).unwrap_or(0),
            port.get("name").and_then(Value::as_str).unwrap_or_default(),
            port.get("protocol")
                .and_then(Value::as_str)
                .unwrap_or_default()
        );
    }
    let selector: serde_json::Map<String, Value> = spec
        .get("labels")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let hosts = [
        args.name.clone(),
        format!("{}.{ns}", args.name),
        format!("{}.{ns}.svc.cluster.local", args.name),
        format!("{}.{ns}.mesh", args.name),
    ];
    // A short name means a service of the resource's own namespace; the longer forms
    // name this service from anywhere.
    let host_matches = |h: &str, item_ns: &str| {
        if h == args.name || h == "*" {
            item_ns == ns.as_str()
        } else {
            hosts[1..].iter().any(|x| x == h)
        }
    };
    let labels_match = |labels: &serde_json::Map<String, Value>| {
        !selector.is_empty() && selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    };

    println!("Endpoints:");
    let mut any = false;
    for ep in &registered {
        any = true;
        let text = |k: &str| match ep.get(k) {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        };
        let labels = labels_text(ep.get("labels"));
        println!(
            "  {}  {}:{}  {}  {labels}",
            text("node"),
            text("address"),
            text("port"),
            text("health")
        );
    }
    let entries = list(client, "workloadentry", Some(ns)).await?;
    for we in &entries {
        let labels = we
            .pointer("/spec/labels")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        if labels_match(&labels) {
            any = true;
            println!(
                "  {}  {}",
                we.pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
                we.pointer("/spec/address")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
            );
        }
    }
    if !any {
        println!("  (none)");
    }

    println!("Applies to it:");
    let mut applied = Vec::new();
    for kind in ["virtualservice", "destinationrule", "ratelimit"] {
        for item in list(client, kind, None).await? {
            let item_ns = item
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            let hosts_of: Vec<String> = match kind {
                "virtualservice" => item
                    .pointer("/spec/hosts")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|h| h.as_str().map(str::to_string))
                    .collect(),
                _ => item
                    .pointer("/spec/host")
                    .and_then(Value::as_str)
                    .map(|h| vec![h.to_string()])
                    .unwrap_or_default(),
            };
            if hosts_of.iter().any(|h| host_matches(h, &item_ns)) {
                applied.push(format!(
                    "{kind}/{item_ns}/{}",
                    item.pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                ));
            }
        }
    }
    for kind in [
        "authorizationpolicy",
        "peerauthentication",
        "requestauthentication",
        "sidecar",
    ] {
        for item in list(client, kind, Some(ns)).await? {
            let labels = item
                .pointer("/spec/selector/matchLabels")
                .or_else(|| item.pointer("/spec/workloadSelector/labels"))
                .and_then(Value::as_object)
                .cloned();
            // No selector: it applies to every workload of the namespace.
            if labels.as_ref().is_none_or(&labels_match) {
                applied.push(format!(
                    "{kind}/{ns}/{}",
                    item.pointer("/metadata/name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                ));
            }
        }
    }
    if applied.is_empty() {
        println!("  (nothing)");
    }
    for a in applied {
        println!("  {a}");
    }
    Ok(())
}

/// One kind, in one namespace or (`None`) in all.
async fn list(client: &AdminClient, kind: &str, ns: Option<&str>) -> anyhow::Result<Vec<Value>> {
    let query: Vec<(&str, String)> = ns
        .map(|n| ("namespace", n.to_string()))
        .into_iter()
        .collect();
    let answer = client
        .request(Method::GET, &format!("/v1/config/{kind}"), &query, None)
        .await?;
    Ok(answer
        .get("items")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default())
}

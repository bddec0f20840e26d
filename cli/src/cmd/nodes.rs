//! `trellis get nodes` and `trellis describe node NAME`.

use anyhow::Context;
use reqwest::Method;
use serde_json::Value;

use super::config::{Output, print_rows};
use crate::admin_client::AdminClient;

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ => String::new(),
    }
}

fn ago(secs: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if secs == 0 {
        return String::new();
    }
    format!("{}s ago", now.saturating_sub(secs))
}

pub async fn get(client: &AdminClient, name: Option<&str>, output: Output) -> anyhow::Result<()> {
    let items: Vec<Value> = match name {
        Some(n) => {
            let one = client
                .request(Method::GET, &format!("/v1/nodes/{n}"), &[], None)
                .await?;
            vec![one.get("node").cloned().unwrap_or(Value::Null)]
        }
        None => client
            .request(Method::GET, "/v1/nodes", &[], None)
            .await?
            .get("items")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default(),
    };
    match output {
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "items": items }))?
        ),
        Output::Yaml => print!(
            "{}",
            serde_norway::to_string(&serde_json::json!({ "items": items }))?
        ),
        Output::Table => {
            if items.is_empty() {
                eprintln!("No nodes found.");
                return Ok(());
            }
            let mut rows = vec![vec![
                "NAME".to_string(),
                "ADDRESS".into(),
                "CONNECTED".into(),
                "SERVER".into(),
                "APPLIED".into(),
                "SENT".into(),
                "LAST NACK".into(),
            ]];
            for n in &items {
                let nack = n
                    .get("lastNack")
                    .map(|x| {
                        format!(
                            "{} ({})",
                            text(x, "version"),
                            ago(x.get("at").and_then(Value::as_u64).unwrap_or(0))
                        )
                    })
                    .unwrap_or_default();
                rows.push(vec![
                    text(n, "name"),
                    text(n, "address"),
                    text(n, "connected"),
                    text(n, "server"),
                    text(n, "appliedVersion"),
                    text(n, "sentVersion"),
                    nack,
                ]);
            }
            print_rows(&rows);
        }
    }
    Ok(())
}

pub async fn describe(client: &AdminClient, name: &str) -> anyhow::Result<()> {
    let answer = client
        .request(Method::GET, &format!("/v1/nodes/{name}"), &[], None)
        .await
        .with_context(|| format!("node {name}"))?;
    let node = answer.get("node").cloned().unwrap_or(Value::Null);
    println!("Node:             {}", text(&node, "name"));
    println!("Address:          {}", text(&node, "address"));
    let connected = node
        .get("connected")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if connected {
        println!("Connected to:     {}", text(&node, "server"));
    } else {
        println!(
            "Connected to:     nobody (last seen {})",
            ago(node.get("lastSeen").and_then(Value::as_u64).unwrap_or(0))
        );
    }
    println!("Agent version:    {}", text(&node, "agentVersion"));
    println!("Config sent:      {}", text(&node, "sentVersion"));
    println!("Config applied:   {}", text(&node, "appliedVersion"));
    match node.get("lastNack") {
        Some(n) => {
            println!(
                "Last refused:     version {} ({})",
                text(n, "version"),
                ago(n.get("at").and_then(Value::as_u64).unwrap_or(0))
            );
            println!("  reason: {}", text(n, "reason"));
        }
        None => println!("Last refused:     none"),
    }
    println!("Workloads:");
    let workloads = answer
        .get("workloads")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if workloads.is_empty() {
        println!("  none");
    }
    for w in &workloads {
        let mut line = format!(
            "  {}/{}  {}:{}  {}",
            text(w, "namespace"),
            text(w, "service"),
            text(w, "address"),
            text(w, "port"),
            text(w, "health")
        );
        let out = text(w, "healthOutput");
        if !out.is_empty() {
            line.push_str(&format!("  ({out})"));
        }
        println!("{line}");
    }
    Ok(())
}

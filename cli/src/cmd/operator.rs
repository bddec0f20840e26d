//! `trellis operator raft ...`, as `consul operator raft` works.

use anyhow::bail;
use clap::{Subcommand, ValueEnum};
use reqwest::Method;
use serde::Deserialize;

use crate::admin_client::AdminClient;

#[derive(Subcommand, Debug)]
pub enum OperatorCommand {
    /// Raft membership of the server cluster.
    Raft {
        #[command(subcommand)]
        command: RaftCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum RaftCommand {
    /// List the servers: id, address, leader or follower, voter, last log index.
    ListPeers {
        #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Remove a server from the cluster, by id or by address.
    RemovePeer {
        #[arg(long, conflicts_with = "address", required_unless_present = "address")]
        id: Option<u64>,
        #[arg(long)]
        address: Option<String>,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
}

#[derive(Deserialize, serde::Serialize)]
struct Member {
    id: u64,
    address: String,
    voter: bool,
    leader: bool,
    last_index: Option<u64>,
}

#[derive(Deserialize)]
struct Status {
    members: Vec<Member>,
}

pub async fn run(client: &AdminClient, command: OperatorCommand) -> anyhow::Result<()> {
    match command {
        OperatorCommand::Raft {
            command: RaftCommand::ListPeers { output },
        } => {
            let status: Status = client
                .call(Method::GET, "/v1/operator/raft/configuration", &[])
                .await?;
            match output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&status.members)?),
                Output::Table => print_table(&status.members),
            }
        }
        OperatorCommand::Raft {
            command: RaftCommand::RemovePeer { id, address },
        } => {
            let query = match (id, address) {
                (Some(id), None) => vec![("id", id.to_string())],
                (None, Some(a)) => vec![("address", a)],
                _ => bail!("give --id or --address"),
            };
            client
                .request(Method::DELETE, "/v1/operator/raft/peer", &query, None)
                .await?;
            println!("removed {}", query[0].1);
        }
    }
    Ok(())
}

fn print_table(members: &[Member]) {
    let rows: Vec<[String; 5]> = members
        .iter()
        .map(|m| {
            [
                m.id.to_string(),
                m.address.clone(),
                if m.leader { "leader" } else { "follower" }.to_string(),
                m.voter.to_string(),
                m.last_index
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let header = ["ID", "Address", "State", "Voter", "Last Index"];
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: [&str; 5]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(header);
    for row in &rows {
        line([&row[0], &row[1], &row[2], &row[3], &row[4]]);
    }
}

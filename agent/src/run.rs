//! A running agent: health checks, the stream to the servers, the proxy it feeds, and the
//! on-disk copy of the last config the proxy accepted.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use trellis_api::discovery::{Health, Held, Push, Registration, Workload};
use trellis_proxy::ProxyHandle;
use trellis_proxy::config::file::NodeConfig;

use crate::config::{AgentConfig, LocalService};
use crate::error::AgentError;
use crate::health::{self, HealthChecks, HealthReport, Status};
use crate::session::{self, SessionSettings};
use crate::view::View;

/// Everything `trellis agent` is started with.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    pub config: AgentConfig,
    /// The node's name in the mesh.
    pub node: String,
    /// gRPC addresses of servers (`host:port`), tried in turn.
    pub servers: Vec<String>,
    pub data_dir: PathBuf,
    pub session: SessionSettings,
    /// Where standalone proxies of this node (`trellis proxy --agent`) get their config.
    pub sidecar_addr: Option<String>,
    /// A standalone proxy fed by an agent: it registers nothing and says so.
    pub proxy_only: bool,
    /// Who the proxy is (default: the node's name, the first service's namespace).
    pub proxy_node: Option<NodeConfig>,
}

impl AgentOptions {
    pub fn new(config: AgentConfig, node: String, servers: Vec<String>, data_dir: PathBuf) -> Self {
        AgentOptions {
            config,
            node,
            servers,
            data_dir,
            session: SessionSettings::default(),
            sidecar_addr: None,
            proxy_only: false,
            proxy_node: None,
        }
    }
}

/// What the agent shows of itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentState {
    /// The version the proxy runs ("" before the first config).
    pub applied_version: String,
    /// The server the stream is on.
    pub server: Option<String>,
    /// The reason the last push was refused, if the last push was refused.
    pub last_nack: Option<String>,
}

pub struct Shared {
    pub node: NodeConfig,
    pub servers: Vec<String>,
    pub settings: SessionSettings,
    config: AgentConfig,
    address: String,
    /// What the servers sent, applied push by push (also what the agent says it holds).
    view: Mutex<View>,
    cache_path: PathBuf,
    proxy: tokio::sync::Mutex<Option<ProxyHandle>>,
    state: watch::Sender<AgentState>,
    /// The view as received, for the node's sidecars.
    received: watch::Sender<Arc<View>>,
    pub proxy_only: bool,
}

pub struct RunningAgent {
    shared: Arc<Shared>,
    state: watch::Receiver<AgentState>,
    stop: watch::Sender<bool>,
    session: JoinHandle<()>,
    sidecar_addr: Option<std::net::SocketAddr>,
    _checks: HealthChecks,
}

const CACHE_FILE: &str = "view.json";

impl RunningAgent {
    /// Starts the agent. With a cached view from an earlier run, the proxy starts from it
    /// before any server is reached (static stability).
    pub async fn start(options: AgentOptions) -> Result<RunningAgent, AgentError> {
        std::fs::create_dir_all(&options.data_dir).map_err(|source| AgentError::DataDir {
            path: options.data_dir.clone(),
            source,
        })?;
        let cache_path = options.data_dir.join(CACHE_FILE);
        let namespace = options
            .config
            .services
            .first()
            .map_or_else(|| "default".to_owned(), |s| s.namespace.clone());
        let node = options.proxy_node.clone().unwrap_or_else(|| NodeConfig {
            name: options.node.clone(),
            namespace,
            locality: options.config.locality.clone(),
            labels: Default::default(),
        });
        let (state_tx, state) = watch::channel(AgentState::default());
        let shared = Arc::new(Shared {
            node,
            servers: options.servers.clone(),
            settings: options.session,
            address: options
                .config
                .address
                .clone()
                .unwrap_or_else(|| "127.0.0.1".to_owned()),
            config: options.config.clone(),
            view: Mutex::new(View::default()),
            cache_path: cache_path.clone(),
            proxy: tokio::sync::Mutex::new(None),
            state: state_tx,
            received: watch::channel(Arc::new(View::default())).0,
            proxy_only: options.proxy_only,
        });
        match View::load(&cache_path) {
            Ok(Some(cached)) => match shared.install(&cached).await {
                Ok(()) => {
                    tracing::info!(version = %cached.version, "proxy started from the cached config");
                    shared.received.send_replace(Arc::new(cached.clone()));
                    *shared.view.lock().unwrap_or_else(|p| p.into_inner()) = cached;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the cached config does not compile; waiting for the servers")
                }
            },
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "ignoring the cached config"),
        }
        let (health, checks) = health::spawn_checks(&options.config.services);
        let (stop, stopped) = watch::channel(false);
        let sidecar_addr = match &options.sidecar_addr {
            None => None,
            Some(addr) => {
                let bind = |source| AgentError::Bind {
                    addr: addr.clone(),
                    source,
                };
                let listener = tokio::net::TcpListener::bind(addr).await.map_err(bind)?;
                Some(
                    crate::sidecar::serve(listener, shared.received.subscribe(), stopped.clone())
                        .map_err(bind)?,
                )
            }
        };
        let session = tokio::spawn(session::run(shared.clone(), health, stopped));
        Ok(RunningAgent {
            shared,
            state,
            stop,
            session,
            sidecar_addr,
            _checks: checks,
        })
    }

    /// Where sidecars connect, when the agent serves them.
    pub fn sidecar_addr(&self) -> Option<std::net::SocketAddr> {
        self.sidecar_addr
    }

    pub fn state(&self) -> watch::Receiver<AgentState> {
        self.state.clone()
    }

    /// Waits until the proxy runs some config (cached or pushed).
    pub async fn wait_applied(&self, within: Duration) -> Result<String, AgentError> {
        let mut s = self.state.clone();
        match tokio::time::timeout(within, s.wait_for(|s| !s.applied_version.is_empty())).await {
            Ok(Ok(s)) => Ok(s.applied_version.clone()),
            _ => Err(AgentError::NoConfig(within)),
        }
    }

    /// The running proxy, once it has a config.
    pub async fn proxy(&self) -> Option<ProxyHandle> {
        self.shared.proxy.lock().await.clone()
    }

    /// Ends the stream, then drains the proxy.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        let _ = self.session.await;
        if let Some(p) = self.shared.proxy.lock().await.take() {
            p.shutdown().await;
        }
    }
}

impl Shared {
    pub fn held(&self) -> Vec<Held> {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).held()
    }

    pub fn applied_version(&self) -> String {
        self.state.borrow().applied_version.clone()
    }

    pub fn set_connected(&self, server: Option<String>) {
        self.state.send_modify(|s| s.server = server);
    }

    /// The node's workloads with their health; a deregistered one is left out.
    pub fn registration(&self, report: &HealthReport) -> Registration {
        Registration {
            address: self.address.clone(),
            locality: self.config.locality.clone(),
            workloads: self
                .config
                .services
                .iter()
                .filter_map(|s| workload(s, report))
                .collect(),
        }
    }

    /// Applies a push to the view and the view to the proxy. An error is the NACK's reason;
    /// the proxy then keeps what it runs.
    pub async fn apply(&self, push: &Push) -> Result<(), String> {
        let view = {
            let mut view = self.view.lock().unwrap_or_else(|p| p.into_inner());
            view.apply(push)?;
            view.clone()
        };
        self.received.send_replace(Arc::new(view.clone()));
        match self.install(&view).await {
            Ok(()) => {
                if let Err(e) = view.save(&self.cache_path) {
                    tracing::warn!(path = %self.cache_path.display(), error = %e, "cannot keep the config on disk");
                }
                self.state.send_modify(|s| s.last_nack = None);
                Ok(())
            }
            Err(reason) => {
                tracing::warn!(version = %push.version, %reason, "push refused; the proxy keeps its config");
                self.state
                    .send_modify(|s| s.last_nack = Some(reason.clone()));
                Err(reason)
            }
        }
    }

    /// Compiles a view and puts it in force: starts the proxy the first time, swaps after.
    async fn install(&self, view: &View) -> Result<(), String> {
        let input = view.to_proxy_config(&self.node, &self.config.proxy)?;
        let mut snapshot = trellis_proxy::compile(&input).map_err(|e| e.to_string())?;
        snapshot.version = view.version.clone();
        let mut proxy = self.proxy.lock().await;
        match proxy.as_ref() {
            Some(p) => p.swap(snapshot).await.map_err(|e| e.to_string())?,
            None => {
                *proxy = Some(
                    ProxyHandle::start(snapshot)
                        .await
                        .map_err(|e| e.to_string())?,
                );
            }
        }
        let version = view.version.clone();
        self.state.send_modify(|s| s.applied_version = version);
        Ok(())
    }
}

fn workload(s: &LocalService, report: &HealthReport) -> Option<Workload> {
    let h = report
        .services
        .get(&(s.namespace.clone(), s.name.clone(), s.port));
    if h.is_some_and(|h| h.deregistered) {
        return None;
    }
    let (health, output) = match h {
        Some(h) => (
            match h.status {
                Status::Passing => Health::Passing,
                Status::Warning => Health::Warning,
                Status::Critical => Health::Critical,
            },
            // A passing check's output is noise in every endpoint record.
            if h.status == Status::Passing {
                String::new()
            } else {
                h.output.clone()
            },
        ),
        None => (Health::Passing, String::new()),
    };
    let mut labels: std::collections::HashMap<String, String> =
        s.labels.clone().into_iter().collect();
    for tag in &s.tags {
        labels.insert(format!("tag.{tag}"), "true".into());
    }
    Some(Workload {
        name: s.name.clone(),
        namespace: s.namespace.clone(),
        port: u32::from(s.port),
        protocol: s.protocol.clone(),
        labels,
        service_account: s.service_account.clone().unwrap_or_else(|| s.name.clone()),
        health: health as i32,
        health_output: output,
    })
}

/// Where the agent keeps its last accepted config.
pub fn cache_path(data_dir: &Path) -> PathBuf {
    data_dir.join(CACHE_FILE)
}

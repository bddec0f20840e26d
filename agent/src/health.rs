//! Health checks of the node's services.
//!
//! The semantics are Consul's, because that is what operators of VM services already
//! write and expect: a check passes, warns or is critical; a service is as healthy as
//! its worst check; a check counts as critical until its first result; and a service
//! whose check stays critical past `deregisterCriticalAfter` leaves the mesh (here: until
//! it recovers, when the agent registers it again).

use std::collections::BTreeMap;
use std::fmt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty};
use hyper::body::{Bytes, Incoming};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus as GrpcServing;
use tonic_health::pb::health_client::HealthClient;
use tracing::info;

use crate::config::{LocalService, Probe};

/// Consul keeps 4 KiB of a check's output: enough to say what is wrong, and a chatty
/// check cannot grow the agent's memory or the catalog without bound.
const MAX_OUTPUT: usize = 4096;

/// The health of a check or a service, ordered Passing < Warning < Critical.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Passing,
    Warning,
    Critical,
}

impl Status {
    /// The less healthy of the two: how Consul folds a service's checks into one status.
    pub fn worst(self, other: Status) -> Status {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passing => "passing",
            Status::Warning => "warning",
            Status::Critical => "critical",
        }
    }

    fn severity(self) -> u8 {
        match self {
            Status::Passing => 0,
            Status::Warning => 1,
            Status::Critical => 2,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The result of one run of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckOutcome {
    pub status: Status,
    pub output: String,
}

impl CheckOutcome {
    fn new(status: Status, output: impl Into<String>) -> Self {
        CheckOutcome {
            status,
            output: output.into(),
        }
    }

    fn critical(output: impl Into<String>) -> Self {
        Self::new(Status::Critical, output)
    }
}

/// Runs `probe` once. Never takes (much) longer than `timeout`: a hung service must not
/// stall the checks, and a check that cannot answer in time is critical.
pub async fn probe(probe: &Probe, timeout: Duration) -> CheckOutcome {
    match probe {
        Probe::Http(url) => http_check(url, timeout).await,
        Probe::Tcp(addr) => tcp_check(addr, timeout).await,
        Probe::Grpc(addr) => grpc_check(addr, timeout).await,
        Probe::Exec(command) => exec_check(command, timeout).await,
    }
}

async fn http_check(url: &str, timeout: Duration) -> CheckOutcome {
    let fail = |why: &str| CheckOutcome::critical(format!("HTTP GET {url}: {why}"));
    let uri: http::Uri = match url.parse() {
        Ok(uri) => uri,
        Err(e) => return fail(&format!("invalid URL: {e}")),
    };
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return fail("https checks are not supported yet"),
        _ => return fail("the URL must start with http://"),
    }
    let request = match http::Request::get(uri)
        .header(http::header::USER_AGENT, "Trellis Health Check")
        .header(http::header::ACCEPT, "text/plain, text/*, */*")
        .body(Empty::<Bytes>::new())
    {
        Ok(request) => request,
        Err(e) => return fail(&format!("invalid request: {e}")),
    };
    // No pooled connections, as Consul disables keep-alives: each run must show that
    // the service still accepts new connections, and an idle socket per check is waste.
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build::<_, Empty<Bytes>>(HttpConnector::new());
    let exchange = async {
        let response = client.request(request).await.map_err(|e| error_chain(&e))?;
        let code = response.status();
        let body = read_body_capped(response.into_body()).await;
        Ok((code, body))
    };
    match bounded(timeout, exchange).await {
        Ok((code, body)) => {
            let status = if code.is_success() {
                Status::Passing
            } else if code == http::StatusCode::TOO_MANY_REQUESTS {
                Status::Warning
            } else {
                Status::Critical
            };
            let mut output = format!("HTTP GET {url}: {code}");
            // Consul shows the body: health endpoints often explain themselves there.
            let body = String::from_utf8_lossy(&body);
            let body = body.trim();
            if !body.is_empty() {
                output.push_str(" Output: ");
                output.push_str(body);
            }
            CheckOutcome::new(status, output)
        }
        Err(e) => fail(&e),
    }
}

/// Reads at most `MAX_OUTPUT` bytes; the rest is not read at all, since the connection
/// is dropped right after and a huge or endless body must not hold the check up.
async fn read_body_capped(mut body: Incoming) -> Vec<u8> {
    let mut kept = Vec::new();
    while kept.len() < MAX_OUTPUT {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    let room = MAX_OUTPUT - kept.len();
                    kept.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            // A body cut short still leaves the status code to judge by, as in Consul.
            Some(Err(_)) | None => break,
        }
    }
    kept
}

async fn tcp_check(addr: &str, timeout: Duration) -> CheckOutcome {
    let connect = async {
        tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| e.to_string())
    };
    match bounded(timeout, connect).await {
        Ok(_) => CheckOutcome::new(Status::Passing, format!("TCP connect {addr}: Success")),
        Err(e) => CheckOutcome::critical(format!("TCP connect {addr}: {e}")),
    }
}

async fn grpc_check(addr: &str, timeout: Duration) -> CheckOutcome {
    // Consul's form: `host:port/service` asks about one service, `host:port` about the
    // whole server (the empty service name of the health protocol).
    let (target, service) = addr.split_once('/').unwrap_or((addr, ""));
    let call = async {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{target}"))
            .map_err(|e| format!("invalid address: {}", error_chain(&e)))?
            .connect_timeout(timeout)
            .timeout(timeout);
        let channel = endpoint.connect().await.map_err(|e| error_chain(&e))?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?;
        Ok(response.into_inner().status())
    };
    match bounded(timeout, call).await {
        Ok(serving) => {
            let status = if serving == GrpcServing::Serving {
                Status::Passing
            } else {
                Status::Critical
            };
            CheckOutcome::new(
                status,
                format!("gRPC check {addr}: {}", serving.as_str_name()),
            )
        }
        Err(e) => CheckOutcome::critical(format!("gRPC check {addr}: {e}")),
    }
}

async fn exec_check(command: &[String], timeout: Duration) -> CheckOutcome {
    let Some((program, args)) = command.split_first() else {
        return CheckOutcome::critical("exec: no command given");
    };
    // No shell: the operator's argv is run as written, so nothing in it is re-parsed.
    let spawned = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return CheckOutcome::critical(format!("exec {program}: {e}")),
    };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let run = async { tokio::join!(read_capped(stdout), read_capped(stderr), child.wait()) };
    let finished = tokio::time::timeout(timeout, run).await;
    let Ok((mut output, errors, exit)) = finished else {
        // start_kill, not kill: waiting for the exit could hang too (a process stuck in
        // uninterruptible sleep), and tokio reaps the killed child in the background.
        let _ = child.start_kill();
        return CheckOutcome::critical(format!(
            "timed out after {}",
            humantime::format_duration(timeout)
        ));
    };
    output.extend_from_slice(&errors);
    output.truncate(MAX_OUTPUT);
    let output = String::from_utf8_lossy(&output).into_owned();
    match exit.map(|e| e.code()) {
        Ok(Some(0)) => CheckOutcome::new(Status::Passing, output),
        Ok(Some(1)) => CheckOutcome::new(Status::Warning, output),
        Ok(_) => CheckOutcome::critical(output),
        Err(e) => CheckOutcome::critical(format!("exec {program}: {e}")),
    }
}

/// Keeps the first `MAX_OUTPUT` bytes but reads to the end: a child blocked on a full
/// pipe would never exit and the check would time out instead of reporting.
async fn read_capped(reader: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut reader) = reader else {
        return kept;
    };
    let mut buf = [0u8; 2048];
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = MAX_OUTPUT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

async fn bounded<T>(
    timeout: Duration,
    work: impl Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "timed out after {}",
                humantime::format_duration(timeout)
            ))
        })
}

/// hyper's and tonic's errors say "client error (Connect)" at the top and the useful
/// part ("Connection refused") only in their sources.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(e) = source {
        let more = e.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = e.source();
    }
    text
}

fn describe(probe: &Probe) -> String {
    match probe {
        Probe::Http(url) => format!("http {url}"),
        Probe::Tcp(addr) => format!("tcp {addr}"),
        Probe::Grpc(addr) => format!("grpc {addr}"),
        Probe::Exec(command) => format!("exec {}", command.join(" ")),
    }
}

/// One instance of a service on the node: (namespace, name, port). A node may run several
/// instances of a service (v1 and v2 of `reviews`), each on its own port.
pub type InstanceKey = (String, String, u16);

/// The health of every service instance of the node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HealthReport {
    pub services: BTreeMap<InstanceKey, ServiceHealth>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceHealth {
    /// The worst of the service's checks; Passing for a service without checks.
    pub status: Status,
    /// The output of the first check that has that status.
    pub output: String,
    /// When the service last became critical; `None` while it is not.
    pub critical_since: Option<Instant>,
    /// A check has been critical for longer than its `deregisterCriticalAfter`: the
    /// service is out of the mesh until that is no longer so.
    pub deregistered: bool,
}

/// Runs the checks; dropping it stops them and closes the report channel.
#[derive(Debug)]
#[must_use = "dropping HealthChecks stops the checks"]
pub struct HealthChecks {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for HealthChecks {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Starts every check of `services` (each runs at once, then every `interval`) and
/// returns their aggregate. The receiver's initial value counts every check as critical
/// and is marked seen: `changed()` first fires with the first full report, once every
/// check has a result, and after that only when a service's status or `deregistered`
/// changes. Outputs are updated in place without a notification, so a steady node sends
/// nothing. Must be called within a tokio runtime.
pub fn spawn_checks(services: &[LocalService]) -> (watch::Receiver<HealthReport>, HealthChecks) {
    let now = Instant::now();
    let (tracker, jobs) = Tracker::new(services, now);
    let mut report = HealthReport::default();
    tracker.update(&mut report, now);
    let (report_tx, report_rx) = watch::channel(report);
    let (results_tx, results_rx) = mpsc::channel(jobs.len().max(1));
    let mut tasks = Vec::with_capacity(jobs.len() + 1);
    tasks.push(tokio::spawn(aggregate(tracker, results_rx, report_tx)));
    for job in jobs {
        tasks.push(tokio::spawn(run_check(job, results_tx.clone())));
    }
    (report_rx, HealthChecks { tasks })
}

struct Job {
    service: usize,
    check: usize,
    probe: Probe,
    interval: Duration,
    timeout: Duration,
}

struct CheckResult {
    service: usize,
    check: usize,
    outcome: CheckOutcome,
}

async fn run_check(job: Job, results: mpsc::Sender<CheckResult>) {
    let mut ticks = tokio::time::interval(job.interval);
    // A run that overran its interval is not made up for with a burst of runs.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let outcome = probe(&job.probe, job.timeout).await;
        let result = CheckResult {
            service: job.service,
            check: job.check,
            outcome,
        };
        if results.send(result).await.is_err() {
            return;
        }
    }
}

async fn aggregate(
    mut tracker: Tracker,
    mut results: mpsc::Receiver<CheckResult>,
    reports: watch::Sender<HealthReport>,
) {
    let mut open = true;
    loop {
        let now = Instant::now();
        reports.send_if_modified(|report| tracker.refresh(report, now));
        // Deregistration is due at a time, not at a check result: with a long interval
        // the next result may come well after `deregisterCriticalAfter` has passed.
        let deadline = tracker.next_deadline(now);
        tokio::select! {
            result = results.recv(), if open => match result {
                Some(result) => tracker.record(result, Instant::now()),
                // Only when no check runs at all; the sender must live on regardless,
                // since a closed channel would tell subscribers the checks stopped.
                None => open = false,
            },
            () = sleep_until(deadline) => {}
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// The state of every check, kept apart from the tasks and the clock so that the
/// aggregation rules are plain functions of results and time.
struct Tracker {
    services: Vec<ServiceState>,
    /// Checks without a first result yet.
    pending: usize,
    published_first: bool,
}

struct ServiceState {
    key: InstanceKey,
    checks: Vec<CheckState>,
}

struct CheckState {
    label: String,
    deregister_after: Option<Duration>,
    status: Status,
    output: String,
    ran: bool,
    critical_since: Option<Instant>,
}

impl CheckState {
    fn overdue(&self, now: Instant) -> bool {
        match (self.status, self.deregister_after, self.critical_since) {
            (Status::Critical, Some(after), Some(since)) => {
                now.saturating_duration_since(since) >= after
            }
            _ => false,
        }
    }
}

impl Tracker {
    fn new(services: &[LocalService], now: Instant) -> (Tracker, Vec<Job>) {
        let mut states: Vec<ServiceState> = Vec::new();
        let mut index = BTreeMap::new();
        let mut jobs = Vec::new();
        let mut pending = 0;
        for service in services {
            let key = (
                service.namespace.clone(),
                service.name.clone(),
                service.port,
            );
            // Config validation forbids duplicates; if one slips through, its checks
            // join the first declaration's rather than racing it in the report.
            let si = *index.entry(key.clone()).or_insert_with(|| {
                states.push(ServiceState {
                    key,
                    checks: Vec::new(),
                });
                states.len() - 1
            });
            let state = &mut states[si];
            for check in &service.checks {
                let probe = check.probe();
                let label = probe
                    .as_ref()
                    .map_or_else(|| "invalid check".to_owned(), describe);
                let ran = probe.is_none();
                let output = if ran {
                    "invalid check: give exactly one of http, tcp, grpc, exec"
                } else {
                    "no result yet"
                };
                if let Some(probe) = probe {
                    pending += 1;
                    jobs.push(Job {
                        service: si,
                        check: state.checks.len(),
                        probe,
                        // tokio's interval panics on zero; config validation rejects
                        // it, so this only guards callers that skipped validation.
                        interval: if check.interval.is_zero() {
                            Duration::from_secs(10)
                        } else {
                            check.interval
                        },
                        timeout: check.timeout,
                    });
                }
                state.checks.push(CheckState {
                    label,
                    deregister_after: check.deregister_critical_after,
                    status: Status::Critical,
                    output: output.to_owned(),
                    ran,
                    // Consul starts the deregistration clock at registration, when the
                    // check is critical for want of a result.
                    critical_since: Some(now),
                });
            }
        }
        let tracker = Tracker {
            services: states,
            pending,
            published_first: false,
        };
        (tracker, jobs)
    }

    fn record(&mut self, result: CheckResult, now: Instant) {
        let Some(service) = self.services.get_mut(result.service) else {
            return;
        };
        let Some(check) = service.checks.get_mut(result.check) else {
            return;
        };
        let CheckOutcome { status, output } = result.outcome;
        if !check.ran || check.status != status {
            info!(
                service = %format!("{}/{}:{}", service.key.0, service.key.1, service.key.2),
                check = %check.label,
                from = if check.ran { check.status.as_str() } else { "pending" },
                to = %status,
                output = %output,
                "health check status changed"
            );
        }
        if !check.ran {
            check.ran = true;
            self.pending = self.pending.saturating_sub(1);
        }
        check.critical_since = match status {
            Status::Critical => check.critical_since.or(Some(now)),
            Status::Passing | Status::Warning => None,
        };
        check.status = status;
        check.output = output;
    }

    /// Brings `report` up to date with the checks; says whether subscribers must hear
    /// of it (the first full report, then status and deregistration changes only).
    fn refresh(&mut self, report: &mut HealthReport, now: Instant) -> bool {
        let changed = self.update(report, now);
        if !self.published_first {
            // Until every check has answered, a report would show services critical
            // only because their checks have not run yet.
            self.published_first = self.pending == 0;
            return self.published_first;
        }
        changed
    }

    /// Brings `report` up to date; says whether a status or `deregistered` changed.
    fn update(&self, report: &mut HealthReport, now: Instant) -> bool {
        let mut changed = false;
        for service in &self.services {
            let worst =
                service
                    .checks
                    .iter()
                    .fold(None::<&CheckState>, |worst, check| match worst {
                        Some(w) if w.status.worst(check.status) == w.status => Some(w),
                        _ => Some(check),
                    });
            let (status, output) = worst.map_or((Status::Passing, "no checks"), |c| {
                (c.status, c.output.as_str())
            });
            let deregistered = service.checks.iter().any(|c| c.overdue(now));
            let entry = report
                .services
                .entry(service.key.clone())
                .or_insert_with(|| ServiceHealth {
                    status,
                    output: String::new(),
                    critical_since: None,
                    deregistered: false,
                });
            if entry.deregistered != deregistered {
                let name = format!("{}/{}:{}", service.key.0, service.key.1, service.key.2);
                if deregistered {
                    info!(service = %name, output, "service deregistered: a check stayed critical past its deregisterCriticalAfter");
                } else {
                    info!(service = %name, status = %status, "service registered again: no check is critical past its deregisterCriticalAfter");
                }
            }
            changed |= entry.status != status || entry.deregistered != deregistered;
            entry.critical_since = match status {
                Status::Critical => entry.critical_since.or(Some(now)),
                Status::Passing | Status::Warning => None,
            };
            entry.status = status;
            if entry.output != output {
                output.clone_into(&mut entry.output);
            }
            entry.deregistered = deregistered;
        }
        changed
    }

    /// When the next service becomes due for deregistration, if any will.
    fn next_deadline(&self, now: Instant) -> Option<Instant> {
        self.services
            .iter()
            .flat_map(|s| &s.checks)
            .filter(|c| c.status == Status::Critical)
            .filter_map(|c| c.critical_since?.checked_add(c.deregister_after?))
            .filter(|deadline| *deadline > now)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU16, Ordering};

    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpListener;

    use super::*;
    use crate::config::HealthCheck;

    /// Probe timeout against servers on this host: generous, so a loaded CI machine
    /// does not turn a passing check critical.
    const T: Duration = Duration::from_secs(2);
    /// How long a test waits for the checks to notice a change before it fails.
    const WITHIN: Duration = Duration::from_secs(10);

    /// Answers every request with the status code in `code`; `/big` with 10 KiB.
    async fn http_server(code: Arc<AtomicU16>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let code = code.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: http::Request<Incoming>| {
                        let code = code.load(Ordering::SeqCst);
                        let body = if req.uri().path() == "/big" {
                            "x".repeat(10 * 1024)
                        } else {
                            "fine".to_owned()
                        };
                        async move {
                            Ok::<_, Infallible>(
                                http::Response::builder()
                                    .status(code)
                                    .body(Full::new(Bytes::from(body)))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        addr
    }

    /// An address nothing listens on: bound, then released.
    async fn closed_port() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    async fn exec(args: &[&str], timeout: Duration) -> CheckOutcome {
        let command = args.iter().map(|a| (*a).to_owned()).collect();
        probe(&Probe::Exec(command), timeout).await
    }

    fn service(name: &str, checks: Vec<HealthCheck>) -> LocalService {
        LocalService {
            name: name.into(),
            namespace: "default".into(),
            port: 8080,
            protocol: String::new(),
            labels: BTreeMap::new(),
            tags: Vec::new(),
            service_account: None,
            checks,
        }
    }

    fn check(probe: Probe) -> HealthCheck {
        let mut check = HealthCheck {
            http: None,
            tcp: None,
            grpc: None,
            exec: None,
            interval: Duration::from_millis(50),
            timeout: T,
            deregister_critical_after: None,
        };
        match probe {
            Probe::Http(u) => check.http = Some(u),
            Probe::Tcp(a) => check.tcp = Some(a),
            Probe::Grpc(a) => check.grpc = Some(a),
            Probe::Exec(c) => check.exec = Some(c),
        }
        check
    }

    fn key(name: &str) -> InstanceKey {
        ("default".to_owned(), name.to_owned(), 8080)
    }

    /// Waits until the report satisfies `pred`, failing with the last report seen.
    async fn wait_for(
        rx: &mut watch::Receiver<HealthReport>,
        what: &str,
        pred: impl Fn(&HealthReport) -> bool,
    ) -> HealthReport {
        let deadline = tokio::time::Instant::now() + WITHIN;
        loop {
            {
                let report = rx.borrow_and_update();
                if pred(&report) {
                    return report.clone();
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => panic!("the checks stopped while waiting for {what}"),
                Err(_) => panic!(
                    "no {what} within {WITHIN:?}; last report: {:?}",
                    *rx.borrow()
                ),
            }
        }
    }

    #[test]
    fn worst_orders_passing_warning_critical_and_serializes_lowercase() {
        use Status::*;
        assert_eq!(Status::worst(Passing, Warning), Warning);
        assert_eq!(Status::worst(Critical, Warning), Critical);
        assert_eq!(Passing.worst(Passing), Passing);
        assert_eq!(serde_json::to_string(&Critical).unwrap(), "\"critical\"");
        assert_eq!(
            serde_json::from_str::<Status>("\"warning\"").unwrap(),
            Warning
        );
    }

    #[tokio::test]
    async fn http_check_follows_the_status_code() {
        let code = Arc::new(AtomicU16::new(200));
        let addr = http_server(code.clone()).await;
        let url = format!("http://{addr}/health");
        let check = Probe::Http(url.clone());

        let out = probe(&check, T).await;
        assert_eq!(out.status, Status::Passing, "{out:?}");
        assert_eq!(out.output, format!("HTTP GET {url}: 200 OK Output: fine"));

        code.store(429, Ordering::SeqCst);
        let out = probe(&check, T).await;
        assert_eq!(out.status, Status::Warning, "{out:?}");

        code.store(500, Ordering::SeqCst);
        let out = probe(&check, T).await;
        assert_eq!(out.status, Status::Critical, "{out:?}");
        assert!(
            out.output.starts_with(&format!("HTTP GET {url}: 500")),
            "{out:?}"
        );

        code.store(200, Ordering::SeqCst);
        let big = probe(&Probe::Http(format!("http://{addr}/big")), T).await;
        assert_eq!(big.status, Status::Passing, "{big:?}");
        assert!(big.output.len() < MAX_OUTPUT + 100, "{}", big.output.len());
    }

    #[tokio::test]
    async fn http_check_is_critical_on_a_closed_port_https_or_a_bad_url() {
        let closed = closed_port().await;
        let out = probe(&Probe::Http(format!("http://{closed}/")), T).await;
        assert_eq!(out.status, Status::Critical, "{out:?}");
        assert!(out.output.starts_with("HTTP GET"), "{out:?}");

        let out = probe(&Probe::Http("https://127.0.0.1:1/".into()), T).await;
        assert_eq!(out.status, Status::Critical);
        assert!(out.output.contains("https checks are not supported yet"));

        let out = probe(&Probe::Http("not a url".into()), T).await;
        assert_eq!(out.status, Status::Critical);
    }

    #[tokio::test]
    async fn tcp_check_passes_on_a_listener_and_fails_on_a_closed_port() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap();
        let out = probe(&Probe::Tcp(open.to_string()), T).await;
        assert_eq!(out.status, Status::Passing, "{out:?}");

        let closed = closed_port().await;
        let out = probe(&Probe::Tcp(closed.to_string()), T).await;
        assert_eq!(out.status, Status::Critical, "{out:?}");
        assert!(out.output.starts_with(&format!("TCP connect {closed}: ")));
    }

    #[tokio::test]
    async fn grpc_check_follows_the_serving_status() {
        let (reporter, server) = tonic_health::server::health_reporter();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(server)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let whole = Probe::Grpc(addr.to_string());

        let out = probe(&whole, T).await;
        assert_eq!(out.status, Status::Passing, "{out:?}");

        reporter
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        let out = probe(&whole, T).await;
        assert_eq!(out.status, Status::Critical, "{out:?}");
        assert!(out.output.ends_with("NOT_SERVING"), "{out:?}");

        reporter
            .set_service_status("shop.Reviews", tonic_health::ServingStatus::Serving)
            .await;
        let out = probe(&Probe::Grpc(format!("{addr}/shop.Reviews")), T).await;
        assert_eq!(out.status, Status::Passing, "{out:?}");
        let out = probe(&Probe::Grpc(format!("{addr}/shop.Unknown")), T).await;
        assert_eq!(out.status, Status::Critical, "{out:?}");
        assert!(out.output.contains("NotFound"), "{out:?}");

        let closed = closed_port().await;
        let out = probe(&Probe::Grpc(closed.to_string()), T).await;
        assert_eq!(out.status, Status::Critical, "{out:?}");
    }

    #[tokio::test]
    async fn exec_check_maps_exit_codes_like_consul() {
        assert_eq!(exec(&["true"], T).await.status, Status::Passing);
        assert_eq!(
            exec(&["sh", "-c", "exit 1"], T).await.status,
            Status::Warning
        );
        // `false` exits 1, which Consul (and so this) reads as a warning, not a failure.
        assert_eq!(exec(&["false"], T).await.status, Status::Warning);
        assert_eq!(
            exec(&["sh", "-c", "exit 2"], T).await.status,
            Status::Critical
        );

        let out = exec(
            &["sh", "-c", "echo degraded; echo disk full >&2; exit 1"],
            T,
        )
        .await;
        assert_eq!(out.status, Status::Warning);
        assert_eq!(out.output, "degraded\ndisk full\n");

        // More than a pipe buffer: the check must drain it to see the exit at all.
        let out = exec(&["sh", "-c", "head -c 200000 /dev/zero | tr '\\0' x"], T).await;
        assert_eq!(out.status, Status::Passing, "{}", out.output.len());
        assert_eq!(out.output.len(), MAX_OUTPUT);

        let out = exec(&["/nonexistent/check-script"], T).await;
        assert_eq!(out.status, Status::Critical);
        assert_eq!(exec(&[], T).await.status, Status::Critical);
    }

    #[tokio::test]
    async fn exec_check_is_killed_at_its_timeout() {
        let out = tokio::time::timeout(
            Duration::from_secs(1),
            exec(&["sleep", "5"], Duration::from_millis(200)),
        )
        .await
        .expect("the exec check outlived its 200 ms timeout by more than 800 ms");
        assert_eq!(out.status, Status::Critical);
        assert_eq!(out.output, "timed out after 200ms");
    }

    #[tokio::test]
    async fn a_failing_service_goes_critical_is_deregistered_and_comes_back() {
        let code = Arc::new(AtomicU16::new(200));
        let addr = http_server(code.clone()).await;
        let mut web = check(Probe::Http(format!("http://{addr}/health")));
        web.deregister_critical_after = Some(Duration::from_millis(300));
        let services = [
            service("web", vec![web, check(Probe::Exec(vec!["true".into()]))]),
            service("plain", Vec::new()),
        ];
        let (mut rx, _checks) = spawn_checks(&services);

        tokio::time::timeout(WITHIN, rx.changed())
            .await
            .expect("no first report")
            .unwrap();
        let first = rx.borrow_and_update().clone();
        let health = &first.services[&key("web")];
        assert_eq!(health.status, Status::Passing, "{first:?}");
        assert!(!health.deregistered && health.critical_since.is_none());
        assert_eq!(first.services[&key("plain")].status, Status::Passing);

        code.store(500, Ordering::SeqCst);
        let report = wait_for(&mut rx, "critical web", |r| {
            r.services[&key("web")].status == Status::Critical
        })
        .await;
        let health = &report.services[&key("web")];
        assert!(health.output.contains(": 500"), "{health:?}");
        assert!(health.critical_since.is_some());

        wait_for(&mut rx, "deregistered web", |r| {
            r.services[&key("web")].deregistered
        })
        .await;

        code.store(200, Ordering::SeqCst);
        let report = wait_for(&mut rx, "recovered web", |r| {
            let web = &r.services[&key("web")];
            web.status == Status::Passing && !web.deregistered
        })
        .await;
        assert!(report.services[&key("web")].critical_since.is_none());
    }

    #[tokio::test]
    async fn dropping_the_guard_stops_the_checks() {
        let (mut rx, checks) = spawn_checks(&[service("plain", Vec::new())]);
        tokio::time::timeout(WITHIN, rx.changed())
            .await
            .expect("a node without checks reports at once")
            .unwrap();
        assert_eq!(rx.borrow().services[&key("plain")].status, Status::Passing);
        drop(checks);
        let closed = tokio::time::timeout(WITHIN, rx.changed())
            .await
            .expect("the report channel stayed open after the guard was dropped");
        assert!(closed.is_err());
    }

    fn result(job: &Job, status: Status, output: &str) -> CheckResult {
        CheckResult {
            service: job.service,
            check: job.check,
            outcome: CheckOutcome::new(status, output),
        }
    }

    #[test]
    fn the_first_report_waits_for_every_check_and_a_steady_node_publishes_nothing() {
        let t0 = Instant::now();
        let tcp = || check(Probe::Tcp("127.0.0.1:1".into()));
        let services = [
            service("web", vec![tcp(), tcp()]),
            service("db", vec![tcp()]),
            service("plain", Vec::new()),
        ];
        let (mut tracker, jobs) = Tracker::new(&services, t0);
        let mut report = HealthReport::default();
        assert!(!tracker.refresh(&mut report, t0));
        assert_eq!(report.services[&key("web")].status, Status::Critical);
        assert_eq!(report.services[&key("web")].critical_since, Some(t0));
        assert_eq!(report.services[&key("plain")].status, Status::Passing);

        let (last, rest) = jobs.split_last().unwrap();
        for job in rest {
            tracker.record(result(job, Status::Passing, "ok"), t0);
            assert!(
                !tracker.refresh(&mut report, t0),
                "published before all ran"
            );
        }
        tracker.record(result(last, Status::Passing, "ok"), t0);
        assert!(tracker.refresh(&mut report, t0));
        assert_eq!(report.services[&key("web")].status, Status::Passing);
        assert_eq!(report.services[&key("web")].critical_since, None);

        for job in &jobs {
            tracker.record(result(job, Status::Passing, "still ok"), t0);
            assert!(!tracker.refresh(&mut report, t0), "a steady node published");
        }
        assert_eq!(report.services[&key("db")].output, "still ok");

        tracker.record(result(&jobs[0], Status::Warning, "slow"), t0);
        assert!(tracker.refresh(&mut report, t0));
        assert_eq!(report.services[&key("web")].status, Status::Warning);
        assert_eq!(report.services[&key("web")].output, "slow");
        assert_eq!(report.services[&key("db")].status, Status::Passing);
    }

    #[test]
    fn deregistration_counts_from_when_that_check_went_critical() {
        let t0 = Instant::now();
        let at = |secs: u64| t0 + Duration::from_secs(secs);
        let mut guarded = check(Probe::Tcp("127.0.0.1:1".into()));
        guarded.deregister_critical_after = Some(Duration::from_secs(60));
        let plain = check(Probe::Tcp("127.0.0.1:2".into()));
        let (mut tracker, jobs) = Tracker::new(&[service("web", vec![guarded, plain])], t0);
        let (guarded, plain) = (&jobs[0], &jobs[1]);
        let mut report = HealthReport::default();
        tracker.record(result(guarded, Status::Passing, "ok"), t0);
        tracker.record(result(plain, Status::Passing, "ok"), t0);
        assert!(tracker.refresh(&mut report, t0));

        // A check without deregisterCriticalAfter never deregisters, however long.
        tracker.record(result(plain, Status::Critical, "down"), at(1));
        assert!(tracker.refresh(&mut report, at(1)));
        assert_eq!(tracker.next_deadline(at(1)), None);
        assert!(!tracker.refresh(&mut report, at(7200)));
        let web = &report.services[&key("web")];
        assert!(!web.deregistered);
        assert_eq!(web.critical_since, Some(at(1)));

        tracker.record(result(guarded, Status::Critical, "down"), at(7200));
        assert_eq!(tracker.next_deadline(at(7200)), Some(at(7260)));
        assert!(!tracker.refresh(&mut report, at(7259)));
        assert!(!report.services[&key("web")].deregistered);
        assert!(tracker.refresh(&mut report, at(7260)));
        assert!(report.services[&key("web")].deregistered);
        assert_eq!(tracker.next_deadline(at(7260)), None);

        // Warning is not critical: the clock stops and the service is back, though
        // still critical by its other check.
        tracker.record(result(guarded, Status::Warning, "slow"), at(7261));
        assert!(tracker.refresh(&mut report, at(7261)));
        let web = &report.services[&key("web")];
        assert!(!web.deregistered);
        assert_eq!(web.status, Status::Critical);
        assert_eq!(web.critical_since, Some(at(1)));
    }
}

//! The capture listener with real iptables redirection: `SO_ORIGINAL_DST` names the
//! service's VIP and port. Needs root and `iptables` (test.sh installs it); elsewhere the
//! tests say they skipped.

mod common;

use std::net::TcpListener as StdListener;
use std::process::Command;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A nat OUTPUT rule sending 127.0.0.1:`from` to the capture port; removed on drop.
struct Redirect {
    args: Vec<String>,
}

impl Redirect {
    fn new(from: u16, to: u16) -> Option<Self> {
        let args: Vec<String> = [
            "-t",
            "nat",
            "OUTPUT",
            "-p",
            "tcp",
            "-d",
            "127.0.0.1",
            "--dport",
            &from.to_string(),
            "-j",
            "REDIRECT",
            "--to-ports",
            &to.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let ok = Command::new("iptables")
            .args(&args[..2])
            .arg("-A")
            .args(&args[2..])
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Self { args })
    }
}

impl Drop for Redirect {
    fn drop(&mut self) {
        let _ = Command::new("iptables")
            .args(&self.args[..2])
            .arg("-D")
            .args(&self.args[2..])
            .status();
    }
}

fn can_redirect() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let iptables = Command::new("iptables")
        .args(["-t", "nat", "-L", "OUTPUT", "-n"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !(root && iptables) {
        eprintln!("skipped: needs root and iptables with the nat table");
    }
    root && iptables
}

/// A port nobody else will take while the test runs: held open, never connected to, since
/// the redirect happens before the connection reaches it.
fn reserve_port() -> (StdListener, u16) {
    let l = StdListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    (l, port)
}

#[tokio::test]
async fn capture_routes_http_and_tcp_by_original_destination() {
    if !can_redirect() {
        return;
    }
    let web = upstream("web").await;
    let echo = tcp_echo(b"").await;
    let (_hold_http, vip_http) = reserve_port();
    let (_hold_tcp, vip_tcp) = reserve_port();
    let yaml = format!(
        r#"
listeners:
  capture: {{bind: "127.0.0.1:0"}}
services:
  - name: web
    vip: 127.0.0.1
    ports: [{{number: {vip_http}, protocol: HTTP}}]
    endpoints: [{{address: 127.0.0.1, port: {}}}]
  - name: db
    vip: 127.0.0.1
    ports: [{{number: {vip_tcp}, protocol: TCP}}]
    endpoints: [{{address: 127.0.0.1, port: {}}}]
"#,
        web.port(),
        echo.port()
    );
    let proxy = start_proxy(&yaml).await;
    let capture = addr(&proxy, "capture").port();
    let _r1 = Redirect::new(vip_http, capture).expect("iptables rule");
    let _r2 = Redirect::new(vip_tcp, capture).expect("iptables rule");

    // The client only knows the VIP; the host header names nothing the mesh knows.
    let vip = format!("127.0.0.1:{vip_http}").parse().unwrap();
    let r = get_with(&client(), vip, "/", &[("host", "legacy-name")]).await;
    assert_eq!(r.status.as_u16(), 200, "{}", r.body);
    assert_eq!(r.body, "web");

    let mut s = TcpStream::connect(("127.0.0.1", vip_tcp)).await.unwrap();
    s.write_all(b"\x00binary").await.unwrap();
    let mut buf = [0u8; 7];
    within("echo", s.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"\x00binary");
}

//! The original destination of a connection redirected by iptables (`SO_ORIGINAL_DST`),
//! through socket2's safe API.

use std::net::SocketAddr;

use socket2::SockRef;
use tokio::net::TcpStream;

/// Where the client meant to connect, when that is not this listener itself (a connection
/// made straight to the listener has no other destination).
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    let sock = SockRef::from(stream);
    let addr = if local.is_ipv4() {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    addr.ok()?.as_socket().filter(|a| *a != local)
}

//! Reads the server name from a TLS ClientHello without consuming it, so the connection can
//! be routed by SNI and passed through untouched.

use std::time::Duration;

use rustls::server::Acceptor;
use tokio::net::TcpStream;

/// Largest ClientHello looked at; real ones are well under this.
const MAX_HELLO: usize = 16 * 1024 + 5;

/// The SNI of the ClientHello at the start of the stream, if it has one.
pub async fn peek_sni(stream: &TcpStream, timeout: Duration) -> Option<String> {
    let work = async {
        let mut buf = vec![0u8; MAX_HELLO];
        let mut last = 0;
        loop {
            let n = stream.peek(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            match sni_of(&buf[..n]) {
                Ok(name) => return name,
                Err(NeedMore) if n >= MAX_HELLO => return None,
                Err(NeedMore) => {}
            }
            if n == last {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            last = n;
        }
    };
    tokio::time::timeout(timeout, work).await.ok().flatten()
}

pub struct NeedMore;

/// Parses a ClientHello with rustls; `Err(NeedMore)` when the bytes end before it does.
pub fn sni_of(bytes: &[u8]) -> Result<Option<String>, NeedMore> {
    let mut acceptor = Acceptor::default();
    let mut rd = bytes;
    while !rd.is_empty() {
        if acceptor.read_tls(&mut rd).is_err() {
            return Ok(None);
        }
    }
    match acceptor.accept() {
        Ok(Some(accepted)) => Ok(accepted.client_hello().server_name().map(str::to_owned)),
        Ok(None) => Err(NeedMore),
        Err(_) => Ok(None),
    }
}

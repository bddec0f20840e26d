//! Protocol sniffing on the capture and inbound listeners: the first bytes tell HTTP/1,
//! the HTTP/2 preface and a TLS ClientHello apart from opaque TCP.

use std::time::Duration;

use tokio::net::TcpStream;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
    Tls,
    Tcp,
    /// The client closed before sending anything.
    Closed,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// Decides from a prefix of the stream; `None` means more bytes are needed.
pub fn classify(buf: &[u8]) -> Option<Detected> {
    if buf.is_empty() {
        return None;
    }
    if buf.len() >= 2 && buf[0] == 0x16 && buf[1] == 0x03 {
        return Some(Detected::Tls);
    }
    if buf.len() == 1 && buf[0] == 0x16 {
        return None;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Detected::Http2);
    }
    let mut could_be_http1 = false;
    for m in METHODS {
        let n = buf.len().min(m.len());
        if buf[..n] == m[..n] {
            if n == m.len() {
                return Some(Detected::Http1);
            }
            could_be_http1 = true;
        }
    }
    if could_be_http1 {
        return None;
    }
    Some(Detected::Tcp)
}

/// Peeks (without consuming) until the protocol is known. A client that sends nothing within
/// `timeout` may speak a server-first protocol: that is opaque TCP.
pub async fn sniff(stream: &TcpStream, timeout: Duration) -> Detected {
    let mut buf = [0u8; 32];
    let work = async {
        let mut last = 0;
        loop {
            let n = match stream.peek(&mut buf).await {
                Ok(0) => return Detected::Closed,
                Ok(n) => n,
                Err(_) => return Detected::Closed,
            };
            if let Some(d) = classify(&buf[..n]) {
                return d;
            }
            if n == last {
                // `peek` returns at once while data is pending; wait for more to arrive.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            last = n;
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Detected::Tcp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tells_protocols_apart() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(H2_PREFACE), Some(Detected::Http2));
        assert_eq!(classify(&H2_PREFACE[..10]), None);
        assert_eq!(classify(&[0x16, 0x03, 0x01]), Some(Detected::Tls));
        assert_eq!(classify(b"\x00\x01hello"), Some(Detected::Tcp));
        assert_eq!(classify(b"HELLO"), Some(Detected::Tcp));
    }
}

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
    tokio::time::timeout(timeout, peek_until(stream, classify))
        .await
        .unwrap_or(Detected::Tcp)
}

/// On a listener declared HTTP: whether the client opens with the HTTP/2 preface (prior
/// knowledge) or speaks HTTP/1. One that has sent nothing within `timeout` is served HTTP/1,
/// whose own header timeout then applies.
pub async fn http_version(stream: &TcpStream, timeout: Duration) -> Detected {
    let version = |buf: &[u8]| {
        let n = buf.len().min(H2_PREFACE.len());
        if buf[..n] != H2_PREFACE[..n] {
            Some(Detected::Http1)
        } else {
            (n == H2_PREFACE.len()).then_some(Detected::Http2)
        }
    };
    tokio::time::timeout(timeout, peek_until(stream, version))
        .await
        .unwrap_or(Detected::Http1)
}

/// Peeks until `decide` can tell from the bytes so far (`None`: it needs more).
async fn peek_until(stream: &TcpStream, decide: impl Fn(&[u8]) -> Option<Detected>) -> Detected {
    let mut buf = [0u8; 32];
    let mut last = 0;
    loop {
        let n = match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return Detected::Closed,
            Ok(n) => n,
        };
        if let Some(d) = decide(&buf[..n]) {
            return d;
        }
        if n == last {
            // `peek` returns at once while data is pending; wait for more to arrive.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        last = n;
    }
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

    /// What `http_version` decides for a client that sends `first` (in two writes, apart)
    /// and then keeps the connection open, or closes it when `close` is set.
    async fn version_of(first: &'static [u8], close: bool) -> Detected {
        use tokio::io::AsyncWriteExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            let (a, b) = first.split_at(first.len() / 2);
            s.write_all(a).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            s.write_all(b).await.unwrap();
            if !close {
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
        let (server, _) = listener.accept().await.unwrap();
        let detected = http_version(&server, Duration::from_millis(500)).await;
        client.abort();
        detected
    }

    #[tokio::test]
    async fn http_version_waits_for_the_whole_preface() {
        assert_eq!(version_of(H2_PREFACE, false).await, Detected::Http2);
        assert_eq!(
            version_of(b"GET / HTTP/1.1\r\n", false).await,
            Detected::Http1
        );
        // `PUT` and `POST` start like the preface.
        assert_eq!(
            version_of(b"POST / HTTP/1.1\r\n", false).await,
            Detected::Http1
        );
        // A preface cut short and then silence: past the timeout, HTTP/1's own rules apply.
        assert_eq!(version_of(&H2_PREFACE[..10], false).await, Detected::Http1);
        assert_eq!(version_of(b"", true).await, Detected::Closed);
    }
}

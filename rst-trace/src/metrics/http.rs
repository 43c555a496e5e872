//! A minimal HTTP/1.x server for `/metrics`: one GET per connection, answered and closed.
//!
//! Small on purpose: a scraper needs nothing more, and a server this size can be read in full.
//! Every step has a bound (header size, time to read a request and to write a response,
//! connections at once), and no error here reaches the agent: it is logged and the server
//! carries on.
use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::{mpsc, Semaphore},
    time::timeout,
};

use super::{encode, listeners::SharedTally, Format};
use crate::embed::SnapshotRequest;

/// Longest request head accepted (request line and headers).
const MAX_HEAD: usize = 16 * 1024;
/// Time a client has to send its request, and to take the response.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the run loop has to answer (it answers between two ring buffer reads).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 32;
/// After a failed accept() (e.g. EMFILE), wait before the next one instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

pub async fn serve(
    listener: TcpListener,
    requests: mpsc::Sender<SnapshotRequest>,
    tally: SharedTally,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                log::warn!("metrics: accept failed: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            log::debug!("metrics: {MAX_CONNECTIONS} connections open; closing {peer}");
            continue;
        };
        let requests = requests.clone();
        let tally = tally.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = connection(stream, &requests, &tally).await {
                log::debug!("metrics: {peer}: {e}");
            }
        });
    }
}

/// A parsed request head.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub accept: Option<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum HeadError {
    /// Not HTTP/1.x.
    Malformed,
    TooLarge,
}

/// Where the head ends (after the blank line), if it has arrived.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

pub fn parse_head(head: &[u8]) -> Result<Request, HeadError> {
    let text = std::str::from_utf8(head).map_err(|_| HeadError::Malformed)?;
    let mut lines = text.split("\r\n");
    let mut parts = lines.next().unwrap_or("").split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(HeadError::Malformed);
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() || !target.starts_with('/') {
        return Err(HeadError::Malformed);
    }
    let path = target.split('?').next().unwrap_or(target).to_owned();
    let mut accept: Option<String> = None;
    for line in lines.take_while(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(HeadError::Malformed);
        };
        if name.trim().eq_ignore_ascii_case("accept") {
            // Repeated headers are one comma-separated list.
            let v = value.trim();
            accept = Some(match accept {
                Some(a) => format!("{a},{v}"),
                None => v.to_owned(),
            });
        }
    }
    Ok(Request {
        method: method.to_owned(),
        path,
        accept,
    })
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Result<Request, HeadError>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&buf) {
            return Ok(parse_head(&buf[..end]));
        }
        if buf.len() > MAX_HEAD {
            return Ok(Err(HeadError::TooLarge));
        }
    }
}

struct Response {
    status: &'static str,
    content_type: &'static str,
    body: String,
    allow: bool,
}

impl Response {
    fn text(status: &'static str, body: &str) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
            allow: false,
        }
    }
}

async fn connection(
    mut stream: TcpStream,
    requests: &mpsc::Sender<SnapshotRequest>,
    tally: &SharedTally,
) -> std::io::Result<()> {
    let head = timeout(IO_TIMEOUT, read_head(&mut stream))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    let (resp, head_only) = match head {
        Err(HeadError::TooLarge) => (
            Response::text(
                "431 Request Header Fields Too Large",
                "request head too large",
            ),
            false,
        ),
        Err(HeadError::Malformed) => (Response::text("400 Bad Request", "bad request"), false),
        Ok(req) => {
            let head_only = req.method == "HEAD";
            (respond(&req, requests, tally).await, head_only)
        }
    };
    let mut out = format!(
        "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        resp.status,
        resp.content_type,
        resp.body.len()
    );
    if resp.allow {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(&resp.body);
    }
    timeout(IO_TIMEOUT, async {
        stream.write_all(out.as_bytes()).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

async fn respond(
    req: &Request,
    requests: &mpsc::Sender<SnapshotRequest>,
    tally: &SharedTally,
) -> Response {
    match req.path.as_str() {
        "/metrics" | "/" if req.method != "GET" && req.method != "HEAD" => Response {
            allow: true,
            ..Response::text("405 Method Not Allowed", "GET or HEAD only")
        },
        "/metrics" => scrape(req, requests, tally).await,
        "/" => Response::text("200 OK", "rst-trace: metrics at /metrics"),
        _ => Response::text("404 Not Found", "not found; metrics are at /metrics"),
    }
}

async fn scrape(
    req: &Request,
    requests: &mpsc::Sender<SnapshotRequest>,
    tally: &SharedTally,
) -> Response {
    let (ask, answer) = SnapshotRequest::new();
    let snap = timeout(SNAPSHOT_TIMEOUT, async {
        requests.send(ask).await.ok()?;
        answer.await.ok()
    })
    .await;
    let Ok(Some(snap)) = snap else {
        // The run loop is stopping, or too busy to answer in time.
        return Response::text("503 Service Unavailable", "the agent did not answer");
    };
    let format = Format::negotiate(req.accept.as_deref());
    match encode(snap, tally.series(), format) {
        Ok(body) => Response {
            status: "200 OK",
            content_type: format.content_type(),
            body,
            allow: false,
        },
        Err(e) => {
            log::warn!("metrics: {e}");
            Response::text("500 Internal Server Error", "encoding failed")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_heads() {
        let r = parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept: text/plain\r\naccept: application/openmetrics-text\r\n\r\n")
            .expect("valid");
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/metrics");
        assert_eq!(
            r.accept.as_deref(),
            Some("text/plain,application/openmetrics-text")
        );
        assert_eq!(
            parse_head(b"GET /metrics HTTP/1.0\r\n\r\n").map(|r| r.accept),
            Ok(None)
        );
        assert_eq!(parse_head(b"hello\r\n\r\n"), Err(HeadError::Malformed));
        assert_eq!(
            parse_head(b"GET /metrics SSH/2\r\n\r\n"),
            Err(HeadError::Malformed)
        );
        assert_eq!(
            parse_head(b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n"),
            Err(HeadError::Malformed)
        );
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
    }

    /// The server answers scrapes from a stand-in run loop, and survives clients that send
    /// garbage, too much, or nothing.
    #[tokio::test]
    async fn serves_and_survives_bad_clients() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, mut rx) = mpsc::channel::<SnapshotRequest>(4);
        let tally = SharedTally::new(20);
        tokio::spawn(serve(listener, tx, tally));
        tokio::spawn(async move {
            while let Some(r) = rx.recv().await {
                r.answer(crate::embed::Snapshot::default());
            }
        });
        async fn get(addr: std::net::SocketAddr, raw: &[u8]) -> String {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(raw).await.expect("write");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            out
        }
        drop(TcpStream::connect(addr).await.expect("connect"));
        assert!(get(addr, b"garbage\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 400"));
        let big = vec![b'a'; MAX_HEAD + 10];
        assert!(get(addr, &big).await.starts_with("HTTP/1.1 431"));
        assert!(get(addr, b"GET /x HTTP/1.1\r\n\r\n")
            .await
            .starts_with("HTTP/1.1 404"));
        let post = get(addr, b"POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405") && post.contains("Allow: GET, HEAD"));
        let om = get(
            addr,
            b"GET /metrics HTTP/1.1\r\nAccept: application/openmetrics-text;version=1.0.0\r\n\r\n",
        )
        .await;
        assert!(om.starts_with("HTTP/1.1 200 OK\r\n"), "{om}");
        assert!(om.contains(&format!(
            "Content-Type: {}\r\n",
            super::super::OPENMETRICS_CONTENT_TYPE
        )));
        assert!(om.ends_with("# EOF\n"), "{om}");
        let text = get(addr, b"GET /metrics HTTP/1.0\r\n\r\n").await;
        assert!(text.contains("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
        let head = get(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert!(head.ends_with("\r\n\r\n"), "{head}");
    }
}

//! A minimal blocking HTTP/1.1 client and server-side request reader, over plain TCP or
//! rustls. Enough for Matrix federation and client APIs on loopback: `Content-Length` and
//! chunked bodies, keep-alive, bounded sizes and timeouts everywhere.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::{ClientConnection, ServerConnection, StreamOwned};
use rustls_pki_types::ServerName;

/// Longest request/status/header line accepted.
const MAX_LINE: usize = 16 * 1024;
/// Most header lines accepted.
const MAX_HEADERS: usize = 128;
/// Largest body accepted.
pub const MAX_BODY: usize = 64 * 1024 * 1024;

/// A byte stream: plain TCP, or TLS as a client or a server.
pub enum Stream {
    Plain(TcpStream),
    Client(Box<StreamOwned<ClientConnection, TcpStream>>),
    Server(Box<StreamOwned<ServerConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.read(buf),
            Self::Client(s) => s.read(buf),
            Self::Server(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Plain(s) => s.write(buf),
            Self::Client(s) => s.write(buf),
            Self::Server(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Plain(s) => s.flush(),
            Self::Client(s) => s.flush(),
            Self::Server(s) => s.flush(),
        }
    }
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads one CRLF- (or LF-) terminated line without the terminator. `Ok(None)` at a clean
/// end of stream before any byte.
fn read_line(r: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = r.take(MAX_LINE as u64 + 1).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return Err(if buf.len() > MAX_LINE {
            bad("line too long")
        } else {
            io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-line")
        });
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| bad("line is not UTF-8"))
}

fn read_headers(r: &mut impl BufRead) -> io::Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let line = read_line(r)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "eof in headers"))?;
        if line.is_empty() {
            return Ok(headers);
        }
        if headers.len() >= MAX_HEADERS {
            return Err(bad("too many headers"));
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| bad(format!("bad header line {line:?}")))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Reads a body as framed by the headers. Without framing, a response body runs to the end
/// of the stream and a request has none.
fn read_body(
    r: &mut impl BufRead,
    headers: &[(String, String)],
    until_close: bool,
) -> io::Result<Vec<u8>> {
    if header(headers, "transfer-encoding").is_some_and(|t| !t.eq_ignore_ascii_case("identity")) {
        let mut body = Vec::new();
        loop {
            let line = read_line(r)?
                .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "eof in chunk"))?;
            let size_hex = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(size_hex, 16)
                .map_err(|_| bad(format!("bad chunk size {size_hex:?}")))?;
            if size == 0 {
                // Trailers, up to the empty line.
                while let Some(l) = read_line(r)? {
                    if l.is_empty() {
                        break;
                    }
                }
                return Ok(body);
            }
            if body.len() + size > MAX_BODY {
                return Err(bad("body too large"));
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            read_line(r)?;
        }
    }
    if let Some(len) = header(headers, "content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| bad(format!("bad content-length {len:?}")))?;
        if len > MAX_BODY {
            return Err(bad("body too large"));
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body)?;
        return Ok(body);
    }
    if until_close {
        let mut body = Vec::new();
        r.take(MAX_BODY as u64).read_to_end(&mut body)?;
        return Ok(body);
    }
    Ok(Vec::new())
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
    /// The Matrix `errcode` of an error body.
    pub fn errcode(&self) -> Option<String> {
        self.json()
            .get("errcode")
            .and_then(|e| e.as_str())
            .map(str::to_owned)
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// An HTTP request as the server side reads it.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The raw request target (path and query, as sent).
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
    /// The path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }
    /// The query string (without `?`).
    pub fn query(&self) -> &str {
        self.target.split_once('?').map(|(_, q)| q).unwrap_or("")
    }
}

/// Reads the next request of a connection; `Ok(None)` when the client closed it.
pub fn read_request(r: &mut impl BufRead) -> io::Result<Option<Request>> {
    let Some(line) = read_line(r)? else {
        return Ok(None);
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(bad(format!("bad request line {line:?}")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(bad(format!("unsupported HTTP version {version:?}")));
    }
    let (method, target) = (method.to_owned(), target.to_owned());
    let headers = read_headers(r)?;
    let body = read_body(r, &headers, false)?;
    Ok(Some(Request {
        method,
        target,
        headers,
        body,
    }))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        _ => "Status",
    }
}

/// Writes a complete response with a `Content-Length`.
pub fn write_response(
    w: &mut impl Write,
    status: u16,
    content_type: &str,
    body: &[u8],
    close: bool,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n",
        reason(status),
        body.len(),
        if close { "close" } else { "keep-alive" },
    );
    w.write_all(head.as_bytes())?;
    w.write_all(body)?;
    w.flush()
}

/// Resolves `host:port`, refusing anything that is not a loopback address: this tool only
/// ever talks to servers on the same machine.
pub fn resolve_loopback(host: &str, port: u16) -> io::Result<SocketAddr> {
    let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs()?.collect();
    addrs
        .iter()
        .find(|a| a.ip().is_loopback() && a.is_ipv4())
        .or_else(|| addrs.iter().find(|a| a.ip().is_loopback()))
        .copied()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{host}:{port} is not a loopback address"),
            )
        })
}

/// A keep-alive HTTP/1.1 connection to one server (plain or TLS), reconnecting when the
/// server closed an idle connection.
pub struct HttpClient {
    addr: SocketAddr,
    host_header: String,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    timeout: Duration,
    conn: Option<BufReader<Stream>>,
}

impl HttpClient {
    /// A plain-HTTP client for `host:port` (loopback only).
    pub fn plain(host: &str, port: u16, timeout: Duration) -> io::Result<Self> {
        Ok(Self {
            addr: resolve_loopback(host, port)?,
            host_header: format!("{host}:{port}"),
            tls: None,
            timeout,
            conn: None,
        })
    }

    /// A TLS client for `host:port` (loopback only) with the given rustls configuration;
    /// `host_header` is what the `Host` header says (a Matrix server name).
    pub fn tls(
        host: &str,
        port: u16,
        host_header: &str,
        config: Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> io::Result<Self> {
        let sni = ServerName::try_from(host.to_owned())
            .map_err(|e| bad(format!("bad TLS server name {host:?}: {e}")))?;
        Ok(Self {
            addr: resolve_loopback(host, port)?,
            host_header: host_header.to_owned(),
            tls: Some((config, sni)),
            timeout,
            conn: None,
        })
    }

    /// Changes the per-operation timeout (applies to the next connection).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
        self.conn = None;
    }

    fn connect(&self) -> io::Result<BufReader<Stream>> {
        let tcp = TcpStream::connect_timeout(&self.addr, self.timeout)?;
        tcp.set_read_timeout(Some(self.timeout))?;
        tcp.set_write_timeout(Some(self.timeout))?;
        tcp.set_nodelay(true)?;
        let stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some((config, sni)) => {
                let conn = ClientConnection::new(Arc::clone(config), sni.clone())
                    .map_err(|e| bad(format!("TLS: {e}")))?;
                Stream::Client(Box::new(StreamOwned::new(conn, tcp)))
            }
        };
        Ok(BufReader::with_capacity(64 * 1024, stream))
    }

    fn once(
        &mut self,
        head: &[u8],
        body: &[u8],
        fresh: bool,
    ) -> Result<Response, (bool, io::Error)> {
        if self.conn.is_none() {
            self.conn = Some(self.connect().map_err(|e| (false, e))?);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err((false, bad("no connection")));
        };
        // Any failure before the first byte of the answer on a reused connection means the
        // server had closed it: the caller may retry once on a fresh one.
        let retryable = |e: io::Error| (!fresh, e);
        let w = conn.get_mut();
        w.write_all(head).map_err(retryable)?;
        w.write_all(body).map_err(retryable)?;
        w.flush().map_err(retryable)?;
        let status_line = match read_line(conn) {
            Ok(Some(l)) => l,
            Ok(None) => {
                return Err((
                    !fresh,
                    io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"),
                ));
            }
            Err(e) => {
                let again = !fresh
                    && matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionReset
                            | io::ErrorKind::BrokenPipe
                            | io::ErrorKind::UnexpectedEof
                    );
                return Err((again, e));
            }
        };
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| (false, bad(format!("bad status line {status_line:?}"))))?;
        let headers = read_headers(conn).map_err(|e| (false, e))?;
        let close = header(&headers, "connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
        let body = read_body(conn, &headers, close).map_err(|e| (false, e))?;
        if close {
            self.conn = None;
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    /// Sends one request and reads the answer. `headers` are extra headers (`Host`,
    /// `Content-Length` are added).
    pub fn request(
        &mut self,
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> io::Result<Response> {
        let mut head = format!(
            "{method} {target} HTTP/1.1\r\nHost: {}\r\n",
            self.host_header
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        let body = body.unwrap_or_default();
        if !body.is_empty() || matches!(method, "POST" | "PUT") {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let fresh = self.conn.is_none();
        match self.once(head.as_bytes(), body, fresh) {
            Ok(r) => Ok(r),
            Err((true, _)) => {
                self.conn = None;
                self.once(head.as_bytes(), body, true).map_err(|(_, e)| {
                    self.conn = None;
                    e
                })
            }
            Err((false, e)) => {
                self.conn = None;
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_chunked_and_sized_bodies() {
        let raw = b"PUT /x?y=1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;ext\r\nde\r\n0\r\n\r\nGET /z HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi";
        let mut r = BufReader::new(&raw[..]);
        let a = read_request(&mut r).unwrap().unwrap();
        assert_eq!(
            (a.method.as_str(), a.path(), a.query()),
            ("PUT", "/x", "y=1")
        );
        assert_eq!(a.body, b"abcde");
        let b = read_request(&mut r).unwrap().unwrap();
        assert_eq!(b.body, b"hi");
        assert!(read_request(&mut r).unwrap().is_none());
    }

    #[test]
    fn refuses_oversized_lines_and_non_loopback() {
        let long = vec![b'a'; MAX_LINE + 10];
        assert!(read_request(&mut BufReader::new(&long[..])).is_err());
        assert!(resolve_loopback("8.8.8.8", 443).is_err());
        assert!(resolve_loopback("127.0.0.1", 1).is_ok());
    }
}

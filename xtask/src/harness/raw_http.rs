//! Requests written byte for byte, as no client library would send them.

use std::time::Duration;

use super::Resp;

/// Sends `request` (a whole HTTP/1.1 request, byte for byte, as no client library would) to
/// `base` (`http://127.0.0.1:PORT`) and reads the answer until the server closes. The body is
/// written from another thread, so a server that answers before reading it all (a 413) is heard
/// even if the rest of the write then fails.
pub fn raw_request(base: &str, request: Vec<u8>) -> Result<Resp, String> {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let stream = std::net::TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let sender = std::thread::spawn(move || {
        for chunk in request.chunks(64 * 1024) {
            if writer.write_all(chunk).is_err() {
                return;
            }
        }
        let _ = writer.flush();
    });
    let mut raw = Vec::new();
    let mut reader = stream;
    let mut buf = [0u8; 64 * 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                raw.extend_from_slice(&buf[..n]);
                if response_complete(&raw) {
                    break;
                }
            }
            // A reset after a complete answer (the server stopped reading the body) is fine.
            Err(_) if response_complete(&raw) => break,
            Err(e) => return Err(format!("read: {e} after {} bytes", raw.len())),
        }
    }
    let _ = reader.shutdown(std::net::Shutdown::Both);
    let _ = sender.join();
    parse_response(&raw)
}

/// Sends `requests` (each a whole HTTP/1.1 request without `connection: close`) one after
/// the other on one keep-alive connection, each once the previous answer is complete, and
/// returns each answer with the time from its request's first byte to its answer's last.
pub fn keep_alive(base: &str, requests: &[Vec<u8>]) -> Result<Vec<(Resp, Duration)>, String> {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let mut stream =
        std::net::TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut answers = Vec::new();
    let mut buf = [0u8; 64 * 1024];
    for (n, request) in requests.iter().enumerate() {
        let started = std::time::Instant::now();
        stream
            .write_all(request)
            .map_err(|e| format!("request {n}: {e}"))?;
        let mut raw = Vec::new();
        while !response_complete(&raw) {
            match stream.read(&mut buf) {
                Ok(0) => return Err(format!("request {n}: the connection closed")),
                Ok(k) => raw.extend_from_slice(&buf[..k]),
                Err(e) => return Err(format!("request {n}: {e} after {} bytes", raw.len())),
            }
        }
        answers.push((parse_response(&raw)?, started.elapsed()));
    }
    Ok(answers)
}

/// A message's head and body, split at the blank line.
pub fn split_head(raw: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    Some((&raw[..at], &raw[at + 4..]))
}

fn response_complete(raw: &[u8]) -> bool {
    let Some((head, body)) = split_head(raw) else {
        return false;
    };
    let head = String::from_utf8_lossy(head).to_ascii_lowercase();
    // These carry no body whatever their headers say.
    if [" 204 ", " 304 "]
        .iter()
        .any(|s| head.lines().next().is_some_and(|l| l.contains(s)))
    {
        return true;
    }
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return body.len() >= len;
    }
    if head.contains("transfer-encoding: chunked") {
        return body.ends_with(b"0\r\n\r\n");
    }
    false
}

fn parse_response(raw: &[u8]) -> Result<Resp, String> {
    let (head, body) = split_head(raw).ok_or_else(|| {
        format!(
            "no complete answer ({} bytes): {:?}",
            raw.len(),
            String::from_utf8_lossy(raw)
        )
    })?;
    let head = String::from_utf8_lossy(head);
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line in {head:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_vec()
    };
    Ok(Resp {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(at) = body.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(
            String::from_utf8_lossy(&body[..at])
                .split(';')
                .next()
                .unwrap_or("")
                .trim(),
            16,
        )
        .unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = at + 2;
        let end = (start + size).min(body.len());
        out.extend_from_slice(&body[start..end]);
        body = &body[(end + 2).min(body.len())..];
    }
    out
}

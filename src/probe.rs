//! `appserver probe`: one request straight to a running server, no web server needed.
//!
//! An operator's health check (`appserver probe /run/site.sock && echo up`) and the quickest
//! way to see a fresh install answer. It speaks the client side of the protocol codecs in
//! `appserver-proto`, sends a GET with the CGI variables a web server would send, prints the
//! CGI response to stdout (stderr records to stderr), and succeeds when the status is below 500.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use appserver_proto::fcgi::{self, ClientDecoder, ProtocolStatus, ResponseRecord, Role};
use appserver_proto::params::ParamsBuilder;
use appserver_proto::Limits;
use bytes::BytesMut;

/// What to probe.
#[derive(Clone, Debug)]
pub struct Probe {
    /// `host:port`, `[v6]:port`, or a unix socket path.
    pub address: String,
    /// Path and query to request.
    pub path: String,
    /// Read/write timeout.
    pub timeout: Duration,
}

/// The parsed outcome of a probe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeResponse {
    /// The status from the `Status:` header (200 when absent, as CGI says).
    pub status: u16,
    /// The raw CGI response (head and body).
    pub stdout: Vec<u8>,
    /// What the app wrote to FastCGI's stderr stream.
    pub stderr: Vec<u8>,
}

/// Why a probe failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// Occurs when the server cannot be reached or the connection fails.
    #[error("{address}: {source}")]
    Io {
        /// The probed address.
        address: String,
        /// The underlying error.
        source: io::Error,
    },
    /// Occurs when the server's bytes break the protocol.
    #[error("{address}: protocol error: {source}")]
    Protocol {
        /// The probed address.
        address: String,
        /// What was wrong.
        source: appserver_proto::ProtocolError,
    },
    /// Occurs when the server closes without completing the response.
    #[error("{address}: connection closed before the response ended")]
    Incomplete {
        /// The probed address.
        address: String,
    },
    /// Occurs when the server refuses the request (FCGI_OVERLOADED and friends).
    #[error("{address}: request rejected: {status:?}")]
    Rejected {
        /// The probed address.
        address: String,
        /// The protocol status.
        status: ProtocolStatus,
    },
}

trait Conn: Read + Write {}
impl<T: Read + Write> Conn for T {}

impl Probe {
    /// Sends one FastCGI GET and reads the whole response.
    pub fn fcgi(&self) -> Result<ProbeResponse, ProbeError> {
        let io_err = |source| ProbeError::Io {
            address: self.address.clone(),
            source,
        };
        let (mut stream, server_port): (Box<dyn Conn>, String) = if self.address.contains('/') {
            let s = UnixStream::connect(&self.address).map_err(io_err)?;
            s.set_read_timeout(Some(self.timeout)).map_err(io_err)?;
            s.set_write_timeout(Some(self.timeout)).map_err(io_err)?;
            (Box::new(s), "0".to_owned())
        } else {
            let s = TcpStream::connect(&self.address).map_err(io_err)?;
            s.set_read_timeout(Some(self.timeout)).map_err(io_err)?;
            s.set_write_timeout(Some(self.timeout)).map_err(io_err)?;
            let port = s.peer_addr().map_err(io_err)?.port().to_string();
            (Box::new(s), port)
        };

        let (path, query) = self.path.split_once('?').unwrap_or((&self.path, ""));
        let mut params = ParamsBuilder::new(Limits::default());
        for (name, value) in [
            ("GATEWAY_INTERFACE", "CGI/1.1"),
            ("SERVER_SOFTWARE", "appserver-probe"),
            ("REQUEST_METHOD", "GET"),
            ("REQUEST_URI", self.path.as_str()),
            ("QUERY_STRING", query),
            ("SCRIPT_NAME", ""),
            ("PATH_INFO", path),
            ("SERVER_NAME", "localhost"),
            ("SERVER_PORT", server_port.as_str()),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
            ("REMOTE_ADDR", "127.0.0.1"),
            ("CONTENT_LENGTH", ""),
            ("HTTP_HOST", "localhost"),
            ("HTTP_USER_AGENT", "appserver-probe"),
        ] {
            // The pairs above are far below every limit.
            params
                .push(name.as_bytes(), value.as_bytes())
                .map_err(|source| ProbeError::Protocol {
                    address: self.address.clone(),
                    source,
                })?;
        }
        let mut out = BytesMut::new();
        fcgi::encode_request(1, Role::Responder, false, &params.finish(), &mut out);
        fcgi::encode_stdin(1, b"", &mut out);
        stream.write_all(&out).map_err(io_err)?;

        let mut decoder = ClientDecoder::default();
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            while let Some(record) =
                decoder
                    .decode(&mut buf)
                    .map_err(|source| ProbeError::Protocol {
                        address: self.address.clone(),
                        source,
                    })?
            {
                match record {
                    ResponseRecord::Stdout { data, .. } => stdout.extend_from_slice(&data),
                    ResponseRecord::Stderr { data, .. } => stderr.extend_from_slice(&data),
                    ResponseRecord::EndRequest {
                        protocol_status, ..
                    } => {
                        if protocol_status != ProtocolStatus::RequestComplete {
                            return Err(ProbeError::Rejected {
                                address: self.address.clone(),
                                status: protocol_status,
                            });
                        }
                        let status = cgi_status(&stdout);
                        return Ok(ProbeResponse {
                            status,
                            stdout,
                            stderr,
                        });
                    }
                    ResponseRecord::GetValuesResult(_) | ResponseRecord::UnknownType(_) => {}
                }
            }
            let n = stream.read(&mut chunk).map_err(io_err)?;
            if n == 0 {
                return Err(ProbeError::Incomplete {
                    address: self.address.clone(),
                });
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// The status of a CGI response: its `Status:` header, 302 for a bare `Location:`, else 200.
pub fn cgi_status(response: &[u8]) -> u16 {
    let head_end = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(response.len());
    let mut location = false;
    for line in response[..head_end].split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"status") {
            if let Some(code) = value
                .get(..3)
                .and_then(|c| std::str::from_utf8(c).ok())
                .and_then(|c| c.parse().ok())
            {
                return code;
            }
        }
        if name.eq_ignore_ascii_case(b"location") {
            location = true;
        }
    }
    if location {
        302
    } else {
        200
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_from_cgi_head() {
        assert_eq!(cgi_status(b"Status: 404 Not Found\r\n\r\nx"), 404);
        assert_eq!(cgi_status(b"Location: /x\r\n\r\n"), 302);
        assert_eq!(
            cgi_status(b"Content-Type: text/plain\r\n\r\nStatus: 500"),
            200
        );
    }
}

//! `appserver probe`: one request straight to a running server, no web server needed.
//!
//! Speaks FastCGI, SCGI or AJP13. An operator's health check (`appserver probe /run/site.sock && echo up`) and the quickest
//! way to see a fresh install answer. It speaks the client side of the protocol codecs in
//! `appserver-proto`, sends a GET with the CGI variables a web server would send, prints the
//! CGI response to stdout (stderr records to stderr), and succeeds when the status is below 500.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use appserver_proto::fcgi::{self, ClientDecoder, ProtocolStatus, ResponseRecord, Role};
use appserver_proto::params::ParamsBuilder;
use appserver_proto::{Limits, Params};
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
    /// Sends one GET over `protocol` (`fcgi` or `scgi`) and reads the whole response.
    pub fn send(&self, protocol: &str) -> Result<ProbeResponse, ProbeError> {
        match protocol {
            "scgi" => self.scgi(),
            "ajp" => self.ajp(),
            _ => self.fcgi(),
        }
    }

    fn io_err(&self, source: io::Error) -> ProbeError {
        ProbeError::Io {
            address: self.address.clone(),
            source,
        }
    }

    fn proto_err(&self, source: appserver_proto::ProtocolError) -> ProbeError {
        ProbeError::Protocol {
            address: self.address.clone(),
            source,
        }
    }

    /// Connects; returns the stream and the server port to announce.
    fn connect(&self) -> Result<(Box<dyn Conn>, String), ProbeError> {
        let io_err = |e| self.io_err(e);
        if self.address.contains('/') {
            let s = UnixStream::connect(&self.address).map_err(io_err)?;
            s.set_read_timeout(Some(self.timeout)).map_err(io_err)?;
            s.set_write_timeout(Some(self.timeout)).map_err(io_err)?;
            Ok((Box::new(s), "0".to_owned()))
        } else {
            let s = TcpStream::connect(&self.address).map_err(io_err)?;
            s.set_read_timeout(Some(self.timeout)).map_err(io_err)?;
            s.set_write_timeout(Some(self.timeout)).map_err(io_err)?;
            let port = s.peer_addr().map_err(io_err)?.port().to_string();
            Ok((Box::new(s), port))
        }
    }

    /// The CGI variables a web server would send for a GET of `self.path`.
    fn params(&self, server_port: &str, with_content_length: bool) -> Result<Params, ProbeError> {
        let (path, query) = self.path.split_once('?').unwrap_or((&self.path, ""));
        let mut params = ParamsBuilder::new(Limits::default());
        if with_content_length {
            params
                .push(b"CONTENT_LENGTH", b"")
                .map_err(|e| self.proto_err(e))?;
        }
        for (name, value) in [
            ("GATEWAY_INTERFACE", "CGI/1.1"),
            ("SERVER_SOFTWARE", "appserver-probe"),
            ("REQUEST_METHOD", "GET"),
            ("REQUEST_URI", self.path.as_str()),
            ("QUERY_STRING", query),
            ("SCRIPT_NAME", ""),
            ("PATH_INFO", path),
            ("SERVER_NAME", "localhost"),
            ("SERVER_PORT", server_port),
            ("SERVER_PROTOCOL", "HTTP/1.1"),
            ("REMOTE_ADDR", "127.0.0.1"),
            ("HTTP_HOST", "localhost"),
            ("HTTP_USER_AGENT", "appserver-probe"),
        ] {
            params
                .push(name.as_bytes(), value.as_bytes())
                .map_err(|e| self.proto_err(e))?;
        }
        Ok(params.finish())
    }

    /// Sends one SCGI GET and reads the response until the server closes.
    pub fn scgi(&self) -> Result<ProbeResponse, ProbeError> {
        let (mut stream, server_port) = self.connect()?;
        let mut out = BytesMut::new();
        appserver_proto::scgi::encode_request(&self.params(&server_port, false)?, 0, &mut out);
        stream.write_all(&out).map_err(|e| self.io_err(e))?;
        let mut stdout = Vec::new();
        stream
            .read_to_end(&mut stdout)
            .map_err(|e| self.io_err(e))?;
        if stdout.is_empty() {
            return Err(ProbeError::Incomplete {
                address: self.address.clone(),
            });
        }
        Ok(ProbeResponse {
            status: cgi_status(&stdout),
            stdout,
            stderr: Vec::new(),
        })
    }

    /// Sends one AJP13 GET (`FORWARD_REQUEST`, no body) and reads until `END_RESPONSE`. The
    /// response is printed as a CGI head (`Status:` and the headers) and the body.
    pub fn ajp(&self) -> Result<ProbeResponse, ProbeError> {
        use appserver_proto::ajp::{self, Attributes, ContainerPacket, ForwardRequest};
        use bytes::Bytes;

        let (mut stream, server_port) = self.connect()?;
        let (path, query) = self.path.split_once('?').unwrap_or((&self.path, ""));
        let req = ForwardRequest {
            method: Bytes::from_static(b"GET"),
            protocol: Bytes::from_static(b"HTTP/1.1"),
            req_uri: Bytes::from(path.to_owned()),
            remote_addr: Bytes::from_static(b"127.0.0.1"),
            remote_host: None,
            server_name: Bytes::from_static(b"localhost"),
            server_port: server_port.parse().unwrap_or(0),
            is_ssl: false,
            headers: vec![
                (
                    Bytes::from_static(b"host"),
                    Bytes::from_static(b"localhost"),
                ),
                (
                    Bytes::from_static(b"user-agent"),
                    Bytes::from_static(b"appserver-probe"),
                ),
            ],
            attributes: Attributes {
                query_string: (!query.is_empty()).then(|| Bytes::from(query.to_owned())),
                ..Attributes::default()
            },
            content_length: None,
            chunked: false,
        };
        let mut out = BytesMut::new();
        // Two short headers always fit one packet.
        let _ = ajp::encode_forward_request(&req, &mut out);
        stream.write_all(&out).map_err(|e| self.io_err(e))?;

        let mut decoder = ajp::ClientDecoder::new(appserver_proto::limits::AJP_MAX_PACKET_SIZE);
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut stdout = Vec::new();
        let mut status = 0;
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            while let Some(packet) = decoder.decode(&mut buf).map_err(|e| self.proto_err(e))? {
                match packet {
                    ContainerPacket::SendHeaders(head) => {
                        status = head.status;
                        stdout.extend_from_slice(
                            format!(
                                "Status: {} {}\r\n",
                                head.status,
                                String::from_utf8_lossy(&head.reason)
                            )
                            .as_bytes(),
                        );
                        for (name, value) in &head.headers {
                            stdout.extend_from_slice(name);
                            stdout.extend_from_slice(b": ");
                            stdout.extend_from_slice(value);
                            stdout.extend_from_slice(b"\r\n");
                        }
                        stdout.extend_from_slice(b"\r\n");
                    }
                    ContainerPacket::SendBodyChunk(data) => stdout.extend_from_slice(&data),
                    ContainerPacket::EndResponse { .. } => {
                        return Ok(ProbeResponse {
                            status,
                            stdout,
                            stderr: Vec::new(),
                        })
                    }
                    // No body was announced, so there is nothing to send.
                    ContainerPacket::GetBodyChunk(_) | ContainerPacket::CPong => {}
                }
            }
            let n = stream.read(&mut chunk).map_err(|e| self.io_err(e))?;
            if n == 0 {
                return Err(ProbeError::Incomplete {
                    address: self.address.clone(),
                });
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends one FastCGI GET and reads the whole response.
    pub fn fcgi(&self) -> Result<ProbeResponse, ProbeError> {
        let (mut stream, server_port) = self.connect()?;
        let mut out = BytesMut::new();
        fcgi::encode_request(
            1,
            Role::Responder,
            false,
            &self.params(&server_port, true)?,
            &mut out,
        );
        fcgi::encode_stdin(1, b"", &mut out);
        stream.write_all(&out).map_err(|e| self.io_err(e))?;

        let mut decoder = ClientDecoder::default();
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            while let Some(record) = decoder.decode(&mut buf).map_err(|e| self.proto_err(e))? {
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
                        return Ok(ProbeResponse {
                            status: cgi_status(&stdout),
                            stdout,
                            stderr,
                        });
                    }
                    ResponseRecord::GetValuesResult(_) | ResponseRecord::UnknownType(_) => {}
                }
            }
            let n = stream.read(&mut chunk).map_err(|e| self.io_err(e))?;
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

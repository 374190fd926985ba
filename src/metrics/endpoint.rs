//! Where Prometheus gets the numbers: an HTTP endpoint (`--metrics ADDR`, loopback unless
//! asked otherwise) and a textfile for node_exporter's textfile collector
//! (`--metrics-textfile PATH`), both rendering a fresh snapshot each time.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use super::exposition;

#[derive(Debug, Error)]
pub enum EndpointError {
    #[error(
        "--metrics {0}: not a loopback address; the numbers name operations and key services, \
         so serving them beyond this host must be asked for with --metrics-allow-remote"
    )]
    NotLoopback(SocketAddr),
    #[error("--metrics {addr}: {reason}")]
    Bind { addr: SocketAddr, reason: String },
    #[error("--metrics-textfile {path}: {source}")]
    Textfile {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// How often the textfile is rewritten.
pub const TEXTFILE_INTERVAL: Duration = Duration::from_secs(15);

/// Serves `GET /metrics` on `addr` from a thread of its own, for the life of the process.
/// Returns the address bound (the port, when 0 was asked for).
pub fn serve(addr: SocketAddr, allow_remote: bool) -> Result<SocketAddr, EndpointError> {
    if !addr.ip().is_loopback() && !allow_remote {
        return Err(EndpointError::NotLoopback(addr));
    }
    let server = tiny_http::Server::http(addr).map_err(|e| EndpointError::Bind {
        addr,
        reason: e.to_string(),
    })?;
    let bound = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| EndpointError::Bind {
            addr,
            reason: "not an IP address".into(),
        })?;
    std::thread::Builder::new()
        .name("sealfs-metrics".into())
        .spawn(move || {
            for request in server.incoming_requests() {
                let path = request.url().split('?').next().unwrap_or_default();
                let response = match (request.method(), path) {
                    (tiny_http::Method::Get, "/metrics") => {
                        let body = exposition::render(&super::global().snapshot());
                        tiny_http::Response::from_string(body).with_header(
                            tiny_http::Header::from_bytes(
                                &b"Content-Type"[..],
                                exposition::CONTENT_TYPE.as_bytes(),
                            )
                            .expect("a valid header"),
                        )
                    }
                    (tiny_http::Method::Get, "/") => {
                        tiny_http::Response::from_string("sealfs: metrics at /metrics\n")
                    }
                    _ => tiny_http::Response::from_string("not found\n").with_status_code(404),
                };
                if let Err(e) = request.respond(response) {
                    tracing::debug!(error = %e, "metrics: answering a scrape failed");
                }
            }
        })
        .map_err(|e| EndpointError::Bind {
            addr,
            reason: e.to_string(),
        })?;
    tracing::info!(%bound, "metrics served at http://{bound}/metrics");
    Ok(bound)
}

/// Writes the metrics to `path` now (atomically: a temp file renamed over it).
pub fn write_textfile(path: &Path) -> Result<(), EndpointError> {
    let failed = |source| EndpointError::Textfile {
        path: path.to_path_buf(),
        source,
    };
    let body = exposition::render(&super::global().snapshot());
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut file| file.write_all(body.as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, path));
    written.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        failed(e)
    })
}

/// Rewrites the textfile every `TEXTFILE_INTERVAL` from a thread of its own. The first write
/// happens before this returns, so a path that cannot be written fails the mount.
pub fn keep_textfile(path: PathBuf) -> Result<(), EndpointError> {
    write_textfile(&path)?;
    let textfile = path.clone();
    std::thread::Builder::new()
        .name("sealfs-textfile".into())
        .spawn(move || {
            loop {
                std::thread::sleep(TEXTFILE_INTERVAL);
                if let Err(e) = write_textfile(&path) {
                    tracing::warn!(error = %e, "metrics textfile not written");
                }
            }
        })
        .map_err(|source| EndpointError::Textfile {
            path: textfile,
            source,
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_loopback_address_is_refused_unless_asked_for() {
        let addr: SocketAddr = "0.0.0.0:0".parse().unwrap();
        assert!(matches!(
            serve(addr, false),
            Err(EndpointError::NotLoopback(_))
        ));
    }

    #[test]
    fn the_endpoint_answers_a_scrape() {
        let bound = serve("127.0.0.1:0".parse().unwrap(), false).unwrap();
        let mut stream = std::net::TcpStream::connect(bound).unwrap();
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        std::io::Read::read_to_string(&mut stream, &mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"));
        assert!(
            answer.contains("# TYPE sealfs_uptime_seconds gauge"),
            "{answer}"
        );
    }

    #[test]
    fn the_textfile_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sealfs.prom");
        write_textfile(&path).unwrap();
        write_textfile(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("sealfs_kek_version"));
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temp file left"
        );
    }
}

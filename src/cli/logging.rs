//! Logs go to stderr, or to syslog once the mount daemon has detached from its terminal.

use std::ffi::CString;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

static SYSLOG: AtomicBool = AtomicBool::new(false);

pub fn init(verbose: bool) {
    let default = if verbose { "debug" } else { "info" };
    let filter = EnvFilter::try_from_env("SEALFS_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(Sink)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

pub fn to_syslog() {
    let ident = CString::new("sealfs").expect("no NUL");
    // openlog keeps the pointer: leak the one identifier for the life of the process.
    unsafe { libc::openlog(ident.into_raw(), libc::LOG_PID, libc::LOG_DAEMON) };
    SYSLOG.store(true, Ordering::Release);
}

struct Sink;

enum Writer {
    Stderr(std::io::Stderr),
    Syslog(Vec<u8>),
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = Writer;
    fn make_writer(&'a self) -> Writer {
        if SYSLOG.load(Ordering::Acquire) {
            Writer::Syslog(Vec::new())
        } else {
            Writer::Stderr(std::io::stderr())
        }
    }
}

impl Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Writer::Stderr(e) => e.write(buf),
            Writer::Syslog(line) => {
                line.extend_from_slice(buf);
                Ok(buf.len())
            }
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Writer::Syslog(line) = self {
            let text = String::from_utf8_lossy(line).replace('\0', " ");
            if let Ok(c) = CString::new(text.trim_end()) {
                unsafe { libc::syslog(libc::LOG_NOTICE, c"%s".as_ptr(), c.as_ptr()) };
            }
        }
    }
}

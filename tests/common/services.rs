//! Real key services for tests: moto's KMS server, a fault-injecting loopback proxy in front
//! of it (moto neither throttles nor enforces key states), and a SoftHSM2 token.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub mod juicefs;

fn moto_binary() -> PathBuf {
    if let Ok(path) = std::env::var("SEALFS_MOTO") {
        return PathBuf::from(path);
    }
    let ci = Path::new("/opt/sealfs-ci/venv/bin/moto_server");
    if ci.exists() {
        return ci.to_path_buf();
    }
    panic!("moto_server not found: run `bash .ci/setup` (or set SEALFS_MOTO)");
}

pub struct Moto {
    child: Child,
    pub port: u16,
}

impl Moto {
    pub fn start() -> Moto {
        let mut child = Command::new(moto_binary())
            .args(["-H", "127.0.0.1", "-p", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start moto_server");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("Running on http://127.0.0.1:").nth(1)
                    && let (Some(tx), Ok(port)) =
                        (tx.take(), rest.trim().trim_end_matches('/').parse::<u16>())
                {
                    let _ = tx.send(port);
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("moto_server did not start");
        Moto { child, port }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Runs `call` with a KMS client of this server.
    fn with_client<T, F: std::future::Future<Output = T>>(
        &self,
        call: impl FnOnce(aws_sdk_kms::Client) -> F,
    ) -> T {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let config = aws_sdk_kms::Config::builder()
            .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
            .endpoint_url(self.endpoint())
            .region(aws_sdk_kms::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_kms::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .build();
        runtime.block_on(call(aws_sdk_kms::Client::from_conf(config)))
    }

    /// Creates a symmetric key; returns its ARN.
    pub fn create_key(&self) -> String {
        self.with_client(|client| async move {
            let key = client.create_key().send().await.expect("CreateKey");
            key.key_metadata().unwrap().arn().unwrap().to_string()
        })
    }

    /// Moves key `arn` to `state` in moto ("Disabled", "Enabled", "PendingDeletion"), and
    /// returns the state moto reports then. moto records the state but does not enforce it
    /// on Decrypt: the fault proxy answers for the key as KMS would (`FaultProxy::key_state`).
    pub fn set_key_state(&self, arn: &str, state: &str) -> String {
        // moto keys its keys by id, not ARN.
        let arn = arn.rsplit('/').next().unwrap().to_string();
        let state = state.to_string();
        self.with_client(|client| async move {
            match state.as_str() {
                "Disabled" => {
                    client
                        .disable_key()
                        .key_id(&arn)
                        .send()
                        .await
                        .expect("DisableKey");
                }
                "Enabled" => {
                    client
                        .enable_key()
                        .key_id(&arn)
                        .send()
                        .await
                        .expect("EnableKey");
                }
                "PendingDeletion" => {
                    client
                        .schedule_key_deletion()
                        .key_id(&arn)
                        .pending_window_in_days(7)
                        .send()
                        .await
                        .expect("ScheduleKeyDeletion");
                }
                other => panic!("unknown key state {other}"),
            }
            let described = client
                .describe_key()
                .key_id(&arn)
                .send()
                .await
                .expect("DescribeKey");
            format!(
                "{:?}",
                described.key_metadata().unwrap().key_state().unwrap()
            )
        })
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A moto KMS server with one key, reached through a fault proxy.
pub struct Kms {
    pub moto: Moto,
    pub proxy: FaultProxy,
    /// The key's ARN.
    pub key: String,
}

/// Starts moto, creates a key and puts a fault proxy in front.
pub fn kms() -> Kms {
    let moto = Moto::start();
    let key = moto.create_key();
    let proxy = FaultProxy::start(moto.port);
    Kms { moto, proxy, key }
}

/// What the proxy does with the next requests.
#[derive(Clone, Debug, PartialEq)]
pub enum Fault {
    Pass,
    /// Connections are accepted and dropped at once: a KMS that is down.
    Down,
    /// Every request gets this HTTP status and KMS error code.
    Error(u16, &'static str),
    /// The next N requests get the error, then requests pass again.
    ErrorTimes(usize, u16, &'static str),
}

/// A loopback HTTP proxy to moto that can fail on command, and counts the requests it passes
/// by their X-Amz-Target (TrentService.Decrypt, ...).
pub struct FaultProxy {
    pub port: u16,
    fault: Arc<Mutex<Fault>>,
    counts: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
    /// Requests passed on, as (X-Amz-Target, JSON body).
    bodies: Arc<Mutex<Vec<(String, String)>>>,
    /// Keys answered with an error whatever the request (a key state moto does not enforce).
    key_faults: Arc<Mutex<Vec<KeyFault>>>,
    /// X-Amz-Target of each request answered by a key fault.
    refused: Arc<Mutex<Vec<String>>>,
}

impl FaultProxy {
    pub fn start(upstream: u16) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let fault = Arc::new(Mutex::new(Fault::Pass));
        let counts = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let key_faults = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(Mutex::new(Vec::new()));
        let (f, c, n) = (fault.clone(), counts.clone(), connections.clone());
        let (b, k, r) = (bodies.clone(), key_faults.clone(), refused.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                n.fetch_add(1, Ordering::Relaxed);
                let (f, c) = (f.clone(), c.clone());
                let log = Log {
                    bodies: b.clone(),
                    key_faults: k.clone(),
                    refused: r.clone(),
                };
                std::thread::spawn(move || serve(client, upstream, &f, &c, &log));
            }
        });
        FaultProxy {
            port,
            fault,
            counts,
            connections,
            bodies,
            key_faults,
            refused,
        }
    }

    /// Answers every request naming key `arn` as KMS does for a key in `state`: "Disabled"
    /// (DisabledException), "PendingDeletion" (KMSInvalidStateException) or "Enabled".
    pub fn key_state(&self, arn: &str, state: &str) {
        let mut faults = self.key_faults.lock().unwrap();
        faults.retain(|(key, _, _)| key != arn);
        match state {
            "Enabled" => {}
            "Disabled" => faults.push((arn.to_string(), 400, "DisabledException")),
            "PendingDeletion" => faults.push((arn.to_string(), 400, "KMSInvalidStateException")),
            other => panic!("unknown key state {other}"),
        }
    }

    /// How many requests with this target a key state set by `key_state` answered.
    pub fn refused(&self, op: &str) -> usize {
        let target = format!("TrentService.{op}");
        self.refused
            .lock()
            .unwrap()
            .iter()
            .filter(|t| **t == target)
            .count()
    }

    /// The JSON bodies of the requests with this target passed to moto so far.
    pub fn bodies(&self, op: &str) -> Vec<serde_json::Value> {
        let target = format!("TrentService.{op}");
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t == target)
            .filter_map(|(_, body)| serde_json::from_str(body).ok())
            .collect()
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }

    /// Requests passed to moto so far with this target, e.g. "Decrypt".
    pub fn count(&self, op: &str) -> usize {
        let target = format!("TrentService.{op}");
        self.counts
            .lock()
            .unwrap()
            .iter()
            .filter(|t| **t == target)
            .count()
    }
}

/// Reads one HTTP/1.1 message (headers and Content-Length body), with its X-Amz-Target.
fn read_message(stream: &mut TcpStream) -> Option<(Vec<u8>, String)> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let header = |name: &str| {
        head.lines()
            .find(|l| l.to_ascii_lowercase().starts_with(&format!("{name}:")))
            .map(|l| l.split_once(':').unwrap().1.trim().to_string())
    };
    let len: usize = header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let target = header("x-amz-target").unwrap_or_default();
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body).ok()?;
    buf.extend_from_slice(&body);
    Some((buf, target))
}

/// One request at a time, each checked against the current fault, so a fault takes effect
/// on connections the client already holds.
/// A key answered with an error whatever the request: (key ARN, HTTP status, KMS code).
type KeyFault = (String, u16, &'static str);

/// What the proxy keeps per request besides counts.
struct Log {
    bodies: Arc<Mutex<Vec<(String, String)>>>,
    key_faults: Arc<Mutex<Vec<KeyFault>>>,
    refused: Arc<Mutex<Vec<String>>>,
}

fn serve(
    mut client: TcpStream,
    upstream: u16,
    fault: &Mutex<Fault>,
    counts: &Mutex<Vec<String>>,
    log: &Log,
) {
    let mut server: Option<TcpStream> = None;
    loop {
        if *fault.lock().unwrap() == Fault::Down {
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
        let Some((request, target)) = read_message(&mut client) else {
            return;
        };
        let text = String::from_utf8_lossy(&request).to_string();
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        let key_fault = log
            .key_faults
            .lock()
            .unwrap()
            .iter()
            .find(|(arn, _, _)| body.contains(arn.as_str()))
            .map(|(_, status, code)| Fault::Error(*status, code));
        if key_fault.is_some() {
            log.refused.lock().unwrap().push(target.clone());
        }
        let current = key_fault.unwrap_or_else(|| {
            let mut fault = fault.lock().unwrap();
            let current = fault.clone();
            if let Fault::ErrorTimes(n, status, code) = current {
                *fault = if n > 1 {
                    Fault::ErrorTimes(n - 1, status, code)
                } else {
                    Fault::Pass
                };
                Fault::Error(status, code)
            } else {
                current
            }
        });
        match current {
            Fault::Down => {
                let _ = client.shutdown(Shutdown::Both);
                return;
            }
            Fault::Error(status, code) => {
                let body =
                    format!("{{\"__type\":\"{code}\",\"message\":\"injected by the test proxy\"}}");
                let response = format!(
                    "HTTP/1.1 {status} Injected\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if client.write_all(response.as_bytes()).is_err() {
                    return;
                }
            }
            Fault::Pass | Fault::ErrorTimes(..) => {
                log.bodies.lock().unwrap().push((target.clone(), body));
                counts.lock().unwrap().push(target);
                if server.is_none() {
                    server = TcpStream::connect(("127.0.0.1", upstream)).ok();
                }
                let Some(up) = server.as_mut() else { return };
                if up.write_all(&request).is_err() {
                    return;
                }
                let Some((response, _)) = read_message(up) else {
                    return;
                };
                if client.write_all(&response).is_err() {
                    return;
                }
            }
        }
    }
}

/// Environment for sealfs processes talking to KMS through `endpoint`.
pub fn kms_env(endpoint: &str) -> Vec<(String, String)> {
    [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_ENDPOINT_URL_KMS", endpoint),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
pub const TOKEN: &str = "sealfs-test";
pub const PIN: &str = "1234-test-pin";
pub const KEYS: [&str; 2] = ["kek-a", "kek-b"];

/// The options naming `key` on the test token.
pub fn hsm_key_args(key: &str) -> Vec<&str> {
    vec![
        "--pkcs11-token",
        TOKEN,
        "--pkcs11-key",
        key,
        "--pkcs11-module",
        SOFTHSM_MODULE,
    ]
}

pub struct SoftHsm {
    /// The token's own directory (removed with it).
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
}

/// A token of the calling test's own, in a directory and SOFTHSM2_CONF of its own, holding
/// two sensitive, non-extractable AES-256 keys. SoftHSM keeps a token as files that a failed
/// login rewrites, and a process scanning the directory meanwhile finds no token at all: with
/// one token per test, no test's wrong PIN can reach another test's scan. Keep it alive as
/// long as the volumes that use it.
pub fn softhsm() -> SoftHsm {
    assert!(
        Path::new(SOFTHSM_MODULE).exists(),
        "SoftHSM2 missing: run `bash .ci/setup`"
    );
    {
        let dir = tempfile::Builder::new()
            .prefix("sealfs-softhsm-")
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(dir.path().join("tokens")).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                dir.path().join("tokens").display()
            ),
        )
        .unwrap();
        let out = Command::new("softhsm2-util")
            .args([
                "--init-token",
                "--free",
                "--label",
                TOKEN,
                "--pin",
                PIN,
                "--so-pin",
                "5678-so-pin",
            ])
            .env("SOFTHSM2_CONF", &conf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The entry point is an ignored test (see `make_hsm_keys_helper!`): `--ignored` runs
        // it; its marker proves it ran (a filter that matches nothing also exits 0).
        let out = Command::new(std::env::current_exe().unwrap())
            .env("SOFTHSM2_CONF", &conf)
            .env(MAKE_HSM_KEYS_ENV, "1")
            .args([
                "make_hsm_keys_helper",
                "--exact",
                "--ignored",
                "--nocapture",
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(HSM_KEYS_MADE),
            "key generation in a child process: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        SoftHsm { dir, conf }
    }
}

/// Set for the child process `softhsm()` starts to generate the token's keys.
const MAKE_HSM_KEYS_ENV: &str = "SEALFS_TEST_MAKE_HSM_KEYS";
/// What that child prints once the keys exist.
const HSM_KEYS_MADE: &str = "sealfs-test: HSM keys made";

/// Defines `make_hsm_keys_helper`, the subprocess entry point `softhsm()` runs in a child
/// of the current test binary (`make_hsm_keys_helper --exact --ignored`). Every test binary
/// that calls `softhsm()` needs it, once, at its root: `crate::make_hsm_keys_helper!();`.
/// It is an ignored test, so no run counts it as one of its tests.
#[macro_export]
macro_rules! make_hsm_keys_helper {
    () => {
        /// Not a test: the child process `softhsm()` starts to generate the token's keys.
        #[test]
        #[ignore = "subprocess entry point, run by its parent"]
        fn make_hsm_keys_helper() {
            $crate::common::services::make_hsm_keys_in_child();
        }
    };
}

/// The body of `make_hsm_keys_helper`: generates the keys when `softhsm()` started this
/// process for it, and does nothing in a run that merely includes ignored tests.
pub fn make_hsm_keys_in_child() {
    if std::env::var_os(MAKE_HSM_KEYS_ENV).is_none() {
        eprintln!("not a test: the entry point softhsm() runs in a child process");
        return;
    }
    make_hsm_keys();
    println!("{HSM_KEYS_MADE}");
}

/// Generates the test keys on the token; runs in a child test process so that this
/// process's PKCS#11 state stays untouched.
fn make_hsm_keys() {
    use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
    use cryptoki::mechanism::Mechanism;
    use cryptoki::object::Attribute;
    use cryptoki::session::UserType;
    let ctx = Pkcs11::new(SOFTHSM_MODULE).unwrap();
    ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let slot = ctx
        .get_slots_with_token()
        .unwrap()
        .into_iter()
        .find(|s| ctx.get_token_info(*s).unwrap().label().trim_end() == TOKEN)
        .unwrap();
    let session = ctx.open_rw_session(slot).unwrap();
    session
        .login(
            UserType::User,
            Some(&cryptoki::types::AuthPin::new(PIN.into())),
        )
        .unwrap();
    for label in KEYS {
        session
            .generate_key(
                &Mechanism::AesKeyGen,
                &[
                    Attribute::Token(true),
                    Attribute::Private(true),
                    Attribute::Sensitive(true),
                    Attribute::Extractable(false),
                    Attribute::Encrypt(true),
                    Attribute::Decrypt(true),
                    Attribute::ValueLen(32.into()),
                    Attribute::Label(label.as_bytes().to_vec()),
                ],
            )
            .unwrap();
    }
}

impl SoftHsm {
    pub fn env(&self) -> Vec<(String, String)> {
        vec![(
            "SOFTHSM2_CONF".into(),
            self.conf.to_string_lossy().into_owned(),
        )]
    }
}

/// The Python that .ci/setup installs (the venv of the test services): the tests drive
/// sqlite and fcntl/flock locks through its standard library, as programs do.
pub fn python() -> PathBuf {
    let path = std::env::var_os("SEALFS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/sealfs-ci/venv/bin/python3"));
    assert!(
        path.exists(),
        "Python not found at {} (run .ci/setup, or set SEALFS_PYTHON)",
        path.display()
    );
    path
}

//! Hooks for crash and timing tests, at named points of the code; they do nothing in release
//! builds.

/// Debug builds only, for tests of what others see while this process is slow at a point:
/// `SEALFS_SLOW_AT=<point>:<milliseconds>` sleeps there. Compiled out of release builds.
pub fn slow_point(point: &str) {
    #[cfg(debug_assertions)]
    if let Some(ms) = std::env::var("SEALFS_SLOW_AT").ok().and_then(|v| {
        let (at, ms) = v.split_once(':')?;
        (at == point).then(|| ms.parse::<u64>().ok())?
    }) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}

/// Debug builds only, for crash tests: `SEALFS_CRASH_AT=<point>` kills this process with
/// SIGKILL at that point, exactly as `kill -9` would. Compiled out of release builds.
pub fn crash_point(point: &str) {
    #[cfg(debug_assertions)]
    if std::env::var_os("SEALFS_CRASH_AT").is_some_and(|v| v == point) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::SIGKILL);
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}

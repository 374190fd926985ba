//! Process hardening for anything that holds keys: no core dumps, and memory locked against
//! swap where the process may lock it, with a warning where it may not.

use nix::sys::resource::{RLIM_INFINITY, Resource, getrlimit, setrlimit};

/// CAP_IPC_LOCK: mlock without regard to RLIMIT_MEMLOCK.
const CAP_IPC_LOCK: u32 = 14;

pub fn protect_process() {
    let _ = setrlimit(Resource::RLIMIT_CORE, 0, 0);
    // Not dumpable: no core file even if the limit is raised again, no ptrace attach by other
    // processes of the same user. Only as root: a non-root process that is not dumpable can no
    // longer use its own /proc/self/fd, which the mount needs.
    if nix::unistd::geteuid().is_root() {
        // SAFETY: prctl with integer arguments only.
        unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    }
    lock_memory();
}

/// mlockall(MCL_FUTURE) makes every later allocation fail once RLIMIT_MEMLOCK is reached, so
/// lock only when the limit cannot be reached: unlimited, or CAP_IPC_LOCK. Memory locks are not
/// inherited across fork: the mount daemon calls this again in the child.
pub fn lock_memory() {
    let unlimited =
        getrlimit(Resource::RLIMIT_MEMLOCK).is_ok_and(|(soft, _)| soft == RLIM_INFINITY);
    if !(unlimited || has_capability(CAP_IPC_LOCK)) {
        let limit = getrlimit(Resource::RLIMIT_MEMLOCK)
            .map(|(soft, _)| format!("{} KiB", soft / 1024))
            .unwrap_or_else(|_| "unknown".into());
        tracing::warn!(
            "key memory is not locked and may be swapped out: RLIMIT_MEMLOCK is {limit} and \
             CAP_IPC_LOCK is missing (systemd: LimitMEMLOCK=infinity)"
        );
        return;
    }
    // SAFETY: plain flags; MCL_ONFAULT locks pages as they are touched instead of at once.
    let locked =
        unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) };
    if locked != 0 {
        tracing::warn!(
            "key memory is not locked: mlockall failed: {}",
            std::io::Error::last_os_error()
        );
    } else {
        tracing::debug!("memory locked (mlockall)");
    }
}

fn has_capability(bit: u32) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << bit) != 0)
}

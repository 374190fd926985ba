//! A forward mount's session, assembled here rather than in the binary so tests reach it
//! without a process: the guards a mount holds for its whole life (the header store's
//! shared lock that keeps `fsck --repair` out, the claim on the cipher dir on every host that
//! shares it, with its record kept current by the config follower) and the `SealFs` that
//! serves it. The CLI parses options, calls `Session::open`, then hands `fs` to FUSE.

use std::fs::File;
use std::os::fd::AsFd;

use crate::coord::claim::{Claim, ClaimMode, claim_waiting};
use crate::fs::{SealFs, Tuning};
use crate::volume::audit::AuditLog;
use crate::volume::{Result, Volume, VolumeError};

/// What a mount holds until its process ends; dropped after the FUSE session.
pub struct Held {
    _claim: Claim,
    _no_repair: nix::fcntl::Flock<File>,
}

/// An opened mount, not yet handed to FUSE.
pub struct Session {
    pub fs: SealFs,
    pub held: Held,
}

impl Session {
    /// Claims `volume` for one mount (alone, or shared when `tuning.shared`) and builds the
    /// filesystem that serves it. A claim held only by a mount of this host that is on its
    /// way out (umount(8) returns a moment before its daemon exits) is waited for while
    /// `unmounted` says no mount of the cipher dir is left. `audit` opens the volume's audit
    /// log once the claim is held (a refused mount records nothing).
    pub fn open(
        mut volume: Volume,
        read_only: bool,
        tuning: Tuning,
        unmounted: impl Fn() -> bool,
        audit: impl FnOnce(&Volume) -> Option<AuditLog>,
    ) -> Result<Session> {
        let no_repair = volume.headers.lock_shared().map_err(|_| {
            VolumeError::InUse(
                "`sealfs fsck --repair` is running on this volume; mount it when it is done".into(),
            )
        })?;
        let mode = if tuning.shared {
            volume.backing.require_shareable(&volume.path)?;
            ClaimMode::Shared
        } else {
            if !volume.backing.coherent() {
                tracing::info!(
                    "the cipher dir is on {}: no other host can mount it while this mount holds it; mount it with -o shared on every host to share it",
                    volume.backing.fs_type
                );
            }
            ClaimMode::Exclusive
        };
        let kind = volume.backing.claim_lock_kind()?;
        let claim = claim_waiting(volume.root.as_fd(), mode, kind, "mount", unmounted)?;
        if let Some(record) = claim.record_updater() {
            crate::volume::follow::spawn_reporting(volume.follower.clone(), record);
        }
        if let Some(log) = audit(&volume) {
            volume.set_audit(log);
        }
        Ok(Session {
            fs: SealFs::new(volume, read_only, tuning)?,
            held: Held {
                _claim: claim,
                _no_repair: no_repair,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::scratch::Scratch;

    struct Volumes(Scratch);

    impl Volumes {
        fn new() -> Self {
            Volumes(Scratch::new())
        }

        fn cipher(&self) -> std::path::PathBuf {
            self.0.cipher()
        }

        fn providers(&self) -> Vec<Box<dyn crate::keys::MasterKeyProvider>> {
            self.0.providers()
        }

        fn session(&self, shared: bool) -> Result<Session> {
            let volume = Volume::open(&self.cipher(), self.providers(), Default::default())?;
            Session::open(volume, false, Tuning::new(true, shared), || false, |_| None)
        }
    }

    fn refusal(session: Result<Session>) -> String {
        match session {
            Err(VolumeError::InUse(why)) => why,
            Err(e) => panic!("refused for another reason: {e}"),
            Ok(_) => panic!("not refused"),
        }
    }

    #[test]
    fn a_lone_session_holds_the_volume_until_dropped() {
        let v = Volumes::new();
        let first = v.session(false).unwrap();
        let why = refusal(v.session(false));
        assert!(
            why.contains(&format!("pid {}", std::process::id())),
            "{why}"
        );
        assert!(why.contains("-o shared"), "{why}");
        refusal(v.session(true));
        drop(first);
        v.session(false).unwrap();
    }

    #[test]
    fn shared_sessions_coexist_and_keep_a_lone_one_out() {
        let v = Volumes::new();
        let a = v.session(true).unwrap();
        let b = v.session(true).unwrap();
        assert!(a.fs.volume.path == b.fs.volume.path);
        let why = refusal(v.session(false));
        assert!(why.contains("shared"), "{why}");
    }

    #[test]
    fn a_running_repair_keeps_a_session_out() {
        let v = Volumes::new();
        let volume = Volume::open(&v.cipher(), v.providers(), Default::default()).unwrap();
        let _repair = volume.headers.lock_exclusive().unwrap();
        let why = refusal(v.session(false));
        assert!(why.contains("fsck --repair"), "{why}");
    }

    #[test]
    fn the_audit_log_is_opened_only_once_the_claim_is_held() {
        let v = Volumes::new();
        let _held = v.session(false).unwrap();
        let volume = Volume::open(&v.cipher(), v.providers(), Default::default()).unwrap();
        let asked = std::cell::Cell::new(false);
        let refused = Session::open(
            volume,
            false,
            Tuning::default(),
            || false,
            |_| {
                asked.set(true);
                None
            },
        );
        refusal(refused);
        assert!(!asked.get());
    }
}

//! An opened volume: its config, its keys, its header store and fd-relative access to the
//! cipher dir. Knows files, not FUSE: the mount, and later fsck and rewrap, share it.

pub mod audit;
pub mod backing;
pub mod backing_xattrs;
mod error;
pub mod follow;
pub mod gluster;
pub mod headers;
pub mod hole_maps;
pub mod long_links;
pub mod names;
pub mod policy_dirs;
pub mod remnant;
#[cfg(test)]
pub(crate) mod scratch;
pub mod sealed_xattrs;
mod sweep;
mod symlinks;
mod test_points;
pub mod tree;
pub mod undo;
mod undo_copies;
mod undo_file;
mod undo_shared;

pub use crate::coord::maintenance::lock_config;

/// The policy of everything outside tenants' directories.
pub use crate::format::policy::VOLUME_POLICY;
pub use error::{Result, VolumeError};
pub use test_points::{crash_point, slow_point};

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::{OFlag, RenameFlags, openat, renameat2};
use nix::sys::stat::Mode;
use nix::unistd::{UnlinkatFlags, unlinkat};

use crate::format::block;
use crate::format::config::{
    CIPHER, CONFIG_FILE, KeyMode, MAX_CONFIG_LEN, REVERSE_CONFIG_FILE, VolumeConfig,
};
use crate::format::name::BackingName;
use crate::format::{Id, id_to_hex};
use crate::io::{self, DataFile, Layout};
use crate::keys::{
    self, CacheLimits, DataKeyMaterial, FileKeys, HeaderKeys, KeyCache, KeyError,
    MasterKeyProvider, NameKeys, Tenants, VolumeKeys,
};
use backing::CreateMethod;
use headers::{HEADERS_DIR, HeaderStore};

/// Prefix of a data file being made under a temporary name (`CreateMethod::TempRename`);
/// fsck removes one left by a crash.
pub const NEW_FILE_PREFIX: &str = "sealfs.new.";

pub struct Volume {
    pub path: PathBuf,
    pub root: OwnedFd,
    pub config: VolumeConfig,
    pub keys: Arc<VolumeKeys>,
    pub file_keys: FileKeys,
    pub key_cache: Arc<KeyCache>,
    pub layout: Layout,
    pub headers: Arc<HeaderStore>,
    /// The undo journals of data files (`undo`): what protects blocks a write replaces.
    pub undo: Arc<undo::UndoStore>,
    /// What the backing filesystem was found to do at open, and the fallbacks in use.
    pub backing: backing::Backing,
    /// fsync each new header before it is renamed into place. Off for mounts: creating a
    /// file costs no fsync, and fsync of the file makes its header durable first
    /// (`headers.sync`), so whatever the user made durable stays readable.
    pub durable_headers: bool,
    /// Follows rewrites of `sealfs.conf` by other processes, on any host: a rotation changes
    /// it, and the next create (or the mount's periodic look) picks the new KEK up.
    pub follower: Arc<follow::ConfigFollower>,
    /// Where key events go, once the caller has said where (`set_audit`).
    pub audit: Option<Arc<audit::AuditLog>>,
    /// The key policies (tenants), following the config.
    pub tenants: Arc<Tenants>,
}

/// What `init` decides beyond the master key.
#[derive(Clone, Debug)]
pub struct InitOptions {
    pub block_size: u32,
    pub key_mode: KeyMode,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            block_size: block::DEFAULT_BLOCK_SIZE,
            key_mode: KeyMode::Volume,
        }
    }
}

impl Volume {
    /// Reads and structurally validates `sealfs.conf`, with errors a user can act on.
    pub fn read_config(cipher_dir: &Path) -> Result<VolumeConfig> {
        let path = config_file(cipher_dir);
        let file = File::open(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound if cipher_dir.is_dir() => VolumeError::Usage(format!(
                "{} is not a sealfs volume (no {CONFIG_FILE}); create one with `sealfs init`",
                cipher_dir.display()
            )),
            std::io::ErrorKind::NotFound => {
                VolumeError::Usage(format!("{} does not exist", cipher_dir.display()))
            }
            _ => VolumeError::Usage(format!("cannot read {}: {e}", path.display())),
        })?;
        let bytes = read_config_bytes(&file)?;
        VolumeConfig::parse(&bytes)
            .map_err(|e| VolumeError::Usage(format!("{}: {e}", path.display())))
    }

    /// Creates a new volume in `cipher_dir` (created if missing, refused unless empty), with one
    /// keyslot per provider.
    pub fn init(
        cipher_dir: &Path,
        options: &InitOptions,
        providers: &[Box<dyn MasterKeyProvider>],
        volume_id: Id,
    ) -> Result<VolumeConfig> {
        if config_file(cipher_dir).exists() {
            return Err(VolumeError::Usage(format!(
                "{} is already a sealfs volume; refusing to overwrite it",
                cipher_dir.display()
            )));
        }
        match fs::read_dir(cipher_dir) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(VolumeError::Usage(format!(
                        "{} is not empty; a new volume needs an empty directory",
                        cipher_dir.display()
                    )));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::DirBuilder::new().recursive(true).create(cipher_dir)?
            }
            Err(e) => return Err(e.into()),
        }
        backing::probe(File::open(cipher_dir)?.as_fd()).require_usable(cipher_dir)?;
        let config = new_config(options, providers, volume_id)?;
        fs::DirBuilder::new().create(cipher_dir.join(HEADERS_DIR))?;
        write_config(cipher_dir, &config)?;
        Ok(config)
    }

    /// Makes `plain_dir`, an existing plaintext tree, the source of a reverse volume: its
    /// config goes into `plain_dir/.sealfs.reverse.conf`, and nothing else is written.
    pub fn init_reverse(
        plain_dir: &Path,
        options: &InitOptions,
        providers: &[Box<dyn MasterKeyProvider>],
        volume_id: Id,
    ) -> Result<VolumeConfig> {
        if !plain_dir.is_dir() {
            return Err(VolumeError::Usage(format!(
                "{} is not a directory; reverse mode encrypts an existing plaintext tree",
                plain_dir.display()
            )));
        }
        if plain_dir.join(REVERSE_CONFIG_FILE).exists() {
            return Err(VolumeError::Usage(format!(
                "{} already has a reverse volume ({REVERSE_CONFIG_FILE}); refusing to overwrite it",
                plain_dir.display()
            )));
        }
        if plain_dir.join(CONFIG_FILE).exists() {
            return Err(VolumeError::Usage(format!(
                "{} is a sealfs cipher dir, not a plaintext tree",
                plain_dir.display()
            )));
        }
        if options.key_mode == KeyMode::PerFile {
            return Err(VolumeError::Usage(
                "reverse mode derives file keys from the volume secret; per-file key mode does not apply".into(),
            ));
        }
        let config = new_config(options, providers, volume_id)?;
        write_config_file(&plain_dir.join(REVERSE_CONFIG_FILE), &config)?;
        Ok(config)
    }

    /// Opens a volume with the first provider that unlocks one of its keyslots. In per-file
    /// mode the provider of the file-key slot is kept for the life of the volume.
    pub fn open(
        cipher_dir: &Path,
        providers: Vec<Box<dyn MasterKeyProvider>>,
        cache: CacheLimits,
    ) -> Result<Volume> {
        if is_reverse(cipher_dir) {
            return Err(VolumeError::Usage(format!(
                "{} is the plaintext dir of a reverse volume: mount it with `sealfs mount --reverse`",
                cipher_dir.display()
            )));
        }
        let config = Self::read_config(cipher_dir)?;
        let keys = Arc::new(keys::unlock(&config, &providers)?);
        let tenants = Arc::new(Tenants::new(*keys.volume_id(), cache.max_age));
        tenants.apply_config(&config);
        let file_keys = match config.file_key_slot() {
            None => FileKeys::volume_mode(keys.clone()),
            Some(slot) => {
                let provider = providers.into_iter().find(|p| p.serves(slot)).ok_or_else(|| {
                    VolumeError::Usage(format!(
                        "this volume keeps file keys under keyslot {} ({}), and no key given reaches it",
                        slot.id,
                        slot.provider.kind()
                    ))
                })?;
                FileKeys::per_file(keys.clone(), Arc::from(provider), slot.id)
            }
        }
        .with_tenants(tenants.clone());
        let root = openat(
            nix::fcntl::AT_FDCWD,
            cipher_dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let backing = backing::probe(root.as_fd());
        backing.require_usable(cipher_dir)?;
        let headers = Arc::new(HeaderStore::open(root.as_fd())?);
        let undo = Arc::new(undo::UndoStore::open(
            &root,
            backing.flush_covers_overwrites(),
        )?);
        let follower = Arc::new(follow::ConfigFollower::new(
            cipher_dir,
            root.as_fd(),
            keys.clone(),
            tenants.clone(),
        )?);
        Ok(Volume {
            tenants,
            audit: None,
            follower,
            path: cipher_dir.to_path_buf(),
            layout: Layout::new(config.block_size)?,
            root,
            config,
            keys,
            file_keys,
            key_cache: Arc::new(KeyCache::new(cache)),
            headers,
            undo,
            backing,
            durable_headers: false,
        })
    }

    /// Creates a regular data file named `name` in directory `dir`, whose key policy is
    /// `policy`: its header first, then the data file, which appears under its name only once
    /// it carries its file id. The caller has followed the config (the mount does so under the
    /// directory's lock, as it finds `policy`).
    pub fn create_data_file(
        &self,
        dir: BorrowedFd<'_>,
        name: &BackingName,
        mode: u32,
        policy: u32,
    ) -> Result<(File, Id, Arc<DataKeyMaterial>)> {
        let (header, material) = self
            .file_keys
            .new_header_in(policy)
            .inspect_err(|e| self.audit_key_failure(e))?;
        let file_id = header.file_id;
        self.headers.create(&header, self.durable_headers)?;
        let created = self.link_new_data_file(dir, name, mode, &file_id);
        if created.is_err() {
            let _ = self.headers.remove(&file_id);
        }
        let material = Arc::new(material);
        self.key_cache.insert(file_id, material.clone());
        Ok((created?, file_id, material))
    }

    fn link_new_data_file(
        &self,
        dir: BorrowedFd<'_>,
        name: &BackingName,
        mode: u32,
        file_id: &Id,
    ) -> Result<File> {
        names::write_long_sidecar(dir, name)?;
        let perm = Mode::from_bits_truncate(mode & 0o7777);
        let exclusive = |name: &str| -> Result<File> {
            let fd = openat(
                dir,
                name,
                OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_RDWR | OFlag::O_CLOEXEC,
                perm,
            )?;
            Ok(File::from(fd))
        };
        // The best way this backing store keeps (see `backing`); each makes the name appear
        // only once it carries its file id, except the last.
        let file = match self.backing.create_method() {
            CreateMethod::TmpfileLink => {
                let fd = openat(
                    dir,
                    ".",
                    OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC,
                    perm,
                )?;
                let file = File::from(fd);
                io::write_preamble(&file, file_id)?;
                backing::link_open_file(file.as_fd(), dir, name.entry())?;
                file
            }
            CreateMethod::TempRename => {
                let temp = backing::random_name(NEW_FILE_PREFIX)?;
                let file = exclusive(&temp)?;
                let placed = io::write_preamble(&file, file_id)
                    .map_err(VolumeError::from)
                    .and_then(|()| {
                        renameat2(
                            dir,
                            temp.as_str(),
                            dir,
                            name.entry(),
                            RenameFlags::RENAME_NOREPLACE,
                        )
                        .map_err(VolumeError::from)
                    });
                if let Err(e) = placed {
                    let _ = unlinkat(dir, temp.as_str(), UnlinkatFlags::NoRemoveDir);
                    return Err(e);
                }
                file
            }
            CreateMethod::Exclusive => {
                let file = exclusive(name.entry())?;
                io::write_preamble(&file, file_id)?;
                file
            }
        };
        Ok(file)
    }

    /// Picks up a config rewritten by another process (see `ConfigFollower::follow`).
    pub fn follow_config(&self) {
        self.follower.follow();
    }

    /// The content key of file `file_id`: from the key cache, or its header.
    pub fn file_key(&self, file_id: &Id) -> Result<Arc<DataKeyMaterial>> {
        Ok(self.key_cache.get_or_load(file_id, || {
            // A rewrap by another process may have moved this header to a KEK rotated in
            // since this mount last looked: follow the config before unwrapping.
            self.follow_config();
            let header = self.headers.load(file_id).map_err(|e| match e {
                VolumeError::Io(io) => KeyError::HeaderIo {
                    file: id_to_hex(file_id),
                    errno: io.raw_os_error().unwrap_or(libc::EIO),
                },
                e => KeyError::Header {
                    file: id_to_hex(file_id),
                    reason: e.to_string(),
                },
            })?;
            let opened = self.file_keys.open_header(&header);
            match (&opened, &self.audit) {
                (Err(e), _) => self.audit_key_failure(e),
                (Ok(m), Some(audit)) if m.policy != crate::format::policy::VOLUME_POLICY => {
                    audit.count_tenant_unwrap(m.policy)
                }
                (Ok(_), Some(audit)) if self.config.key_mode == KeyMode::PerFile => {
                    audit.count_file_key_unwrap()
                }
                _ => {}
            }
            opened
        })?)
    }

    fn audit_key_failure(&self, err: &KeyError) {
        if let Some(audit) = &self.audit {
            audit.key_service_failure(err);
        }
    }

    /// Sends key events of this volume to `log` from now on.
    pub fn set_audit(&mut self, log: audit::AuditLog) {
        self.audit = Some(Arc::new(log));
    }

    /// The file id and content key of an open data file.
    pub fn open_data_file(&self, file: &File) -> Result<(Id, Arc<DataKeyMaterial>)> {
        let file_id = io::read_file_id(file)?;
        Ok((file_id, self.file_key(&file_id)?))
    }

    /// The size a user sees for a backing inode of mode `st_mode` and size `st_size`: a data
    /// file's plaintext size, a symlink's plaintext target length, other kinds as they are.
    /// `fd` (an O_PATH descriptor of the inode) is read only for a long symlink target, whose
    /// length its backing target names.
    pub fn plain_size(&self, fd: BorrowedFd<'_>, st_mode: u32, st_size: u64) -> u64 {
        match st_mode & libc::S_IFMT {
            libc::S_IFREG => self.layout.plain_size(st_size),
            libc::S_IFLNK if st_size == crate::format::link::LONG_TARGET_LEN => {
                nix::fcntl::readlinkat(fd, "")
                    .ok()
                    .and_then(|t| crate::format::link::LongTarget::decode(t.as_bytes()))
                    .map_or(st_size, |long| long.len.into())
            }
            libc::S_IFLNK => crate::format::name::symlink_plain_len(st_size),
            _ => st_size,
        }
    }

    /// The name keys of key policy `policy` (0: the volume's own). A tenant's come from its
    /// tenant secret, unsealed when first needed and again after the key cache's bound.
    pub fn name_keys(&self, policy: u32) -> Result<Arc<NameKeys>> {
        if policy == crate::format::policy::VOLUME_POLICY {
            return Ok(self.keys.names.clone());
        }
        self.tenants
            .keys(policy)
            .or_else(|e| match e {
                // A marker read a moment ago may name a policy set since this volume last
                // looked at the config (by another process or host): look now.
                KeyError::UnknownPolicy(_) => {
                    self.follow_config();
                    self.tenants.keys(policy)
                }
                e => Err(e),
            })
            .map(|tenant| tenant.names.clone())
            .inspect_err(|e| self.audit_key_failure(e))
            .map_err(VolumeError::from)
    }

    /// Checks that a file whose key `material` came from its header may sit in a directory of
    /// policy `directory`, and that its tenant's key is still live (re-checked after the
    /// key cache's bound): a file moved across tenants in the cipher dir is refused.
    pub fn check_policy(
        &self,
        file_id: &Id,
        material: &DataKeyMaterial,
        directory: u32,
    ) -> Result<()> {
        if material.policy != directory {
            return Err(KeyError::PolicyMismatch {
                file: id_to_hex(file_id),
                header: material.policy,
                directory,
            }
            .into());
        }
        if material.policy != crate::format::policy::VOLUME_POLICY {
            self.tenants.keys(material.policy)?;
        }
        Ok(())
    }

    /// The key policy of backing directory `dir`: its own marker's, else `inherited` (its
    /// parent's). A marker that cannot be read is an error, never "no policy".
    pub fn dir_policy(&self, dir: BorrowedFd<'_>, inherited: u32) -> Result<u32> {
        policy_dirs::read_marker(dir).map(|own| own.unwrap_or(inherited))
    }

    /// The block I/O of data file `file`, whose id and key are `file_id` and `material`, and
    /// whose holes are kept by `holes` (`None`: a version 1 data file, see `file_holes`).
    pub fn data_file<'a>(
        &self,
        file: &'a File,
        file_id: &'a Id,
        material: &'a DataKeyMaterial,
        holes: Option<&'a hole_maps::FileHoles>,
    ) -> DataFile<'a> {
        let holes = match holes {
            Some(ledger) => io::Holes::Recorded(ledger),
            None => io::Holes::AnyZeroBlock,
        };
        DataFile::new(file, self.layout, file_id, &material.content, holes)
    }

    /// The keeper of the hole map of an existing data file whose preamble says `version`:
    /// `None` for version 1 (any all-zero block is a hole). `shared`: other mounts may change
    /// the map too.
    pub fn file_holes(
        &self,
        version: u8,
        file_id: Id,
        writers: hole_maps::Writers,
    ) -> Option<Arc<hole_maps::FileHoles>> {
        (version >= 2).then(|| {
            Arc::new(hole_maps::FileHoles::existing(
                file_id,
                self.headers.clone(),
                writers,
            ))
        })
    }

    /// The keeper of the hole map of a data file `create_data_file` just made (empty).
    pub fn new_file_holes(
        &self,
        file_id: Id,
        writers: hole_maps::Writers,
    ) -> Arc<hole_maps::FileHoles> {
        Arc::new(hole_maps::FileHoles::new_file(
            file_id,
            self.headers.clone(),
            writers,
        ))
    }

    /// `plain` as an entry of a directory outside any key policy (the root's, for fsck).
    pub fn encrypt_name(&self, plain: &OsStr) -> Result<BackingName> {
        names::encrypt_name(&self.keys.names, plain)
    }
}

/// The bytes of an open config file: at most one byte more than the largest valid config, so
/// an oversized file is refused by the parser without being read whole.
pub fn read_config_bytes(file: &File) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_LEN as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// A new volume's config: a fresh keyring sealed into one keyslot per provider, MACed.
fn new_config(
    options: &InitOptions,
    providers: &[Box<dyn MasterKeyProvider>],
    volume_id: Id,
) -> Result<VolumeConfig> {
    block::validate_block_size(options.block_size)?;
    if providers.is_empty() {
        return Err(keys::KeyError::NoProvider.into());
    }
    let keyring = VolumeKeys::generate_keyring()?;
    let keyring_bytes = keyring.encode();
    let keyslots = providers
        .iter()
        .enumerate()
        .map(|(i, p)| p.create_slot(i as u32, &volume_id, &keyring_bytes))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let mut config = VolumeConfig {
        format_version: 1,
        volume_id: id_to_hex(&volume_id),
        block_size: options.block_size,
        cipher: CIPHER.into(),
        key_mode: options.key_mode,
        current_kek: 1,
        file_key_slot: None,
        keks: vec![],
        retired_keks: vec![],
        policies: vec![],
        retired_policies: vec![],
        keyslots,
        mac: String::new(),
    };
    if options.key_mode == KeyMode::PerFile {
        let remote = config
            .keyslots
            .iter()
            .find(|s| s.provider.min_version() >= 2);
        let Some(slot) = remote else {
            return Err(VolumeError::Usage(
                "per-file key mode needs a KMS or PKCS#11 key (--kms or --pkcs11-token)".into(),
            ));
        };
        config.file_key_slot = Some(slot.id);
    }
    config.format_version = config.required_version();
    VolumeKeys::from_keyring(volume_id, keyring)?.seal_config(&mut config);
    Ok(config)
}

/// The config file of the volume in `dir`: `sealfs.conf` in a cipher dir, or
/// `.sealfs.reverse.conf` in the plaintext dir of a reverse volume. Key commands (key add,
/// rotate, passwd, info, audit) work on either.
pub fn config_file(dir: &Path) -> PathBuf {
    if is_reverse(dir) {
        dir.join(REVERSE_CONFIG_FILE)
    } else {
        dir.join(CONFIG_FILE)
    }
}

/// Whether `dir` is the plaintext dir of a reverse volume (and not a cipher dir).
pub fn is_reverse(dir: &Path) -> bool {
    !dir.join(CONFIG_FILE).exists() && dir.join(REVERSE_CONFIG_FILE).exists()
}

/// `/proc/self/fd/N`: reopens or links what an fd refers to, including files already unlinked.
pub fn proc_fd_path(fd: BorrowedFd<'_>) -> PathBuf {
    use std::os::fd::AsRawFd;
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Writes the config crash-safely: temp file, fsync, rename, fsync of the directory.
pub fn write_config(dir: &Path, config: &VolumeConfig) -> Result<()> {
    write_config_file(&config_file(dir), config)
}

/// `write_config` to a named config file (a new reverse volume's, before it exists).
fn write_config_file(target: &Path, config: &VolumeConfig) -> Result<()> {
    let dir = target.parent().unwrap_or(Path::new("."));
    let mut tmp = target.as_os_str().to_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // A leftover from a crash is read-only; start afresh.
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o400)
        .open(&tmp)?;
    file.write_all(&config.to_pretty_json())?;
    crash_point("config-temp-written");
    file.sync_all()?;
    crash_point("config-temp-synced");
    fs::rename(&tmp, target)?;
    crash_point("config-renamed");
    File::open(dir)?.sync_all()?;
    crash_point("config-dir-synced");
    Ok(())
}

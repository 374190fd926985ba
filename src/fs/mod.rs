//! The FUSE frontend: an inode table and open handles over a `Volume`, turning requests into
//! volume and block calls. Replies and errno values come from the shared `shell`.

pub mod core;
mod fuse;
pub mod handles;
pub mod inodes;
pub mod posix_acl;
pub mod pruner;
pub mod session;

pub use self::core::{STATS_ATTRIBUTE, SealFs, Tuning};

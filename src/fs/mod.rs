//! The FUSE frontend: an inode table and open handles over a `Volume`, turning requests into
//! volume and block calls and errors into errno values.

pub(crate) mod attr;
pub mod core;
pub mod errno;
mod fuse;
pub mod inodes;
pub mod pruner;
pub(crate) mod unanswered;

pub use self::core::{SealFs, Tuning};

//! Reverse mode: a read-only, encrypted view of a plaintext directory, for backups to storage
//! that is not trusted. The view is an ordinary cipher dir, byte for byte what a forward mount
//! reads, computed on the fly and deterministically (see docs/FORMAT.md, "Reverse mode").

mod exclude;
mod fuse;
pub mod keys;
mod view;

pub use exclude::Excludes;
pub use view::{ROOT_NODE, ReverseView};

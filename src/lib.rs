//! sealfs: a transparent encrypting filesystem. Layers, top to bottom: `fs` (the FUSE shell),
//! `volume` (an opened cipher dir), `io` (the block path), `keys` (master keys and the key
//! hierarchy), `format` (pure on-disk encodings) and `crypto` (primitives and labels).

pub mod crypto;
pub mod format;
pub mod fs;
pub mod io;
pub mod keys;
pub mod reverse;
pub mod shell;
pub mod sync;
pub mod volume;

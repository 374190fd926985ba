//! sealfs: a transparent encrypting filesystem. Layers, top to bottom: `fs` (the FUSE shell),
//! `volume` (an opened cipher dir), `io` (the block path), `keys` (master keys and the key
//! hierarchy), `format` (pure on-disk encodings) and `crypto` (primitives and labels).
//! `metrics` counts what a running mount does, for `sealfs stats` and Prometheus.

pub mod admin;
pub mod coord;
pub mod crypto;
pub mod format;
pub mod fs;
pub mod io;
pub mod keys;
pub mod metrics;
pub mod reverse;
pub mod shell;
pub mod sync;
pub mod volume;

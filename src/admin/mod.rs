//! The offline commands: what the CLI runs on a cipher dir besides mounting it. fsck (and
//! `--repair`), rewrap, KEK rotation, keyslots, key policies (setting, removing, and moving a
//! directory's entries under one: `migrate`), the header census and `sealfs info`. They work
//! on an opened `volume::Volume` (and take its maintenance locks); no mount calls them.

pub mod census;
pub mod fsck;
pub mod info;
pub mod keyslots;
pub mod migrate;
pub mod policy;
pub mod progress;
pub mod rewrap;
pub mod rotate;

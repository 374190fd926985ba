//! Tests' scratch volumes: a key file and a cipher dir in a temporary directory.

use std::path::PathBuf;

use super::{InitOptions, Volume};
use crate::keys::{KeyfileProvider, MasterKeyProvider, write_new_keyfile};

pub struct Scratch {
    pub dir: tempfile::TempDir,
}

impl Scratch {
    /// A new volume under a new key file.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        write_new_keyfile(&dir.path().join("k")).unwrap();
        let scratch = Scratch { dir };
        Volume::init(
            &scratch.cipher(),
            &InitOptions::default(),
            &scratch.providers(),
            [5; 16],
        )
        .unwrap();
        scratch
    }

    pub fn cipher(&self) -> PathBuf {
        self.dir.path().join("c")
    }

    pub fn providers(&self) -> Vec<Box<dyn MasterKeyProvider>> {
        vec![Box::new(
            KeyfileProvider::load(&self.dir.path().join("k")).unwrap(),
        )]
    }

    /// The volume, opened (again).
    pub fn open(&self) -> Volume {
        Volume::open(&self.cipher(), self.providers(), Default::default()).unwrap()
    }
}

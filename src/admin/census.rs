//! Which key wraps each header, counted without any key: header slots name their KEK version
//! or master keyslot in the clear. `info` shows it; retiring a KEK checks it.

use std::collections::BTreeMap;

use rayon::prelude::*;
use serde::Serialize;

use crate::format::header::SlotKind;
use crate::volume::Result;
use crate::volume::headers::HeaderStore;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HeaderCensus {
    pub headers: u64,
    /// Headers with a slot under each volume KEK version.
    pub by_kek: BTreeMap<u32, u64>,
    /// Headers with a slot wrapped by each master keyslot (per-file mode).
    pub by_master_slot: BTreeMap<u32, u64>,
    /// Headers wrapped under each key policy's tenant KEK.
    pub by_policy: BTreeMap<u32, u64>,
    /// Headers that do not parse.
    pub unreadable: u64,
    /// Temp files left by an interrupted header write.
    pub temps: u64,
    /// Entries in the header directories that are no header.
    pub strays: u64,
}

pub fn census(store: &HeaderStore) -> Result<HeaderCensus> {
    let listing = store.list()?;
    let counted = listing
        .ids
        .par_iter()
        .fold(HeaderCensus::default, |mut census, id| {
            census.headers += 1;
            match store.load(id) {
                Ok(header) => {
                    for slot in &header.slots {
                        let map = match slot.kind {
                            SlotKind::VolumeKek => &mut census.by_kek,
                            SlotKind::MasterKey => &mut census.by_master_slot,
                            SlotKind::TenantKek => &mut census.by_policy,
                        };
                        *map.entry(slot.key_version).or_default() += 1;
                    }
                }
                Err(_) => census.unreadable += 1,
            }
            census
        })
        .reduce(HeaderCensus::default, merge);
    Ok(HeaderCensus {
        temps: listing.temps.len() as u64,
        strays: listing.strays.len() as u64,
        ..counted
    })
}

fn merge(mut a: HeaderCensus, b: HeaderCensus) -> HeaderCensus {
    a.headers += b.headers;
    a.unreadable += b.unreadable;
    for (k, v) in b.by_kek {
        *a.by_kek.entry(k).or_default() += v;
    }
    for (k, v) in b.by_master_slot {
        *a.by_master_slot.entry(k).or_default() += v;
    }
    for (k, v) in b.by_policy {
        *a.by_policy.entry(k).or_default() += v;
    }
    a
}

//! The hole map of a version 2 data file: which of its blocks may be stored as all zeros (a
//! hole) and read as zeros. Kept sealed in a sidecar `sealfs.headers/<hh>/<id>.holes`; a data
//! file without one has no holes. docs/FORMAT.md, "Holes", says why this makes holes
//! unforgeable.
//!
//! Sidecar: `"SEALHOL" (7) || version (u8) = 1 || file id (16) || sealed map`, the sealed map a
//! sealed object under the file's content key with associated data `"sealfs.holes.v1" || file
//! id`, its plaintext `count (u32) || count × { first block (u64) || end block (u64) }`: sorted,
//! each range non-empty, separated from the next by at least one block.

use std::collections::BTreeMap;
use std::ops::Range;

use super::{FormatError, Id, Reader, decode_framed, encode_framed};

const MAGIC: &[u8; 7] = b"SEALHOL";
const VERSION: u8 = 1;
const AAD_PREFIX: &[u8] = b"sealfs.holes.v1";
/// A hard bound when reading hostile input: 16 Mi ranges.
pub const MAX_RANGES: u32 = 1 << 24;

/// Block ranges, disjoint and not touching, by first block.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HoleMap {
    ranges: BTreeMap<u64, u64>,
}

impl HoleMap {
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn contains(&self, block: u64) -> bool {
        self.ranges
            .range(..=block)
            .next_back()
            .is_some_and(|(_, &end)| block < end)
    }

    /// Whether any block of `range` is in the map.
    pub fn intersects(&self, range: &Range<u64>) -> bool {
        if range.is_empty() {
            return false;
        }
        self.ranges
            .range(..range.end)
            .next_back()
            .is_some_and(|(_, &end)| end > range.start)
    }

    /// Adds `range`, merging it with the ranges it overlaps or touches. Whether anything
    /// changed.
    pub fn insert(&mut self, range: Range<u64>) -> bool {
        if range.is_empty() || self.covers(&range) {
            return false;
        }
        let (mut start, mut end) = (range.start, range.end);
        let touching: Vec<(u64, u64)> = self
            .ranges
            .range(..=end)
            .rev()
            .take_while(|(_, e)| **e >= start)
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, e) in touching {
            self.ranges.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.ranges.insert(start, end);
        true
    }

    /// Whether every block of `range` is in the map.
    pub fn covers(&self, range: &Range<u64>) -> bool {
        self.ranges
            .range(..=range.start)
            .next_back()
            .is_some_and(|(_, &end)| end >= range.end)
    }

    /// Removes `range`. Whether anything changed.
    pub fn remove(&mut self, range: Range<u64>) -> bool {
        if !self.intersects(&range) {
            return false;
        }
        let hit: Vec<(u64, u64)> = self
            .ranges
            .range(..range.end)
            .rev()
            .take_while(|(_, e)| **e > range.start)
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, e) in hit {
            self.ranges.remove(&s);
            if s < range.start {
                self.ranges.insert(s, range.start);
            }
            if e > range.end {
                self.ranges.insert(range.end, e);
            }
        }
        true
    }

    pub fn ranges(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.ranges.iter().map(|(&s, &e)| s..e)
    }

    /// The plaintext the sidecar seals.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(4 + 16 * self.ranges.len());
        out.extend_from_slice(&(self.ranges.len() as u32).to_be_bytes());
        for (s, e) in &self.ranges {
            out.extend_from_slice(&s.to_be_bytes());
            out.extend_from_slice(&e.to_be_bytes());
        }
        out
    }

    /// Parses what `encode` wrote; anything else (unsorted, empty or touching ranges, trailing
    /// bytes) is refused, so every map has one encoding.
    pub fn decode(bytes: &[u8]) -> Result<HoleMap, FormatError> {
        let mut r = Reader::new(bytes, "hole map");
        let count = r.u32()?;
        if count > MAX_RANGES {
            return Err(FormatError::Invalid("hole map size"));
        }
        let mut map = HoleMap::default();
        let mut last_end = None;
        for _ in 0..count {
            let start = u64::from_be_bytes(r.array()?);
            let end = u64::from_be_bytes(r.array()?);
            if start >= end || last_end.is_some_and(|last| start <= last) {
                return Err(FormatError::Invalid("hole map range"));
            }
            map.ranges.insert(start, end);
            last_end = Some(end);
        }
        r.finish()?;
        Ok(map)
    }
}

/// Associated data of the sealed map of file `file_id`.
pub fn map_aad(file_id: &Id) -> Vec<u8> {
    [AAD_PREFIX, &file_id[..]].concat()
}

/// The sidecar's bytes around the sealed map.
pub fn encode_sidecar(file_id: &Id, sealed: &[u8]) -> Vec<u8> {
    encode_framed(MAGIC, VERSION, file_id, sealed)
}

/// The sealed map a sidecar holds, checked to be of `file_id`.
pub fn decode_sidecar<'a>(bytes: &'a [u8], file_id: &Id) -> Result<&'a [u8], FormatError> {
    decode_framed(bytes, MAGIC, VERSION, file_id, "hole map")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u64, u64),
        Remove(u64, u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u64..64, 0u64..10).prop_map(|(s, l)| Op::Insert(s, s + l)),
            (0u64..64, 0u64..10).prop_map(|(s, l)| Op::Remove(s, s + l)),
        ]
    }

    proptest! {
        /// The map agrees with a set of blocks after any inserts and removes, stays in its one
        /// canonical form, and round-trips through its encoding.
        #[test]
        fn matches_a_set_of_blocks(ops in proptest::collection::vec(op(), 0..40)) {
            let mut map = HoleMap::default();
            let mut model = [false; 80];
            for op in ops {
                let (changed, expect_changed) = match op {
                    Op::Insert(s, e) => {
                        let before = model[s as usize..e as usize].iter().all(|b| *b);
                        model[s as usize..e as usize].fill(true);
                        (map.insert(s..e), !before)
                    }
                    Op::Remove(s, e) => {
                        let before = model[s as usize..e as usize].iter().any(|b| *b);
                        model[s as usize..e as usize].fill(false);
                        (map.remove(s..e), before)
                    }
                };
                prop_assert_eq!(changed, expect_changed);
                for (b, want) in model.iter().enumerate() {
                    prop_assert_eq!(map.contains(b as u64), *want, "block {}", b);
                }
                for s in 0..80u64 {
                    for e in s..(s + 5).min(80) {
                        let any = model[s as usize..e as usize].iter().any(|b| *b);
                        prop_assert_eq!(map.intersects(&(s..e)), any);
                    }
                }
                prop_assert_eq!(HoleMap::decode(&map.encode()).unwrap(), map.clone());
            }
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = HoleMap::decode(&bytes);
            let _ = decode_sidecar(&bytes, &[0; 16]);
        }
    }

    #[test]
    fn non_canonical_maps_are_refused() {
        let enc = |ranges: &[(u64, u64)]| {
            let mut out = (ranges.len() as u32).to_be_bytes().to_vec();
            for (s, e) in ranges {
                out.extend_from_slice(&s.to_be_bytes());
                out.extend_from_slice(&e.to_be_bytes());
            }
            out
        };
        assert!(HoleMap::decode(&enc(&[(1, 3), (5, 6)])).is_ok());
        for bad in [
            enc(&[(3, 3)]),
            enc(&[(1, 3), (3, 6)]),
            enc(&[(5, 6), (1, 3)]),
        ] {
            assert!(HoleMap::decode(&bad).is_err());
        }
        let mut trailing = enc(&[(1, 3)]);
        trailing.push(0);
        assert!(HoleMap::decode(&trailing).is_err());
    }

    #[test]
    fn sidecars_name_their_file() {
        let bytes = encode_sidecar(&[3; 16], b"sealed");
        assert_eq!(decode_sidecar(&bytes, &[3; 16]).unwrap(), b"sealed");
        assert!(decode_sidecar(&bytes, &[4; 16]).is_err());
    }
}

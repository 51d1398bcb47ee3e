//! The purchase ids a partition counted within the lateness, in the order counted: a ring of
//! fixed-size entries (40 bytes, in fixed chunks) with a hash index of their sequence numbers
//! and 32 bits of their hash (8 bytes per bucket: growing the index never reads an entry
//! again). The oldest entries leave from the front once their event time is past the
//! lateness and their rows are acknowledged, so the ring is also the eviction order.

use std::hash::BuildHasher as _;

use hashbrown::HashTable;

use crate::state::chunks::ChunkedDeque;

/// What is kept of a counted purchase id.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub offset: i64,
    pub hash: u64,
    pub ts: i64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The id's halves (two `u64`, not a `u128`: 8-byte alignment keeps the entry at 40 bytes).
    id: [u64; 2],
    seen: Seen,
}

fn halves(id: u128) -> [u64; 2] {
    [(id >> 64) as u64, id as u64]
}

/// The 32 bits of an id's hash that its index bucket keeps.
fn fragment(hash: u64) -> u32 {
    (hash >> 32) as u32
}

/// The hash the index is built on, from the kept fragment alone: its top bits (the bucket's
/// tag) and low bits (its position) are the fragment's.
fn spread(fragment: u32) -> u64 {
    (u64::from(fragment) << 32) | u64::from(fragment)
}

/// One lookup of an id: its hash fragment and, when held, its entry's sequence number.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    id: [u64; 2],
    fragment: u32,
    found: Option<u32>,
}

/// Counted ids, oldest first.
#[derive(Debug, Default)]
pub struct SeenIds {
    entries: ChunkedDeque<Entry>,
    /// Sequence number of the front entry; the index holds sequence numbers modulo 2^32,
    /// each with its id's hash fragment.
    base: u64,
    index: HashTable<(u32, u32)>,
    hasher: foldhash::fast::RandomState,
}

impl SeenIds {
    /// Ids held.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    fn position(&self, seq: u32) -> usize {
        seq.wrapping_sub(self.base as u32) as usize
    }

    /// Looks `id` up once: what [`Self::seen`] reads and [`Self::insert_probed`] writes
    /// without hashing and probing again.
    pub fn probe(&self, id: u128) -> Probe {
        let id = halves(id);
        let fragment = fragment(self.hasher.hash_one(id));
        let found = self
            .index
            .find(spread(fragment), |&(s, f)| {
                f == fragment && self.entries[self.position(s)].id == id
            })
            .map(|&(s, _)| s);
        Probe {
            id,
            fragment,
            found,
        }
    }

    /// What was kept of the probed id.
    pub fn seen(&self, probe: &Probe) -> Option<&Seen> {
        probe.found.map(|s| &self.entries[self.position(s)].seen)
    }

    /// What was kept of `id`.
    #[cfg(test)]
    pub fn get(&self, id: u128) -> Option<&Seen> {
        self.seen(&self.probe(id))
    }

    /// Keeps `seen` for `id`, replacing what was kept; it leaves with the ids counted now.
    #[cfg(test)]
    pub fn insert(&mut self, id: u128, seen: Seen) {
        let probe = self.probe(id);
        self.insert_probed(probe, seen);
    }

    /// Keeps `seen` for the probed id (nothing changed since the probe), replacing what was
    /// kept; it leaves with the ids counted now.
    pub fn insert_probed(&mut self, probe: Probe, seen: Seen) {
        let Probe {
            id,
            fragment,
            found,
        } = probe;
        let seq = (self.base + self.entries.len() as u64) as u32;
        self.entries.push_back(Entry { id, seen });
        let hash = spread(fragment);
        if let Some(old) = found {
            // The bucket holding the old entry's number is found by the number alone.
            if let Some(s) = self.index.find_mut(hash, |&(s, _)| s == old) {
                s.0 = seq;
                return;
            }
        }
        self.index
            .insert_unique(hash, (seq, fragment), |&(_, f)| spread(f));
    }

    /// Forgets the oldest ids whose event time is before `horizon` and whose offset is
    /// before `acked` (their rows are stored), stopping at the first that is not (ids arrive
    /// nearly in time order; one counted late waits for its elders).
    pub fn forget_before(&mut self, horizon: i64, acked: i64) {
        while let Some(front) = self.entries.front() {
            if front.seen.ts >= horizon || front.seen.offset >= acked {
                break;
            }
            let id = front.id;
            let seq = self.base as u32;
            let hash = spread(fragment(self.hasher.hash_one(id)));
            // Only when the index still points here: a later count of the same id replaced it.
            if let Ok(e) = self.index.find_entry(hash, |&(s, _)| s == seq) {
                e.remove();
            }
            self.entries.pop_front();
            self.base += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(offset: i64, ts: i64) -> Seen {
        Seen {
            offset,
            hash: offset as u64 * 7,
            ts,
        }
    }

    #[test]
    fn ids_whose_rows_are_not_acknowledged_stay() {
        let mut ids = SeenIds::default();
        for i in 0..100u128 {
            ids.insert(i + 1, seen(i as i64, 100 + i as i64));
        }
        // Old enough, but only offsets before 30 are acknowledged.
        ids.forget_before(1000, 30);
        assert_eq!(ids.len(), 70);
        assert!(ids.get(30).is_none(), "offset 29 left");
        assert!(ids.get(31).is_some(), "offset 30 stays");
        ids.forget_before(1000, 100);
        assert_eq!(ids.len(), 0);
    }

    #[test]
    fn ids_leave_oldest_first_and_a_recount_outlives_its_first_count() {
        let mut ids = SeenIds::default();
        for i in 0..1000u128 {
            ids.insert(i << 64 | i, seen(i as i64, 100 + i as i64));
        }
        // Id 5 counted again later (its first count expired): the newer entry stays.
        ids.insert(5 << 64 | 5, seen(2000, 5000));
        assert_eq!(ids.len(), 1000);
        ids.forget_before(600, i64::MAX);
        assert_eq!(ids.len(), 501, "ids 500..1000 and the recounted 5");
        assert!(ids.get(499 << 64 | 499).is_none());
        assert_eq!(ids.get(500 << 64 | 500).map(|s| s.offset), Some(500));
        assert_eq!(
            ids.get(5 << 64 | 5).map(|s| (s.offset, s.ts)),
            Some((2000, 5000))
        );
        ids.forget_before(1100, i64::MAX);
        assert_eq!(ids.len(), 1);
        ids.forget_before(5001, i64::MAX);
        assert_eq!(ids.len(), 0);
        assert!(ids.get(5 << 64 | 5).is_none());
        // The ring goes on numbering after it emptied.
        ids.insert(7, seen(1, 1));
        assert_eq!(ids.get(7).map(|s| s.offset), Some(1));
    }
}

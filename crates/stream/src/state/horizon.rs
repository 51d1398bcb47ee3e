//! The purchase ids a partition counted within the dedup horizon, as a compact filter that
//! answers "certainly not counted" or "maybe": one split-block Bloom filter chain per event
//! day (UTC), about 2 bytes per id, so a 7-day horizon of 10M purchases a day stays near
//! 150 MB. A "maybe" is settled by an exact look-up (ClickHouse holds every counted row);
//! a day leaves whole once it is older than the horizon.
//!
//! Each filter is a vector of 256-bit blocks; an id sets one bit in each of a block's eight
//! 32-bit words (the layout of Parquet's split-block Bloom filters), so a probe touches one
//! cache line. At 16 bits per id about 1 probe in 1000 answers "maybe" for an absent id.

use std::collections::BTreeMap;

/// Bits of filter per id a filter is sized for.
const BITS_PER_ID: usize = 16;
/// Ids the first filter of a day is sized for, at least: a new newest day starts sized for
/// the busiest day held and an eighth more; a day outgrowing its filters gets one as large
/// as all of them (so a day's filters stay few, whatever it was expected to hold).
const FIRST_CAPACITY: usize = 1 << 14;
/// Seconds in a (UTC) day.
const DAY: i64 = 86_400;

/// Odd constants that pick a bit in each word of a block (Parquet's salts).
const SALT: [u32; 8] = [
    0x47b6_137b,
    0x4497_4d91,
    0x8824_ad5b,
    0xa2b7_289d,
    0x7054_95c7,
    0x2df1_424b,
    0x9efc_4947,
    0x5c6b_fb31,
];

/// SplitMix64's finalizer: every input bit moves every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One split-block Bloom filter sized for `capacity` ids.
#[derive(Debug)]
struct Filter {
    blocks: Vec<[u32; 8]>,
    capacity: usize,
    len: usize,
}

impl Filter {
    fn new(capacity: usize) -> Self {
        let blocks = (capacity * BITS_PER_ID).div_ceil(256).max(1);
        Self {
            blocks: vec![[0; 8]; blocks],
            capacity,
            len: 0,
        }
    }

    fn block(&self, hash: u64) -> usize {
        (((hash >> 32) * self.blocks.len() as u64) >> 32) as usize
    }

    fn masks(hash: u64) -> [u32; 8] {
        let key = hash as u32;
        SALT.map(|s| 1u32 << (key.wrapping_mul(s) >> 27))
    }

    fn insert(&mut self, hash: u64) {
        let i = self.block(hash);
        let block = &mut self.blocks[i];
        for (w, m) in block.iter_mut().zip(Self::masks(hash)) {
            *w |= m;
        }
        self.len += 1;
    }

    fn contains(&self, hash: u64) -> bool {
        let block = &self.blocks[self.block(hash)];
        block.iter().zip(Self::masks(hash)).all(|(w, m)| w & m != 0)
    }

    fn bytes(&self) -> usize {
        self.blocks.len() * 32
    }
}

/// The filters of one event day: another one when the last is full.
#[derive(Debug, Default)]
struct Day {
    filters: Vec<Filter>,
    len: usize,
    /// Ids the day was expected to hold (0: unknown).
    expected: usize,
}

impl Day {
    fn insert(&mut self, hash: u64) {
        let full = self.filters.last().is_none_or(|f| f.len >= f.capacity);
        if full {
            let capacity = if self.filters.is_empty() {
                (self.expected + self.expected / 8).max(FIRST_CAPACITY)
            } else {
                self.filters.iter().map(|f| f.capacity).sum()
            };
            self.filters.push(Filter::new(capacity));
        }
        if let Some(f) = self.filters.last_mut() {
            f.insert(hash);
        }
        self.len += 1;
    }

    fn contains(&self, hash: u64) -> bool {
        self.filters.iter().any(|f| f.contains(hash))
    }
}

/// Counted ids by event day, and from when the filter is complete.
#[derive(Debug)]
pub struct Horizon {
    days: BTreeMap<i64, Day>,
    /// Every id counted at an event time at or after this is in the filter: the bound it was
    /// restored from, raised as days leave.
    complete_from: i64,
    /// Ids of the busiest day held when the newest day began: what a new newest day expects.
    busiest: usize,
}

impl Default for Horizon {
    fn default() -> Self {
        Self::complete_from(i64::MIN)
    }
}

impl Horizon {
    /// An empty filter that knows every id counted at or after `ts` (`i64::MIN`: every id
    /// ever, as for a partition never read before).
    pub fn complete_from(ts: i64) -> Self {
        Self {
            days: BTreeMap::new(),
            complete_from: ts,
            busiest: 0,
        }
    }

    /// 64 well-mixed bits of an id: the block comes from the high half, the bits within it
    /// from the low half, so the two must not be correlated (a hash made for hash tables
    /// mixes less and filled some blocks far past their share).
    fn hash(id: u128) -> u64 {
        mix((id as u64) ^ mix((id >> 64) as u64 ^ 0x6c61_6b65_7368_6f70))
    }

    /// Adds an id counted at event time `ts` (one before the span the filter is complete for
    /// is not kept: a look-up decides there anyway).
    pub fn insert(&mut self, id: u128, ts: i64) {
        if ts < self.complete_from {
            return;
        }
        let hash = Self::hash(id);
        let d = ts.div_euclid(DAY);
        // Nearly every id lands on a day already held: one map look-up for it.
        if let Some(day) = self.days.get_mut(&d) {
            day.insert(hash);
            return;
        }
        let newest = self.days.last_key_value().is_none_or(|(&last, _)| d > last);
        let busiest = self.days.values().map(|d| d.len).max().unwrap_or(0);
        self.busiest = self.busiest.max(busiest);
        let mut day = Day {
            expected: if newest { self.busiest } else { 0 },
            ..Day::default()
        };
        day.insert(hash);
        self.days.insert(d, day);
    }

    /// Whether the filter holds every id counted at or after `since`: when it does not, only
    /// an exact look-up can tell.
    pub fn covers(&self, since: i64) -> bool {
        since >= self.complete_from
    }

    /// Whether `id` may have been counted at an event time at or after `since`: false is
    /// certain (when [`Self::covers`] `since`), true is a "maybe".
    pub fn maybe(&self, id: u128, since: i64) -> bool {
        let hash = Self::hash(id);
        self.days
            .range(since.div_euclid(DAY)..)
            .any(|(_, d)| d.contains(hash))
    }

    /// Forgets the days that end at or before `ts`.
    pub fn forget_before(&mut self, ts: i64) {
        let first = ts.div_euclid(DAY);
        self.days = self.days.split_off(&first);
        self.complete_from = self.complete_from.max(first * DAY);
    }

    /// Ids held, and the filters' bytes.
    pub fn size(&self) -> (usize, usize) {
        self.days.values().fold((0, 0), |(n, b), d| {
            (
                n + d.len,
                b + d.filters.iter().map(Filter::bytes).sum::<usize>(),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_held_is_always_found_and_few_absent_ones_are_maybe() {
        let mut h = Horizon::default();
        let n = 200_000u128;
        for i in 0..n {
            h.insert(i * 0x9e37_79b9_7f4a_7c15, (i as i64) * 3);
        }
        for i in 0..n {
            assert!(h.maybe(i * 0x9e37_79b9_7f4a_7c15, 0), "id {i} lost");
        }
        let absent = (0..n)
            .filter(|i| h.maybe((n + i) * 0x9e37_79b9_7f4a_7c15 + 1, 0))
            .count();
        // 7 days of ids in one look-up here (7 chains): a few in a thousand.
        assert!(
            absent < n as usize / 100,
            "{absent} of {n} absent ids answered maybe"
        );
        let (ids, bytes) = h.size();
        assert_eq!(ids, n as usize);
        assert!(bytes < ids * 5, "{bytes} bytes for {ids} ids");
    }

    /// Random ids (UUID v4 are random) over a day and a half, after a few stamped the day
    /// before (a new day then expects few): each day keeps a few filters, and an absent id
    /// is "maybe" about once in a thousand per filter searched (7 here). Seen failing when a day
    /// outgrowing a small first filter added ones of a fixed size: 13 filters on the day.
    #[test]
    fn random_ids_are_maybe_rarely() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        let mut h = Horizon::default();
        for i in 0..3 {
            h.insert(rng.random(), DAY - 1 - i);
        }
        let n = 300_000;
        for i in 0..n {
            h.insert(rng.random(), DAY + i as i64 * DAY * 3 / 2 / n as i64);
        }
        let filters: Vec<usize> = h.days.values().map(|d| d.filters.len()).collect();
        assert!(
            filters.iter().all(|&f| f <= 6),
            "filters per day: {filters:?}"
        );
        let maybe = (0..n).filter(|_| h.maybe(rng.random(), 0)).count();
        assert!(maybe * 100 < n, "{maybe} of {n} absent ids answered maybe");
    }

    #[test]
    fn days_leave_whole_and_the_filter_says_from_when_it_is_complete() {
        let mut h = Horizon::complete_from(10 * DAY + 500);
        assert!(!h.covers(10 * DAY));
        assert!(h.covers(10 * DAY + 500));
        h.insert(1, 11 * DAY + 5);
        h.insert(2, 12 * DAY + 5);
        h.insert(3, 13 * DAY + 5);
        // Looking from day 12 on does not see day 11.
        assert!(!h.maybe(1, 12 * DAY));
        assert!(h.maybe(2, 12 * DAY));
        h.forget_before(12 * DAY + 100);
        assert!(!h.maybe(1, 0), "day 11 left");
        assert!(h.maybe(2, 0), "day 12 is kept: it ends after the bound");
        assert!(!h.covers(12 * DAY - 1));
        assert!(h.covers(12 * DAY));
        assert_eq!(h.size().0, 2);
    }
}

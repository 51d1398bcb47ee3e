//! The open minute windows of one partition (hour and day windows are the sums of their
//! minutes, taken in ClickHouse), stored compactly: each window is one fixed-size slot
//! (its identity and totals, 48 bytes) in a slab of fixed chunks, found through a hash index
//! of slot numbers (4 bytes per bucket), and the changed and in-flight lists hold slot numbers.
//! Category names are interned per partition, so no slot owns a heap allocation.
//!
//! A slot holds its totals narrow (revenue in `i64` cents, purchases and items in `u32`),
//! which every real window fits; a window that outgrows them moves its totals, exactly, to a
//! side table of wide ones (`i128`, `u64`) and reads them from there until it is evicted.
//!
//! A million (window, product) keys cost about 55 MB here, against several times that
//! when each window was a hash map entry keyed by an owned key and listed by clones.

use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::sync::Arc;

use hashbrown::HashTable;
use lakeshop_clickhouse::RowBinary;

use crate::calendar::Span;
use crate::dims::Key;
use crate::state::chunks::Chunked;
use crate::state::Dim;

/// Key kinds as packed in a slot's tag.
const KIND_TOTAL: u8 = 0;
const KIND_UNKNOWN: u8 = 1;
const KIND_ID: u8 = 2;
const KIND_NAME: u8 = 3;

/// Slot flags.
const DIRTY: u8 = 1;
const FREE: u8 = 2;
/// The window's totals are in the side table of wide ones.
const WIDE: u8 = 4;

/// A window's totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Cents.
    pub revenue: i128,
    pub purchases: u64,
    pub items: u64,
}

/// A dimension key as packed in a slot: its kind and its bits (the id, or the interned
/// name's number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyCode {
    kind: u8,
    bits: u128,
}

/// A window's identity: dimension and key kind (the tag), start and key bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Ident {
    tag: u8,
    start: u32,
    key: u128,
}

/// One window: identity and full state, 48 bytes. Times are stored as ClickHouse stores
/// them: the start in seconds since 1970 as `u32` (`DateTime`), the business date in days
/// since 1970 as `u16` (`Date`). The totals are read through [`Windows::totals`] (they may
/// be wide).
#[derive(Debug, Clone)]
pub struct Slot {
    key: u128,
    /// Cents (narrow totals).
    revenue: i64,
    /// The offset after the last record folded in.
    pub version: u64,
    purchases: u32,
    items: u32,
    start: u32,
    date: u16,
    tag: u8,
    flags: u8,
}

impl Slot {
    fn ident(&self) -> Ident {
        Ident {
            tag: self.tag,
            start: self.start,
            key: self.key,
        }
    }

    /// The window's start (UTC seconds).
    pub fn start(&self) -> i64 {
        i64::from(self.start)
    }

    /// Business date (days since 1970-01-01).
    pub fn date(&self) -> i32 {
        i32::from(self.date)
    }

    /// The window's end (UTC seconds).
    pub fn end(&self) -> i64 {
        self.start() + 60
    }

    /// Dimension.
    pub fn dim(&self) -> Dim {
        Dim::ALL[usize::from(self.tag & 3)]
    }
}

fn tag(dim: Dim, kind: u8) -> u8 {
    let d = Dim::ALL.iter().position(|x| *x == dim).unwrap_or(0) as u8;
    d | (kind << 4)
}

/// The windows of one partition.
#[derive(Debug, Default)]
pub struct Windows {
    slots: Chunked<Slot>,
    /// Totals of the windows that outgrew their slot's, by slot.
    wide: HashMap<u32, Totals, foldhash::fast::RandomState>,
    free: Vec<u32>,
    index: HashTable<u32>,
    hasher: foldhash::fast::RandomState,
    /// Interned category names, by number.
    names: Vec<Arc<str>>,
    numbers: HashMap<Arc<str>, u32, foldhash::fast::RandomState>,
    live: usize,
}

impl Windows {
    /// Windows held.
    pub fn len(&self) -> usize {
        self.live
    }

    /// The packed form of `key`.
    pub fn code(&mut self, key: &Key) -> KeyCode {
        match key {
            Key::Total => KeyCode {
                kind: KIND_TOTAL,
                bits: 0,
            },
            Key::Unknown => KeyCode {
                kind: KIND_UNKNOWN,
                bits: 0,
            },
            Key::Id(id) => KeyCode {
                kind: KIND_ID,
                bits: *id,
            },
            Key::Name(name) => {
                let n = match self.numbers.get(name) {
                    Some(n) => *n,
                    None => {
                        let n = self.names.len() as u32;
                        self.names.push(name.clone());
                        self.numbers.insert(name.clone(), n);
                        n
                    }
                };
                KeyCode {
                    kind: KIND_NAME,
                    bits: u128::from(n),
                }
            }
        }
    }

    /// Appends the stored text of slot `i`'s key to a ClickHouse body.
    pub fn write_key(&self, i: u32, out: &mut RowBinary) {
        let s = &self.slots[i as usize];
        match s.tag >> 4 {
            KIND_ID => {
                out.uuid_text(s.key);
            }
            KIND_NAME => {
                out.string(&self.names[s.key as usize]);
            }
            KIND_UNKNOWN => Key::Unknown.write(out),
            _ => {
                out.string("");
            }
        }
    }

    /// The key of slot `i`.
    pub fn key(&self, i: u32) -> Key {
        let s = &self.slots[i as usize];
        match s.tag >> 4 {
            KIND_ID => Key::Id(s.key),
            KIND_NAME => Key::Name(self.names[s.key as usize].clone()),
            KIND_UNKNOWN => Key::Unknown,
            _ => Key::Total,
        }
    }

    /// Slot `i`.
    pub fn slot(&self, i: u32) -> &Slot {
        &self.slots[i as usize]
    }

    /// Slot `i`, to change.
    pub fn slot_mut(&mut self, i: u32) -> &mut Slot {
        &mut self.slots[i as usize]
    }

    /// The totals of slot `i`.
    pub fn totals(&self, i: u32) -> Totals {
        let s = &self.slots[i as usize];
        if s.flags & WIDE != 0 {
            return self.wide.get(&i).copied().unwrap_or_default();
        }
        Totals {
            revenue: i128::from(s.revenue),
            purchases: u64::from(s.purchases),
            items: u64::from(s.items),
        }
    }

    /// Sets the totals of slot `i` (a restored window's).
    pub fn set_totals(&mut self, i: u32, t: Totals) {
        let s = &mut self.slots[i as usize];
        let narrow = (
            i64::try_from(t.revenue),
            u32::try_from(t.purchases),
            u32::try_from(t.items),
        );
        if let (Ok(revenue), Ok(purchases), Ok(items)) = narrow {
            (s.revenue, s.purchases, s.items) = (revenue, purchases, items);
            if s.flags & WIDE != 0 {
                s.flags &= !WIDE;
                self.wide.remove(&i);
            }
        } else {
            self.widen(i, t);
        }
    }

    /// Moves slot `i`'s totals to the side table, as `t`.
    fn widen(&mut self, i: u32, t: Totals) {
        let s = &mut self.slots[i as usize];
        (s.revenue, s.purchases, s.items) = (0, 0, 0);
        s.flags |= WIDE;
        self.wide.insert(i, t);
    }

    /// Folds the record before offset `version` (one purchase of `quantity` items for
    /// `amount` cents) into slot `i` unless the window's version is already past it, and
    /// marks the window changed. True when it was not changed before (it joins the list of
    /// changed windows).
    pub fn fold(&mut self, i: u32, version: u64, amount: i128, quantity: u32) -> bool {
        let s = &mut self.slots[i as usize];
        if version <= s.version {
            return false;
        }
        s.version = version;
        let was_clean = s.flags & DIRTY == 0;
        s.flags |= DIRTY;
        self.add(i, amount, quantity);
        was_clean
    }

    /// Adds one purchase of `quantity` items for `amount` cents to slot `i`'s totals.
    fn add(&mut self, i: u32, amount: i128, quantity: u32) {
        let s = &mut self.slots[i as usize];
        if s.flags & WIDE == 0 {
            let revenue = i64::try_from(amount)
                .ok()
                .and_then(|a| s.revenue.checked_add(a));
            let sums = (
                revenue,
                s.purchases.checked_add(1),
                s.items.checked_add(quantity),
            );
            if let (Some(revenue), Some(purchases), Some(items)) = sums {
                (s.revenue, s.purchases, s.items) = (revenue, purchases, items);
                return;
            }
            let t = self.totals(i);
            self.widen(i, t);
        }
        let t = self.wide.entry(i).or_default();
        t.revenue += amount;
        t.purchases += 1;
        t.items += u64::from(quantity);
    }

    /// The slot of the minute window (`span`, `dim`, `key`), made empty when absent.
    pub fn entry(&mut self, span: Span, dim: Dim, key: KeyCode) -> u32 {
        // Window starts and dates are within `u32` seconds and `u16` days of 1970 (the
        // validator refuses other times, and ClickHouse stores them so).
        let ident = Ident {
            tag: tag(dim, key.kind),
            start: u32::try_from(span.start).unwrap_or(u32::MAX),
            key: key.bits,
        };
        let hash = self.hasher.hash_one(ident);
        let slots = &self.slots;
        if let Some(i) = self
            .index
            .find(hash, |&i| slots[i as usize].ident() == ident)
        {
            return *i;
        }
        let slot = Slot {
            key: ident.key,
            revenue: 0,
            purchases: 0,
            items: 0,
            version: 0,
            start: ident.start,
            date: u16::try_from(span.date).unwrap_or(u16::MAX),
            tag: ident.tag,
            flags: 0,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => self.slots.push(slot) as u32,
        };
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.index
            .insert_unique(hash, i, |&j| hasher.hash_one(slots[j as usize].ident()));
        self.live += 1;
        i
    }

    /// Marks slot `i` changed; true when it was not already.
    pub fn mark_dirty(&mut self, i: u32) -> bool {
        let s = &mut self.slots[i as usize];
        let was = s.flags & DIRTY != 0;
        s.flags |= DIRTY;
        !was
    }

    /// Marks slot `i` unchanged.
    pub fn mark_clean(&mut self, i: u32) {
        self.slots[i as usize].flags &= !DIRTY;
    }

    /// Frees every clean window for which `closed` holds.
    pub fn evict(&mut self, closed: impl Fn(&Slot) -> bool) {
        for i in 0..self.slots.len() {
            let s = &self.slots[i];
            if s.flags & (FREE | DIRTY) != 0 || !closed(s) {
                continue;
            }
            let ident = s.ident();
            let hash = self.hasher.hash_one(ident);
            let i = i as u32;
            if let Ok(e) = self.index.find_entry(hash, |&j| j == i) {
                e.remove();
            }
            if self.slots[i as usize].flags & WIDE != 0 {
                self.wide.remove(&i);
            }
            self.slots[i as usize].flags = FREE;
            self.free.push(i);
            self.live -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(start: i64) -> Span {
        Span {
            start,
            end: start + 60,
            date: 1,
        }
    }

    #[test]
    fn windows_are_found_again_and_evicted_slots_are_reused() {
        let mut w = Windows::default();
        let cat = w.code(&Key::Name(Arc::from("books")));
        let same_cat = w.code(&Key::Name(Arc::from("books")));
        assert_eq!(cat, same_cat, "a name is interned once");
        let product = w.code(&Key::Id(42));
        let a = w.entry(span(60), Dim::Category, cat);
        let b = w.entry(span(60), Dim::Product, product);
        let c = w.entry(span(180), Dim::Product, product);
        assert_eq!(w.entry(span(60), Dim::Category, cat), a);
        assert_ne!(a, b);
        assert_ne!(b, c);
        assert_eq!(w.len(), 3);
        assert_eq!(w.key(a).to_string(), "books");
        assert_eq!(w.key(b), Key::Id(42));
        assert_eq!((w.slot(c).start(), w.slot(c).dim()), (180, Dim::Product));
        assert_eq!(w.slot(c).end(), 240);
        assert_eq!(std::mem::size_of::<Slot>(), 48);
        w.add(b, 300, 3);
        // A changed window stays; the clean ones ending by 120 go.
        assert!(w.mark_dirty(a));
        assert!(!w.mark_dirty(a));
        w.evict(|s| s.end() <= 120);
        assert_eq!(w.len(), 2);
        w.mark_clean(a);
        w.evict(|s| s.end() <= 120);
        assert_eq!(w.len(), 1);
        // Freed slots are reused, and a new window starts empty.
        let d = w.entry(span(60), Dim::Product, product);
        assert!(d == a || d == b);
        assert_eq!(w.totals(d), Totals::default());
        assert_eq!(w.entry(span(180), Dim::Product, product), c);
    }

    #[test]
    fn totals_that_outgrow_the_slot_stay_exact_and_leave_with_the_window() {
        let mut w = Windows::default();
        let product = w.code(&Key::Id(7));
        let a = w.entry(span(0), Dim::Product, product);
        let b = w.entry(span(60), Dim::Product, product);
        // Revenue past i64: ten purchases of the largest amount a purchase can carry.
        let big = 1_000_000i128 * 1_000_000_000_000;
        let mut expected = Totals::default();
        for q in 1..=10u32 {
            w.add(a, big, q * 100_000);
            expected.revenue += big;
            expected.purchases += 1;
            expected.items += u64::from(q) * 100_000;
            assert_eq!(w.totals(a), expected, "after {q} purchases");
        }
        assert!(expected.revenue > i128::from(i64::MAX));
        // Counts past u32, restored, then counted on.
        let restored = Totals {
            revenue: -5,
            purchases: u64::from(u32::MAX),
            items: u64::from(u32::MAX) - 1,
        };
        w.set_totals(b, restored);
        assert_eq!(
            w.totals(b),
            restored,
            "a restored window that fits stays narrow"
        );
        w.add(b, 10, 2);
        let grown = Totals {
            revenue: 5,
            purchases: u64::from(u32::MAX) + 1,
            items: u64::from(u32::MAX) + 1,
        };
        assert_eq!(w.totals(b), grown);
        w.set_totals(b, restored);
        assert_eq!(w.totals(b), restored, "a wide window set small again");
        // Each narrow total alone outgrows its slot field: items, then purchases.
        let items_only = Totals {
            revenue: 0,
            purchases: 1,
            items: u64::from(u32::MAX) - 1,
        };
        w.set_totals(b, items_only);
        w.add(b, 0, 5);
        assert_eq!(
            w.totals(b),
            Totals {
                revenue: 0,
                purchases: 2,
                items: u64::from(u32::MAX) + 4
            },
            "items past u32"
        );
        let purchases_only = Totals {
            revenue: 0,
            purchases: u64::from(u32::MAX),
            items: 1,
        };
        w.set_totals(b, purchases_only);
        w.add(b, 0, 1);
        assert_eq!(
            w.totals(b),
            Totals {
                revenue: 0,
                purchases: u64::from(u32::MAX) + 1,
                items: 2
            },
            "purchases past u32"
        );
        w.set_totals(b, restored);
        assert_eq!(w.totals(b), restored);
        w.set_totals(b, grown);
        assert_eq!(w.totals(b), grown, "a restored wide window");
        // The wide totals leave with their windows; a slot reused starts narrow and empty.
        w.evict(|_| true);
        assert_eq!(w.len(), 0);
        assert!(w.wide.is_empty());
        let c = w.entry(span(0), Dim::Product, product);
        assert_eq!(w.totals(c), Totals::default());
        w.add(c, 1, 1);
        assert_eq!(
            w.totals(c),
            Totals {
                revenue: 1,
                purchases: 1,
                items: 1
            }
        );
    }
}

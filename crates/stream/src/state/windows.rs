//! The open windows of one partition, stored compactly: each window is one fixed-size slot
//! (its identity and totals, 64 bytes) in a slab of fixed chunks, found through a hash index
//! of slot numbers (4 bytes per bucket), and the changed and in-flight lists hold slot numbers.
//! Category names are interned per partition, so no slot owns a heap allocation.
//!
//! A million (window, product) keys cost about 70 MB here, against several times that
//! when each window was a hash map entry keyed by an owned key and listed by clones.

use std::collections::HashMap;
use std::hash::BuildHasher as _;
use std::sync::Arc;

use hashbrown::HashTable;
use lakeshop_clickhouse::RowBinary;

use crate::calendar::{Granularity, Span};
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

/// A dimension key as packed in a slot: its kind and its bits (the id, or the interned
/// name's number).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyCode {
    kind: u8,
    bits: u128,
}

/// A window's identity: granularity, dimension, key kind (the tag), start and key bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Ident {
    tag: u8,
    start: u32,
    key: u128,
}

/// Longest a business day lasts (a day that gains a daylight-saving hour is 25 hours long;
/// an hour more for the rare zone that moved further).
const LONGEST_DAY: i64 = 26 * 3600;

/// One window: identity and full state, in one 64-byte cache line. Times are stored as
/// ClickHouse stores them: the start in seconds since 1970 as `u32` (`DateTime`), the
/// business date in days since 1970 as `u16` (`Date`).
#[derive(Debug, Clone)]
#[repr(align(64))]
pub struct Slot {
    key: u128,
    /// Cents.
    pub revenue: i128,
    pub purchases: u64,
    pub items: u64,
    /// The offset after the last record folded in.
    pub version: u64,
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

    /// A time the window has ended by (UTC seconds): its end for minutes and hours, the
    /// longest a day can last after its start for days (a day's length depends on the time
    /// zone's rules that day; holding a closed day window a little longer changes nothing).
    pub fn ended_by(&self) -> i64 {
        self.start()
            + match self.granularity() {
                Granularity::Minute => 60,
                Granularity::Hour => 3600,
                Granularity::Day => LONGEST_DAY,
            }
    }

    /// Granularity.
    pub fn granularity(&self) -> Granularity {
        Granularity::ALL[usize::from(self.tag & 3)]
    }

    /// Dimension.
    pub fn dim(&self) -> Dim {
        Dim::ALL[usize::from((self.tag >> 2) & 3)]
    }
}

fn tag(g: Granularity, dim: Dim, kind: u8) -> u8 {
    let g = Granularity::ALL.iter().position(|x| *x == g).unwrap_or(0) as u8;
    let d = Dim::ALL.iter().position(|x| *x == dim).unwrap_or(0) as u8;
    g | (d << 2) | (kind << 4)
}

/// The windows of one partition.
#[derive(Debug, Default)]
pub struct Windows {
    slots: Chunked<Slot>,
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

    /// The slot of the window (`g`, `span`, `dim`, `key`), made empty when absent.
    pub fn entry(&mut self, g: Granularity, span: Span, dim: Dim, key: KeyCode) -> u32 {
        // Window starts and dates are within `u32` seconds and `u16` days of 1970 (the
        // validator refuses other times, and ClickHouse stores them so).
        let ident = Ident {
            tag: tag(g, dim, key.kind),
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
            self.slots[i as usize].flags = FREE;
            self.free.push(i);
            self.live -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(start: i64, len: i64) -> Span {
        Span {
            start,
            end: start + len,
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
        let a = w.entry(Granularity::Minute, span(60, 60), Dim::Category, cat);
        let b = w.entry(Granularity::Minute, span(60, 60), Dim::Product, product);
        let c = w.entry(Granularity::Hour, span(0, 3600), Dim::Product, product);
        assert_eq!(
            w.entry(Granularity::Minute, span(60, 60), Dim::Category, cat),
            a
        );
        assert_ne!(a, b);
        assert_ne!(b, c);
        assert_eq!(w.len(), 3);
        assert_eq!(w.key(a).to_string(), "books");
        assert_eq!(w.key(b), Key::Id(42));
        assert_eq!(
            (w.slot(c).granularity(), w.slot(c).dim()),
            (Granularity::Hour, Dim::Product)
        );
        assert_eq!(w.slot(c).ended_by(), 3600);
        assert_eq!(std::mem::size_of::<Slot>(), 64);
        w.slot_mut(b).purchases = 3;
        // A changed window stays; the clean minute ones ending by 120 go.
        assert!(w.mark_dirty(a));
        assert!(!w.mark_dirty(a));
        w.evict(|s| s.ended_by() <= 120);
        assert_eq!(w.len(), 2);
        w.mark_clean(a);
        w.evict(|s| s.ended_by() <= 120);
        assert_eq!(w.len(), 1);
        // Freed slots are reused, and a new window starts empty.
        let d = w.entry(Granularity::Minute, span(60, 60), Dim::Product, product);
        assert!(d == a || d == b);
        assert_eq!(w.slot(d).purchases, 0);
        assert_eq!(
            w.entry(Granularity::Hour, span(0, 3600), Dim::Product, product),
            c
        );
    }
}

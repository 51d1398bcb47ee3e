//! The purchase ids the API acknowledged lately, each with a fingerprint of its content, so
//! a re-send is answered without producing it again (identical) or refused (other content).
//! Bounded: the oldest ids are forgotten first.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use uuid::Uuid;

/// How a purchase compares with what was acknowledged before under its id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Not acknowledged lately.
    New,
    /// Acknowledged with the same content.
    Same,
    /// Acknowledged with other content.
    Other,
}

#[derive(Debug, Default)]
struct Inner {
    fingerprints: HashMap<Uuid, u64>,
    order: VecDeque<Uuid>,
}

/// Bounded map of acknowledged purchase ids to content fingerprints.
#[derive(Debug)]
pub(crate) struct RecentIds {
    capacity: usize,
    inner: Mutex<Inner>,
}

impl RecentIds {
    /// Remembers at most `capacity` ids (0 remembers none).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the map consistent (each step is one
        // insert or remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How `id` with `fingerprint` compares with what was acknowledged.
    pub(crate) fn seen(&self, id: &Uuid, fingerprint: u64) -> Seen {
        match self.lock().fingerprints.get(id) {
            None => Seen::New,
            Some(f) if *f == fingerprint => Seen::Same,
            Some(_) => Seen::Other,
        }
    }

    /// Records ids the broker acknowledged (an id already there keeps its first content).
    pub(crate) fn acknowledged(&self, ids: impl IntoIterator<Item = (Uuid, u64)>) {
        if self.capacity == 0 {
            return;
        }
        let mut inner = self.lock();
        for (id, fingerprint) in ids {
            if inner.fingerprints.contains_key(&id) {
                continue;
            }
            if inner.order.len() == self.capacity {
                if let Some(old) = inner.order.pop_front() {
                    inner.fingerprints.remove(&old);
                }
            }
            inner.fingerprints.insert(id, fingerprint);
            inner.order.push_back(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_other_and_forgotten() {
        let r = RecentIds::new(2);
        let (a, b, c) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        assert_eq!(r.seen(&a, 7), Seen::New);
        r.acknowledged([(a, 7), (b, 8)]);
        assert_eq!(r.seen(&a, 7), Seen::Same);
        assert_eq!(r.seen(&a, 9), Seen::Other);
        // The first content stays.
        r.acknowledged([(a, 9)]);
        assert_eq!(r.seen(&a, 7), Seen::Same);
        // A third id pushes out the oldest.
        r.acknowledged([(c, 1)]);
        assert_eq!(r.seen(&a, 7), Seen::New);
        assert_eq!(r.seen(&b, 8), Seen::Same);
        assert_eq!(r.seen(&c, 1), Seen::Same);
        let none = RecentIds::new(0);
        none.acknowledged([(a, 7)]);
        assert_eq!(none.seen(&a, 7), Seen::New);
    }
}

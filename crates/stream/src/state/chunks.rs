//! Growable storage in fixed-size chunks, for the loader's large per-partition arrays (window
//! slots, counted ids). A `Vec` doubles: with millions of entries it holds up to twice what
//! it needs, and while it grows the old and the new buffer both live, so a state of N bytes
//! peaks at three times N. Chunks never move: growing allocates one more chunk, and at most
//! one chunk is unused.

use std::collections::VecDeque;
use std::ops::{Index, IndexMut};

/// Entries per chunk (a power of two).
const CHUNK: usize = 1 << 14;
const SHIFT: u32 = CHUNK.trailing_zeros();
const MASK: usize = CHUNK - 1;

/// A vector of chunks: push and index, nothing moves once stored.
#[derive(Debug)]
pub struct Chunked<T> {
    chunks: Vec<Vec<T>>,
    len: usize,
}

impl<T> Default for Chunked<T> {
    fn default() -> Self {
        Self {
            chunks: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Chunked<T> {
    /// Entries held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Appends `value`; returns its index.
    pub fn push(&mut self, value: T) -> usize {
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => last.push(value),
            // The first chunk grows as a `Vec` does (a small state stays small), up to
            // CHUNK; the next ones are allocated whole.
            Some(_) => {
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(value);
                self.chunks.push(chunk);
            }
            None => self.chunks.push(vec![value]),
        }
        self.len += 1;
        self.len - 1
    }
}

impl<T> Index<usize> for Chunked<T> {
    type Output = T;

    fn index(&self, i: usize) -> &T {
        &self.chunks[i >> SHIFT][i & MASK]
    }
}

impl<T> IndexMut<usize> for Chunked<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        &mut self.chunks[i >> SHIFT][i & MASK]
    }
}

/// A queue of chunks: push at the back, pop at the front, index from the front. A chunk
/// whose entries all left is kept (one at most) for the next chunk the back needs.
#[derive(Debug)]
pub struct ChunkedDeque<T: Copy> {
    chunks: VecDeque<Vec<T>>,
    /// Entries of the front chunk that already left.
    head: usize,
    len: usize,
    spare: Option<Vec<T>>,
}

impl<T: Copy> Default for ChunkedDeque<T> {
    fn default() -> Self {
        Self {
            chunks: VecDeque::new(),
            head: 0,
            len: 0,
            spare: None,
        }
    }
}

impl<T: Copy> ChunkedDeque<T> {
    /// Entries held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Appends `value` at the back.
    pub fn push_back(&mut self, value: T) {
        match self.chunks.back_mut() {
            Some(last) if last.len() < CHUNK => last.push(value),
            _ => {
                let mut chunk = match self.spare.take() {
                    Some(spare) => spare,
                    // A lone first chunk grows as a `Vec` does; later ones come whole.
                    None if self.chunks.is_empty() => Vec::new(),
                    None => Vec::with_capacity(CHUNK),
                };
                chunk.push(value);
                self.chunks.push_back(chunk);
            }
        }
        self.len += 1;
    }

    /// The front entry.
    pub fn front(&self) -> Option<&T> {
        (self.len > 0).then(|| &self[0])
    }

    /// Removes the front entry.
    pub fn pop_front(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        let value = self[0];
        self.len -= 1;
        self.head += 1;
        let front_done = self.head == CHUNK || self.len == 0;
        if front_done {
            if let Some(mut chunk) = self.chunks.pop_front() {
                chunk.clear();
                if chunk.capacity() == CHUNK {
                    self.spare = Some(chunk);
                }
            }
            self.head = 0;
        }
        Some(value)
    }
}

impl<T: Copy> Index<usize> for ChunkedDeque<T> {
    type Output = T;

    fn index(&self, i: usize) -> &T {
        let at = self.head + i;
        &self.chunks[at >> SHIFT][at & MASK]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_indexes_across_chunks_and_allocates_no_more_than_one_spare_chunk() {
        let mut c = Chunked::default();
        let n = 3 * CHUNK + 17;
        for i in 0..n {
            assert_eq!(c.push(i as u64 * 3), i);
        }
        assert_eq!(c.len(), n);
        for i in [0, 1, CHUNK - 1, CHUNK, 2 * CHUNK + 5, n - 1] {
            assert_eq!(c[i], i as u64 * 3);
        }
        c[CHUNK] = 7;
        assert_eq!(c[CHUNK], 7);
        assert_eq!(c[CHUNK - 1], (CHUNK as u64 - 1) * 3);
        let capacity: usize = c.chunks.iter().map(Vec::capacity).sum();
        assert!(capacity < n + CHUNK, "capacity {capacity} for {n}");
    }

    #[test]
    fn the_deque_keeps_order_across_chunks_and_reuses_an_emptied_chunk() {
        let mut d = ChunkedDeque::default();
        let mut model = VecDeque::new();
        let mut next = 0u64;
        // Grow past several chunks, drain most, grow again: the same as a VecDeque.
        for (push, pop) in [(2 * CHUNK + 3, CHUNK + 1), (CHUNK, 2 * CHUNK), (5, 9)] {
            for _ in 0..push {
                d.push_back(next);
                model.push_back(next);
                next += 1;
            }
            for _ in 0..pop {
                assert_eq!(d.pop_front(), model.pop_front());
            }
            assert_eq!(d.len(), model.len());
            assert_eq!(d.front(), model.front());
            for i in [0, model.len() / 2, model.len().saturating_sub(1)] {
                if i < model.len() {
                    assert_eq!(d[i], model[i], "entry {i}");
                }
            }
            let held: usize = d.chunks.iter().map(Vec::capacity).sum();
            assert!(held <= d.len() + 2 * CHUNK, "{held} held for {}", d.len());
        }
        while let Some(v) = model.pop_front() {
            assert_eq!(d.pop_front(), Some(v));
        }
        assert_eq!(d.pop_front(), None);
        assert!(d.front().is_none());
        d.push_back(42);
        assert_eq!(d[0], 42);
    }
}

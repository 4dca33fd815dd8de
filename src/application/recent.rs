//! A bounded map that forgets the least recently used entry: the one shape of every piece of
//! per-device (and per-sender) state an isolate or instance keeps in memory, so that its cost
//! stays flat however large the fleet: every operation is O(1), nothing ever scans or clears
//! the whole map, and memory is fixed per entry.
//!
//! Entries are keyed by a 64-bit fingerprint of the caller's key (SipHash with a key drawn from
//! the host's entropy when the map is made), not by the key itself: a device id may be 128
//! bytes, and a million of them would be 128 MB of keys alone. Two keys share an entry only if
//! their fingerprints collide, about once in 2^64 / n² for n entries (10^-7 at a million), and
//! the random key keeps a sender from choosing ids that collide.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::ports::Entropy;

/// No entry: the end of the recency list.
const NONE: u32 = u32::MAX;

/// A keyed 64-bit hash of text.
#[derive(Debug, Clone, Copy)]
pub struct Fingerprints {
    k0: u64,
    k1: u64,
}

impl Fingerprints {
    /// Keys drawn from `entropy`; without entropy, a fixed key (collisions stay as rare, but a
    /// sender who knew the key could aim for them).
    pub fn new(entropy: &dyn Entropy) -> Self {
        let mut key = [0u8; 16];
        let _ = entropy.fill(&mut key);
        let (a, b) = key.split_at(8);
        Self {
            k0: u64::from_le_bytes(a.try_into().unwrap_or_default()),
            k1: u64::from_le_bytes(b.try_into().unwrap_or_default()),
        }
    }

    pub fn of(&self, text: &str) -> u64 {
        // SipHash-2-4 with our key. `SipHasher` is deprecated only because std's HashMap moved to
        // a faster variant; it is the keyed PRF this needs.
        #[allow(deprecated)]
        let mut h = std::hash::SipHasher::new_with_keys(self.k0, self.k1);
        h.write(text.as_bytes());
        h.finish()
    }
}

/// Fingerprints are uniform already: the index uses them as they are.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

struct Node<V> {
    key: u64,
    /// Towards the most recent, and towards the least recent.
    newer: u32,
    older: u32,
    value: V,
}

/// At most `capacity` entries; inserting into a full map forgets the least recently used one.
pub struct Recent<V> {
    index: HashMap<u64, u32, BuildHasherDefault<Identity>>,
    nodes: Vec<Node<V>>,
    newest: u32,
    oldest: u32,
    capacity: usize,
    fingerprints: Fingerprints,
}

impl<V> Recent<V> {
    pub fn new(capacity: usize, fingerprints: Fingerprints) -> Self {
        Self {
            index: HashMap::default(),
            nodes: Vec::new(),
            newest: NONE,
            oldest: NONE,
            capacity: capacity.clamp(1, NONE as usize - 1),
            fingerprints,
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The fingerprint `key` is stored under.
    pub fn fingerprint(&self, key: &str) -> u64 {
        self.fingerprints.of(key)
    }

    /// The entry of `key`, now the most recently used.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        let fp = self.fingerprint(key);
        self.get_mut_by(fp)
    }

    /// The entry under fingerprint `fp`, now the most recently used.
    pub fn get_mut_by(&mut self, fp: u64) -> Option<&mut V> {
        let at = *self.index.get(&fp)?;
        self.touch(at);
        Some(&mut self.nodes[at as usize].value)
    }

    /// The entry of `key` without making it more recent.
    pub fn peek(&self, key: &str) -> Option<&V> {
        let at = *self.index.get(&self.fingerprint(key))?;
        Some(&self.nodes[at as usize].value)
    }

    /// Sets the entry of `key`, the most recently used now. Returns the entry forgotten to make
    /// room (the least recently used), if the map was full.
    pub fn insert(&mut self, key: &str, value: V) -> Option<V> {
        let fp = self.fingerprint(key);
        self.insert_by(fp, value)
    }

    /// [`insert`](Self::insert) under fingerprint `fp`.
    pub fn insert_by(&mut self, fp: u64, value: V) -> Option<V> {
        if let Some(&at) = self.index.get(&fp) {
            self.touch(at);
            self.nodes[at as usize].value = value;
            return None;
        }
        if self.nodes.len() < self.capacity {
            let at = self.nodes.len() as u32;
            self.nodes.push(Node {
                key: fp,
                newer: NONE,
                older: NONE,
                value,
            });
            self.index.insert(fp, at);
            self.link_newest(at);
            return None;
        }
        // Full: the least recently used node takes the new entry in place.
        let at = self.oldest;
        self.unlink(at);
        let node = &mut self.nodes[at as usize];
        self.index.remove(&node.key);
        node.key = fp;
        let forgotten = std::mem::replace(&mut node.value, value);
        self.index.insert(fp, at);
        self.link_newest(at);
        Some(forgotten)
    }

    /// The least recently used entry, which an insert into a full map would forget.
    pub fn oldest(&self) -> Option<&V> {
        self.nodes.get(self.oldest as usize).map(|n| &n.value)
    }

    fn touch(&mut self, at: u32) {
        if self.newest != at {
            self.unlink(at);
            self.link_newest(at);
        }
    }

    fn unlink(&mut self, at: u32) {
        let (newer, older) = {
            let n = &self.nodes[at as usize];
            (n.newer, n.older)
        };
        match newer {
            NONE => self.newest = older,
            n => self.nodes[n as usize].older = older,
        }
        match older {
            NONE => self.oldest = newer,
            o => self.nodes[o as usize].newer = newer,
        }
    }

    fn link_newest(&mut self, at: u32) {
        let previous = self.newest;
        {
            let n = &mut self.nodes[at as usize];
            n.newer = NONE;
            n.older = previous;
        }
        match previous {
            NONE => self.oldest = at,
            p => self.nodes[p as usize].newer = at,
        }
        self.newest = at;
    }

    /// Bytes this map's own structure takes per entry at `capacity` (its index and node), not
    /// counting what `V` owns on the heap: for the bench's memory figures.
    pub fn bytes_per_entry() -> usize {
        // hashbrown: a (u64, u32) slot (16 bytes) and a control byte, at most 7/8 full.
        std::mem::size_of::<Node<V>>() + (16 + 1) * 8 / 7
    }
}

impl<V> std::fmt::Debug for Recent<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recent")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ports::EntropyUnavailable;

    /// Entropy that counts up: fixed fingerprints for tests.
    pub struct Counting;

    impl Entropy for Counting {
        fn fill(&self, buf: &mut [u8]) -> Result<(), EntropyUnavailable> {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = i as u8;
            }
            Ok(())
        }
    }

    pub fn fingerprints() -> Fingerprints {
        Fingerprints::new(&Counting)
    }

    #[test]
    fn forgets_the_least_recently_used_when_full() {
        let mut m = Recent::new(3, fingerprints());
        for (k, v) in [("a", 1), ("b", 2), ("c", 3)] {
            assert_eq!(m.insert(k, v), None);
        }
        // Using `a` makes `b` the oldest.
        assert_eq!(m.get_mut("a"), Some(&mut 1));
        assert_eq!(m.oldest(), Some(&2));
        assert_eq!(m.insert("d", 4), Some(2));
        assert_eq!(m.len(), 3);
        assert!(m.peek("b").is_none());
        assert_eq!(m.peek("a"), Some(&1));
        // Replacing a present key forgets nothing.
        assert_eq!(m.insert("c", 30), None);
        assert_eq!(m.peek("c"), Some(&30));
        assert_eq!(m.insert("e", 5), Some(1), "a was the oldest after c and d");
    }

    #[test]
    fn a_long_churn_stays_bounded_and_consistent() {
        let mut m = Recent::new(1_000, fingerprints());
        for i in 0..50_000u32 {
            let key = format!("device-{i}");
            m.insert(&key, i);
            if i % 7 == 0 {
                // Re-use an entry that should still be there.
                let back = format!("device-{}", i.saturating_sub(500));
                assert!(m.get_mut(&back).is_some(), "{back} forgotten too soon");
            }
            assert!(m.len() <= 1_000);
        }
        assert_eq!(m.len(), 1_000);
        // The newest inserts are all there (the re-used ones hold some of the other places).
        for i in 49_200..50_000u32 {
            assert_eq!(m.peek(&format!("device-{i}")), Some(&i));
        }
    }

    #[test]
    fn fingerprints_depend_on_the_key() {
        let a = Fingerprints { k0: 1, k1: 2 };
        let b = Fingerprints { k0: 3, k1: 4 };
        assert_eq!(a.of("dev-1"), a.of("dev-1"));
        assert_ne!(a.of("dev-1"), a.of("dev-2"));
        assert_ne!(a.of("dev-1"), b.of("dev-1"));
    }
}

//! A keyed table whose memory is fixed when it is made.
//!
//! Entries live in a slab allocated once at capacity; the index is a hash
//! map reserved at twice the capacity, so it never holds more than half its
//! buckets and rehashes in place instead of growing. A full table evicts by
//! CLOCK with a second chance for entries seen again after they were
//! inserted: a flood of one-off keys (IP spraying) churns among itself and
//! leaves established clients in place, and memory stays flat however many
//! distinct keys arrive. Evictions are counted.

use std::hash::Hash;

use hashbrown::HashMap;

struct Slot<K, V> {
    key: K,
    value: V,
    referenced: bool,
}

pub struct BoundedTable<K, V> {
    index: HashMap<K, u32>,
    slots: Vec<Slot<K, V>>,
    hand: usize,
    capacity: usize,
    evictions: u64,
}

impl<K: Hash + Eq + Clone, V> BoundedTable<K, V> {
    /// `capacity` is clamped to [1, u32::MAX].
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.clamp(1, u32::MAX as usize);
        BoundedTable {
            index: HashMap::with_capacity(capacity.saturating_mul(2)),
            slots: Vec::with_capacity(capacity),
            hand: 0,
            capacity,
            evictions: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Entries evicted to make room since the table was made.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Bytes allocated by the slab and the index (they never grow; keys
    /// that own heap memory, such as subject tokens, add at most their bounded length each).
    pub fn reserved_bytes(&self) -> usize {
        self.slots.capacity() * std::mem::size_of::<Slot<K, V>>() + self.index.allocation_size()
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.index.get(key).map(|&i| &self.slots[i as usize].value)
    }

    /// The entry for `key`, made by `init` if absent (evicting one if full).
    /// Returns the evicted entry, if any, beside the value.
    pub fn entry(&mut self, key: &K, init: impl FnOnce() -> V) -> (&mut V, Option<(K, V)>) {
        if let Some(&i) = self.index.get(key) {
            let slot = &mut self.slots[i as usize];
            slot.referenced = true;
            return (&mut slot.value, None);
        }
        let fresh = Slot {
            key: key.clone(),
            value: init(),
            referenced: false,
        };
        if self.slots.len() < self.capacity {
            let i = self.slots.len();
            self.slots.push(fresh);
            self.index.insert(key.clone(), i as u32);
            return (&mut self.slots[i].value, None);
        }
        let victim = self.sweep();
        let old = std::mem::replace(&mut self.slots[victim], fresh);
        self.index.remove(&old.key);
        self.index.insert(key.clone(), victim as u32);
        self.evictions += 1;
        (&mut self.slots[victim].value, Some((old.key, old.value)))
    }

    /// The next slot without a second chance; clears chances as it passes.
    fn sweep(&mut self) -> usize {
        loop {
            let i = self.hand;
            self.hand = (self.hand + 1) % self.slots.len();
            let slot = &mut self.slots[i];
            if slot.referenced {
                slot.referenced = false;
            } else {
                return i;
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.slots.iter().map(|s| (&s.key, &s.value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_flat_under_a_million_distinct_keys() {
        let mut t: BoundedTable<u64, [u8; 64]> = BoundedTable::new(10_000);
        let before = (t.reserved_bytes(), t.slots.capacity());
        for k in 0..1_000_000u64 {
            t.entry(&k, || [0; 64]);
        }
        assert_eq!(t.len(), 10_000);
        assert_eq!(t.evictions(), 990_000);
        assert_eq!((t.reserved_bytes(), t.slots.capacity()), before);
        assert_eq!(t.index.len(), 10_000);
    }

    #[test]
    fn established_keys_survive_a_flood_of_one_off_keys() {
        let mut t: BoundedTable<u64, u32> = BoundedTable::new(1000);
        // 100 clients seen repeatedly, interleaved with 100,000 one-off keys.
        for round in 0..1000u64 {
            for c in 0..100u64 {
                if round % 5 == 0 {
                    *t.entry(&c, || 0).0 += 1;
                }
            }
            for s in 0..100u64 {
                t.entry(&(1_000_000 + round * 100 + s), || 0);
            }
        }
        let kept = (0..100u64)
            .filter(|c| t.get(c).is_some_and(|&n| n > 1))
            .count();
        assert!(kept >= 95, "only {kept} of 100 established clients kept");
    }

    #[test]
    fn eviction_returns_the_victim() {
        let mut t: BoundedTable<u8, u8> = BoundedTable::new(2);
        assert!(t.entry(&1, || 10).1.is_none());
        assert!(t.entry(&2, || 20).1.is_none());
        let (_, evicted) = t.entry(&3, || 30);
        assert_eq!(evicted, Some((1, 10)));
        assert_eq!(t.get(&1), None);
        assert_eq!(t.get(&3), Some(&30));
    }
}

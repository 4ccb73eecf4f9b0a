//! A map with a bound and an eviction rule, for the tables keyed by what LAN clients send
//! (client records, per-client counters): past the bound, the least recently used entry
//! that may go makes room; an entry the caller says to keep never goes.
use std::{
    collections::{BTreeMap, HashMap},
    hash::Hash,
};

/// Entries an insertion looks at, at most, for one that may go: bounds the cost of an
/// insertion when the oldest entries must all stay (they move to the back, so successive
/// insertions look further).
const INSERT_LOOKS: usize = 64;

/// At most `cap` entries, except those admitted over it because they must be kept.
#[derive(Debug)]
pub struct Bounded<K, V> {
    entries: HashMap<K, (V, u64)>,
    /// Entries by last use: tick → key.
    order: BTreeMap<u64, K>,
    tick: u64,
    cap: usize,
}

impl<K: Hash + Eq + Clone, V> Bounded<K, V> {
    pub fn new(cap: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            cap,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.entries.get(key).map(|(v, _)| v)
    }

    /// The entry of `key`, marked as just used.
    pub fn touch(&mut self, key: &K) -> Option<&mut V> {
        self.tick += 1;
        let tick = self.tick;
        let (value, used) = self.entries.get_mut(key)?;
        self.order.remove(used);
        *used = tick;
        self.order.insert(tick, key.clone());
        Some(value)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.entries.iter().map(|(k, (v, _))| (k, v))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.entries.values().map(|(v, _)| v)
    }

    pub fn remove(&mut self, key: &K) -> Option<V> {
        let (value, used) = self.entries.remove(key)?;
        self.order.remove(&used);
        Some(value)
    }

    /// Inserts `key` (replacing and touching an entry already there). When the map is
    /// full, the least recently used entries for which `keep` is false go first (they
    /// are returned); when none may go, the entry is admitted beyond the bound if
    /// `must_admit`, else handed back.
    pub fn insert(
        &mut self,
        key: K,
        value: V,
        keep: impl FnMut(&K, &V) -> bool,
        must_admit: bool,
    ) -> Result<Vec<(K, V)>, V> {
        if let Some(slot) = self.touch(&key) {
            *slot = value;
            return Ok(Vec::new());
        }
        let evicted = self.make_room(self.cap.saturating_sub(1), INSERT_LOOKS, keep);
        if self.entries.len() >= self.cap && !must_admit {
            return Err(value);
        }
        self.tick += 1;
        self.order.insert(self.tick, key.clone());
        self.entries.insert(key, (value, self.tick));
        Ok(evicted)
    }

    /// Evicts entries that may go until at most `cap` remain (or none may go); what went.
    pub fn trim(&mut self, keep: impl FnMut(&K, &V) -> bool) -> Vec<(K, V)> {
        self.make_room(self.cap, self.entries.len(), keep)
    }

    /// Looks at up to `looks` entries oldest first, at most once each, evicting those that
    /// may go until `target` remain. An entry that must stay moves to the back, so the next
    /// call finds the ones that may go first: kept entries cost a look once, not on every
    /// insertion, and an insertion into a map full of kept entries costs `looks` at most.
    fn make_room(
        &mut self,
        target: usize,
        looks: usize,
        mut keep: impl FnMut(&K, &V) -> bool,
    ) -> Vec<(K, V)> {
        let mut evicted = Vec::new();
        for _ in 0..self.entries.len().min(looks) {
            if self.entries.len() <= target {
                break;
            }
            let Some((_, key)) = self.order.pop_first() else {
                break;
            };
            let Some((value, _)) = self.entries.remove(&key) else {
                continue;
            };
            if keep(&key, &value) {
                self.tick += 1;
                self.order.insert(self.tick, key.clone());
                self.entries.insert(key, (value, self.tick));
            } else {
                evicted.push((key, value));
            }
        }
        evicted
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A map full of entries that must stay (a pool's lease holders): an insertion looks
    /// at a bounded number of them, not at all of them (which made every DHCP event
    /// O(table) once the leases outnumbered the bound).
    #[test]
    fn an_insertion_into_a_map_of_kept_entries_looks_at_a_bounded_number() {
        let mut m = Bounded::new(10_000);
        for k in 0..10_000u32 {
            m.insert(k, (), |_, _| true, true).unwrap();
        }
        let mut looks = 0;
        let refused = m.insert(
            10_000,
            (),
            |_, _| {
                looks += 1;
                true
            },
            false,
        );
        assert_eq!(refused, Err(()));
        assert_eq!(looks, INSERT_LOOKS);
        // The entries looked at moved to the back: the next insertion looks at others,
        // and finds the one that may go.
        let gone = m
            .insert(10_001, (), |k, _| *k != INSERT_LOOKS as u32 + 5, false)
            .unwrap();
        assert_eq!(gone, vec![(INSERT_LOOKS as u32 + 5, ())]);
        // Nothing over the bound: trim evicts nothing.
        let mut looks = 0;
        m.trim(|_, _| {
            looks += 1;
            true
        });
        assert_eq!(looks, 0, "nothing over the bound");
    }

    #[test]
    fn least_recently_used_goes_and_kept_ones_stay() {
        let mut m = Bounded::new(3);
        let never = |_: &u32, _: &&str| false;
        m.insert(1, "a", never, false).unwrap();
        m.insert(2, "b", never, false).unwrap();
        m.insert(3, "c", never, false).unwrap();
        m.touch(&1);
        let gone = m.insert(4, "d", never, false).unwrap();
        assert_eq!(gone, vec![(2, "b")]);
        // 1 and 3 must stay, 4 may go.
        let keep = |k: &u32, _: &&str| *k != 4;
        assert_eq!(m.insert(5, "e", keep, false).unwrap(), vec![(4, "d")]);
        // Everything kept: a new entry is refused, unless it must be admitted.
        let all = |_: &u32, _: &&str| true;
        assert_eq!(m.insert(6, "f", all, false), Err("f"));
        assert!(m.insert(6, "f", all, true).unwrap().is_empty());
        assert_eq!(m.len(), 4);
        // Once 5 may go again, a trim brings the map back to its bound.
        assert_eq!(m.trim(|k, _| *k != 5), vec![(5, "e")]);
        assert_eq!(m.len(), 3);
    }

    proptest! {
        /// Whatever the operations: never more than the bound plus the entries admitted
        /// over it, a kept entry is never evicted, and `order` mirrors `entries`.
        #[test]
        fn bound_and_keep_hold(ops in prop::collection::vec((0u16..300, any::<bool>()), 0..2000)) {
            let kept = |k: &u16| k.is_multiple_of(7);
            let mut m = Bounded::new(32);
            let mut over = 0usize;
            for (key, admit) in ops {
                let must = admit && kept(&key);
                let before = m.contains(&key);
                match m.insert(key, (), |k, _| kept(k), must) {
                    Ok(gone) => {
                        prop_assert!(gone.iter().all(|(k, _)| !kept(k)));
                        if !before && m.len() > 32 {
                            over += 1;
                        }
                    }
                    Err(()) => prop_assert!(!must && m.len() >= 32),
                }
                prop_assert!(m.len() <= 32 + over);
                prop_assert_eq!(m.order.len(), m.entries.len());
            }
        }
    }
}

use std::collections::{BTreeSet, HashMap};

/// Which input offsets a stage may store, per partition.
///
/// Every input record is *begun* when it is read and *finished* when every output derived
/// from it is acknowledged (or nothing had to be produced). The position that may be
/// stored is the smallest unfinished offset, or one past the highest finished offset when
/// nothing is outstanding: never past a record whose outputs are still in flight.
#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<i32, PartitionOffsets>,
}

#[derive(Debug, Default)]
struct PartitionOffsets {
    outstanding: BTreeSet<i64>,
    next: Option<i64>,
    stored: Option<i64>,
}

impl OffsetTracker {
    /// An empty tracker.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `offset` was read and its outputs are not yet acknowledged.
    pub fn begin(&mut self, partition: i32, offset: i64) {
        let p = self.partitions.entry(partition).or_default();
        p.outstanding.insert(offset);
        p.next = Some(p.next.map_or(offset + 1, |next| next.max(offset + 1)));
    }

    /// Records that every output of `offset` is acknowledged.
    pub fn finish(&mut self, partition: i32, offset: i64) {
        if let Some(p) = self.partitions.get_mut(&partition) {
            p.outstanding.remove(&offset);
        }
    }

    /// Reads and finishes `offset` at once (an input with no output).
    pub fn skip(&mut self, partition: i32, offset: i64) {
        self.begin(partition, offset);
        self.finish(partition, offset);
    }

    /// The next offset to consume that may be committed for `partition`, if it moved since
    /// the last call. Marks it as stored.
    pub fn take_committable(&mut self, partition: i32) -> Option<i64> {
        let p = self.partitions.get_mut(&partition)?;
        let position = match p.outstanding.first() {
            Some(first) => *first,
            None => p.next?,
        };
        if p.stored.is_some_and(|stored| stored >= position) {
            return None;
        }
        p.stored = Some(position);
        Some(position)
    }

    /// Every partition whose committable position moved, with that position.
    pub fn take_all_committable(&mut self) -> Vec<(i32, i64)> {
        let partitions: Vec<i32> = self.partitions.keys().copied().collect();
        partitions
            .into_iter()
            .filter_map(|p| self.take_committable(p).map(|offset| (p, offset)))
            .collect()
    }

    /// How many records of `partition` still have outputs in flight.
    pub fn outstanding(&self, partition: i32) -> usize {
        self.partitions
            .get(&partition)
            .map_or(0, |p| p.outstanding.len())
    }

    /// How many records of all partitions still have outputs in flight.
    pub fn total_outstanding(&self) -> usize {
        self.partitions.values().map(|p| p.outstanding.len()).sum()
    }

    /// Forgets a partition (revoked).
    pub fn remove(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_passes_an_outstanding_offset() {
        let mut t = OffsetTracker::new();
        t.begin(0, 10);
        t.begin(0, 11);
        t.skip(0, 12);
        assert_eq!(t.take_committable(0), Some(10));
        t.finish(0, 11);
        assert_eq!(t.take_committable(0), None, "10 still outstanding");
        t.finish(0, 10);
        assert_eq!(t.take_committable(0), Some(13));
        assert_eq!(t.take_committable(0), None, "unchanged");
        assert_eq!(t.outstanding(0), 0);
    }

    #[test]
    fn partitions_are_independent() {
        let mut t = OffsetTracker::new();
        t.begin(0, 5);
        t.skip(1, 7);
        let mut all = t.take_all_committable();
        all.sort();
        assert_eq!(all, vec![(0, 5), (1, 8)]);
        t.remove(0);
        assert_eq!(t.total_outstanding(), 0);
    }

    #[test]
    fn finishing_out_of_order_is_fine() {
        let mut t = OffsetTracker::new();
        for o in 0..5 {
            t.begin(3, o);
        }
        for o in [4, 2, 3, 1] {
            t.finish(3, o);
        }
        assert_eq!(t.take_committable(3), Some(0));
        t.finish(3, 0);
        assert_eq!(t.take_committable(3), Some(5));
    }
}

//! Rows reused as slots, for a store that bills every row it writes (a Durable Object's SQLite).
//!
//! Inserting a row per segment and deleting it once delivered costs two rows written per
//! segment. Instead, a delivered segment's row is only marked free in memory and the next
//! segment overwrites it (one row written); what is delivered is recorded now and then as a
//! watermark, `settled_below`: every segment numbered below it is settled. It is written once it
//! has moved by [`WATERMARK_STEP`] segments, or when nothing is held any more. After memory is
//! lost, rows numbered at or above the watermark come back; rows below it are free. A row is
//! reused only once its segment is settled, so a crash can at worst send again the segments
//! settled since the last watermark (at most `WATERMARK_STEP` of them, or what a round settled;
//! at-least-once), never lose one.

/// How many segments the watermark may lag behind what is settled before it is written.
pub const WATERMARK_STEP: i64 = 16;

/// Where a segment lives: its row (`slot`) and its number (`seq`, rising, never reused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlotKey {
    pub slot: i64,
    pub seq: i64,
}

/// How to write a new segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Overwrite this free row.
    Reuse(SlotKey),
    /// No row is free: add one.
    Insert(SlotKey),
}

impl Placement {
    pub fn key(self) -> SlotKey {
        match self {
            Self::Reuse(k) | Self::Insert(k) => k,
        }
    }
}

#[derive(Debug, Default)]
pub struct Slots {
    free: Vec<i64>,
    /// Numbers of the segments not yet settled, ascending. A sorted `Vec`, not a `BTreeSet`:
    /// numbers are handed out rising, so an insert is a push, and it is ~5 KB less Worker.
    live: Vec<i64>,
    last_seq: i64,
    last_slot: i64,
    /// The watermark the store holds.
    persisted: i64,
}

impl Slots {
    /// The book after reading the store back: its rows as (slot, seq), and its watermark. A row
    /// whose `seq` is at or above [`Slots::settled_below`] holds a segment not settled.
    pub fn load(rows: impl IntoIterator<Item = SlotKey>, settled_below: i64) -> Self {
        // Numbers start at 1: "below 1" holds without being written.
        let settled_below = settled_below.max(1);
        let mut book = Self {
            persisted: settled_below,
            last_seq: settled_below - 1,
            ..Self::default()
        };
        for row in rows {
            book.last_seq = book.last_seq.max(row.seq);
            book.last_slot = book.last_slot.max(row.slot);
            if row.seq >= settled_below {
                book.written(row);
            } else {
                book.free.push(row.slot);
            }
        }
        book
    }

    /// Every segment numbered below this is settled (the watermark the store holds).
    pub fn settled_below(&self) -> i64 {
        self.persisted
    }

    /// Where the next segment goes: a free row if there is one.
    pub fn place(&mut self) -> Placement {
        self.last_seq += 1;
        let seq = self.last_seq;
        match self.free.pop() {
            Some(slot) => Placement::Reuse(SlotKey { slot, seq }),
            None => {
                self.last_slot += 1;
                Placement::Insert(SlotKey {
                    slot: self.last_slot,
                    seq,
                })
            }
        }
    }

    /// The segment is live (its row was written).
    pub fn written(&mut self, key: SlotKey) {
        // Rising numbers make this a push; rows loaded in any order still end up sorted.
        let at = self.live.partition_point(|&seq| seq < key.seq);
        if self.live.get(at) != Some(&key.seq) {
            self.live.insert(at, key.seq);
        }
    }

    /// The row could not be written: it stays free (a new row is taken next time).
    pub fn not_written(&mut self, placement: Placement) {
        if let Placement::Reuse(key) = placement {
            self.free.push(key.slot);
        }
    }

    /// The segment is settled: its row is free to reuse.
    pub fn settled(&mut self, key: SlotKey) {
        if let Ok(at) = self.live.binary_search(&key.seq) {
            self.live.remove(at);
            self.free.push(key.slot);
        }
    }

    /// The watermark to write, if it moved by `WATERMARK_STEP` since the store last took one, or
    /// at all when `idle` (nothing held): every segment below it is settled.
    pub fn watermark_to_write(&mut self, idle: bool) -> Option<i64> {
        let mark = self.live.first().copied().unwrap_or(self.last_seq + 1);
        let due = if idle {
            mark > self.persisted
        } else {
            mark - self.persisted >= WATERMARK_STEP
        };
        due.then(|| {
            self.persisted = mark;
            mark
        })
    }

    /// Rows kept free for reuse.
    pub fn free_rows(&self) -> usize {
        self.free.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_reused_once_settled_and_the_watermark_follows_the_oldest_live() {
        let mut b = Slots::load([], 0);
        let a = b.place();
        let c = b.place();
        assert!(matches!(a, Placement::Insert(SlotKey { slot: 1, seq: 1 })));
        assert!(matches!(c, Placement::Insert(SlotKey { slot: 2, seq: 2 })));
        b.written(a.key());
        b.written(c.key());
        // Settled out of order: the row is free, but the watermark waits for the oldest.
        b.settled(c.key());
        assert_eq!(b.watermark_to_write(true), None);
        let d = b.place();
        assert_eq!(d, Placement::Reuse(SlotKey { slot: 2, seq: 3 }));
        b.written(d.key());
        b.settled(a.key());
        assert_eq!(
            b.watermark_to_write(false),
            None,
            "moved by 2, less than a step"
        );
        assert_eq!(b.watermark_to_write(true), Some(3), "idle: written");
        assert_eq!(b.watermark_to_write(true), None, "written once");
        b.settled(d.key());
        assert_eq!(b.watermark_to_write(true), Some(4));
        assert_eq!(b.free_rows(), 2);
    }

    #[test]
    fn a_busy_store_writes_the_watermark_once_per_step() {
        let mut b = Slots::load([], 0);
        let mut writes = 0;
        for _ in 0..100 {
            let p = b.place();
            b.written(p.key());
            b.settled(p.key());
            writes += usize::from(b.watermark_to_write(false).is_some());
        }
        assert_eq!(writes, 100 / WATERMARK_STEP as usize);
        assert_eq!(b.watermark_to_write(true), Some(101));
    }

    #[test]
    fn loading_keeps_what_is_not_settled_and_frees_the_rest() {
        let rows = [
            SlotKey { slot: 1, seq: 7 },
            SlotKey { slot: 2, seq: 3 },
            SlotKey { slot: 3, seq: 9 },
        ];
        let mut b = Slots::load(rows, 5);
        assert_eq!(b.settled_below(), 5);
        assert_eq!(b.free_rows(), 1);
        // Loaded out of order, the oldest live one still holds the watermark back.
        b.settled(SlotKey { slot: 3, seq: 9 });
        assert_eq!(b.watermark_to_write(true), Some(7));
        b.settled(SlotKey { slot: 1, seq: 7 });
        assert_eq!(b.watermark_to_write(true), Some(10));
        let mut b = Slots::load(rows, 5);
        // Numbers go on after the highest; the settled row is reused first.
        assert_eq!(b.place(), Placement::Reuse(SlotKey { slot: 2, seq: 10 }));
        assert_eq!(b.place(), Placement::Insert(SlotKey { slot: 4, seq: 11 }));
        // An empty store with a watermark: numbers start above it.
        let mut empty = Slots::load([], 40);
        assert_eq!(empty.free_rows(), 0);
        assert_eq!(empty.place().key().seq, 40);
    }

    #[test]
    fn a_failed_write_gives_the_row_back() {
        let mut b = Slots::load([], 0);
        let a = b.place();
        b.written(a.key());
        b.settled(a.key());
        let p = b.place();
        assert!(matches!(p, Placement::Reuse(_)));
        b.not_written(p);
        assert!(matches!(b.place(), Placement::Reuse(_)));
    }
}

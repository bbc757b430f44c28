//! A receiver's outbox: events keyed by a sequence number, in memory and in sled, made
//! durable before any delivery attempt and removed only once delivered (or rejected).
//! Bounded: past the limit the oldest is dropped and counted, so a dead receiver never grows
//! memory or disk without bound.
//!
//! Every receiver's records live in one tree (`outbox`, keyed by the receiver's prefix and
//! the seq), so the alert book can write an alert's state and its events in one sled
//! transaction: a new record is *staged* (invisible to delivery) until that transaction is
//! on disk, then *published*.

use crate::store::Database;
use std::collections::VecDeque;
use std::sync::Mutex;

/// The tree every outbox shares.
pub const TREE: &str = "outbox";

/// One queued event: its id (for receivers to drop duplicates) and the request body.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: String,
    pub body: Vec<u8>,
}

impl Record {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(2 + self.id.len() + self.body.len());
        out.extend_from_slice(&(self.id.len() as u16).to_be_bytes());
        out.extend_from_slice(self.id.as_bytes());
        out.extend_from_slice(&self.body);
        out
    }

    fn decode(b: &[u8]) -> Option<Self> {
        let n = u16::from_be_bytes(b.get(..2)?.try_into().ok()?) as usize;
        let id = std::str::from_utf8(b.get(2..2 + n)?).ok()?.to_string();
        Some(Self {
            id,
            body: b.get(2 + n..)?.to_vec(),
        })
    }
}

/// A write to the outbox tree.
pub use crate::store::TreeOp as Op;

/// A FIFO of records held in memory and mirrored to the outbox tree. Memory is the truth while
/// running, so a full or failing disk delays nothing; the tree is what a restart resumes from,
/// and is rewritten from memory (`resync`) once the database is writable again.
pub struct Outbox {
    db: Database,
    /// This receiver's key prefix in the tree.
    prefix: [u8; 8],
    max_events: usize,
    state: Mutex<State>,
}

struct State {
    queue: VecDeque<(u64, Record)>,
    /// Records whose write is not yet known to be durable: not delivered until published.
    staged: Vec<(u64, Record)>,
    next_seq: u64,
    /// A write to the tree failed: it no longer mirrors the queue.
    dirty: bool,
}

impl Outbox {
    /// Opens the outbox with `prefix`, continuing its sequence after a restart. Records of an
    /// earlier layout (a tree per receiver, named `legacy`) are moved in first.
    pub fn open(
        db: &Database,
        prefix: [u8; 8],
        legacy: &str,
        max_events: usize,
    ) -> sled::Result<Self> {
        let tree = db.tree(TREE)?;
        migrate(db, &tree, prefix, legacy)?;
        let max_events = max_events.max(1);
        let mut queue = VecDeque::new();
        let mut next_seq = 0;
        for item in tree.scan_prefix(prefix) {
            let (k, v) = item?;
            match (seq_of(&k), Record::decode(&v)) {
                (Some(seq), Some(r)) => {
                    next_seq = seq + 1;
                    queue.push_back((seq, r));
                }
                _ => tracing::error!("Dropping an undecodable outbox record"),
            }
        }
        // A smaller --outbox-max-events than before: the oldest go (the tree follows at resync).
        let dirty = queue.len() > max_events;
        while queue.len() > max_events {
            queue.pop_front();
        }
        Ok(Self {
            db: db.clone(),
            prefix,
            max_events,
            state: Mutex::new(State {
                queue,
                staged: Vec::new(),
                next_seq,
                dirty,
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key(&self, seq: u64) -> Vec<u8> {
        let mut k = self.prefix.to_vec();
        k.extend_from_slice(&seq.to_be_bytes());
        k
    }

    /// Stages a record: returns the tree writes that make it durable (and drop the oldest
    /// records past the bound) and how many were dropped. Delivery sees it once `publish`ed.
    pub fn stage(&self, record: &Record) -> (Vec<Op>, u64) {
        let mut st = self.state();
        let seq = st.next_seq;
        st.next_seq += 1;
        let mut ops = vec![(self.key(seq), Some(record.encode()))];
        st.staged.push((seq, record.clone()));
        let mut dropped = 0;
        while st.queue.len() + st.staged.len() > self.max_events {
            let old = match st.queue.pop_front() {
                Some((old, _)) => old,
                None => st.staged.remove(0).0,
            };
            ops.push((self.key(old), None));
            dropped += 1;
        }
        (ops, dropped)
    }

    /// Makes the staged records deliverable; `durable` says whether their writes reached the
    /// tree (if not, the tree is rewritten at the next `resync`).
    pub fn publish(&self, durable: bool) {
        let mut st = self.state();
        let staged = std::mem::take(&mut st.staged);
        st.queue.extend(staged);
        st.dirty |= !durable;
    }

    /// Stages, writes and publishes a record at once (tests; the alert book stages records in
    /// its own transaction).
    #[cfg(test)]
    pub fn push(&self, record: &Record) -> (u64, sled::Result<()>) {
        let (ops, dropped) = self.stage(record);
        let written = self
            .db
            .tree(TREE)
            .and_then(|t| crate::store::apply_ops(&t, ops));
        self.publish(written.is_ok());
        (dropped, written)
    }

    /// The oldest published record, if any.
    pub fn head(&self) -> Option<(u64, Record)> {
        self.state().queue.front().cloned()
    }

    /// Removes a delivered (or rejected) record; an error means only the tree missed it.
    pub fn remove(&self, seq: u64) -> sled::Result<()> {
        let mut st = self.state();
        st.queue.retain(|(s, _)| *s != seq);
        let persisted = self
            .db
            .tree(TREE)
            .and_then(|t| t.remove(self.key(seq)).map(|_| ()));
        st.dirty |= persisted.is_err();
        persisted
    }

    /// Removes a delivered record and waits until that is on disk, so a restart right after
    /// a delivery does not send it again (it would carry the same event id if it did).
    pub async fn remove_durably(&self, seq: u64) -> sled::Result<()> {
        self.remove(seq)?;
        self.db.flush_async().await
    }

    /// Records waiting (published or staged).
    pub fn len(&self) -> usize {
        let st = self.state();
        st.queue.len() + st.staged.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rewrites this receiver's records from memory if a write to them failed (blocking).
    pub fn resync(&self) -> sled::Result<()> {
        let mut st = self.state();
        if !st.dirty {
            return Ok(());
        }
        let tree = self.db.tree(TREE)?;
        let live: std::collections::HashSet<u64> = st.queue.iter().map(|(s, _)| *s).collect();
        let mut batch = sled::Batch::default();
        for item in tree.scan_prefix(self.prefix) {
            let (k, _) = item?;
            if seq_of(&k).is_none_or(|s| !live.contains(&s)) {
                batch.remove(k);
            }
        }
        for (seq, r) in &st.queue {
            batch.insert(self.key(*seq), r.encode());
        }
        tree.apply_batch(batch)?;
        st.dirty = false;
        Ok(())
    }
}

/// Moves the records of a receiver's tree of the earlier layout into the shared tree, in one
/// batch, then drops the old tree (a kill between the two moves them again, harmlessly).
fn migrate(db: &Database, tree: &sled::Tree, prefix: [u8; 8], legacy: &str) -> sled::Result<()> {
    let old = db.tree(legacy)?;
    if old.is_empty() {
        drop(old);
        db.drop_tree(legacy)?;
        return Ok(());
    }
    let mut batch = sled::Batch::default();
    for item in old.iter() {
        let (k, v) = item?;
        let mut key = prefix.to_vec();
        key.extend_from_slice(&k);
        batch.insert(key, v);
    }
    tree.apply_batch(batch)?;
    db.flush()?;
    drop(old);
    db.drop_tree(legacy)?;
    Ok(())
}

/// The seq of a key (prefix + 8 bytes).
fn seq_of(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.get(8..)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u32) -> Record {
        Record {
            id: format!("id-{i}"),
            body: format!("{{\"n\":{i}}}").into_bytes(),
        }
    }

    const P: [u8; 8] = *b"prefix01";

    #[test]
    fn fifo_survives_reopen_and_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), 1 << 20).unwrap();
        {
            let o = Outbox::open(&db, P, "outbox-x", 3).unwrap();
            assert_eq!(o.push(&rec(1)).0, 0);
            o.push(&rec(2)).1.unwrap();
            o.push(&rec(3)).1.unwrap();
            assert_eq!(o.push(&rec(4)).0, 1, "oldest dropped");
            let (seq, r) = o.head().unwrap();
            assert_eq!(r, rec(2));
            o.remove(seq).unwrap();
            db.flush().unwrap();
        }
        db.reopen().unwrap();
        let o = Outbox::open(&db, P, "outbox-x", 3).unwrap();
        assert_eq!(o.len(), 2);
        assert_eq!(o.head().unwrap().1, rec(3));
        o.push(&rec(5)).1.unwrap();
        let (seq, _) = o.head().unwrap();
        o.remove(seq).unwrap();
        o.remove(o.head().unwrap().0).unwrap();
        assert_eq!(o.head().unwrap().1, rec(5), "order kept across restarts");
    }

    #[test]
    fn staged_records_are_not_delivered_until_published() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), 1 << 20).unwrap();
        let o = Outbox::open(&db, P, "outbox-s", 10).unwrap();
        let (ops, dropped) = o.stage(&rec(1));
        assert_eq!((ops.len(), dropped), (1, 0));
        assert!(o.head().is_none(), "staged, not deliverable");
        assert_eq!(o.len(), 1);
        crate::store::apply_ops(&db.tree(TREE).unwrap(), ops).unwrap();
        o.publish(true);
        assert_eq!(o.head().unwrap().1, rec(1));
    }

    #[test]
    fn records_of_the_tree_per_receiver_layout_are_moved_in() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), 1 << 20).unwrap();
        let old = db.tree("outbox-old").unwrap();
        old.insert(7u64.to_be_bytes(), rec(7).encode()).unwrap();
        old.insert(8u64.to_be_bytes(), rec(8).encode()).unwrap();
        drop(old);
        let o = Outbox::open(&db, P, "outbox-old", 10).unwrap();
        assert_eq!(o.len(), 2);
        assert_eq!(o.head().unwrap(), (7, rec(7)));
        o.push(&rec(9)).1.unwrap();
        assert!(db.tree("outbox-old").unwrap().is_empty());
        db.reopen().unwrap();
        let again = Outbox::open(&db, P, "outbox-old", 10).unwrap();
        let seqs: Vec<u64> = again.state().queue.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, [7, 8, 9]);
    }

    #[test]
    fn a_failed_tree_is_rewritten_from_memory() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), 1 << 20).unwrap();
        let o = Outbox::open(&db, P, "outbox-y", 10).unwrap();
        o.push(&rec(1)).1.unwrap();
        o.push(&rec(2)).1.unwrap();
        // Simulate writes the tree missed: memory moves on, the tree does not.
        o.state().queue.pop_front();
        o.state().queue.push_back((7, rec(7)));
        o.state().dirty = true;
        o.resync().unwrap();
        db.reopen().unwrap();
        let again = Outbox::open(&db, P, "outbox-y", 10).unwrap();
        let seqs: Vec<u64> = again.state().queue.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, [1, 7]);
    }
}

//! A receiver's outbox: events keyed by a sequence number, in memory and in sled, written
//! before any delivery attempt and removed only once delivered (or rejected). Bounded: past
//! the limit the oldest is dropped and counted, so a dead receiver never grows memory or disk
//! without bound.

use crate::store::Database;
use std::collections::VecDeque;
use std::sync::Mutex;

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

/// A FIFO of records held in memory and mirrored to its sled tree. Memory is the truth while
/// running, so a full or failing disk delays nothing; the tree is what a restart resumes from,
/// and is rewritten from memory (`resync`) once the database is writable again.
pub struct Outbox {
    db: Database,
    tree: String,
    max_events: usize,
    state: Mutex<State>,
}

struct State {
    queue: VecDeque<(u64, Record)>,
    next_seq: u64,
    /// A write to the tree failed: it no longer mirrors the queue.
    dirty: bool,
}

impl Outbox {
    /// Opens the outbox tree `name`, continuing its sequence after a restart.
    pub fn open(db: &Database, name: &str, max_events: usize) -> sled::Result<Self> {
        let tree = db.tree(name)?;
        let max_events = max_events.max(1);
        let mut queue = VecDeque::new();
        let mut next_seq = 0;
        for item in tree.iter() {
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
            tree: name.to_string(),
            max_events,
            state: Mutex::new(State {
                queue,
                next_seq,
                dirty,
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a record; returns how many old records were dropped to stay in bounds, and
    /// whether the tree took the change (the record is queued either way).
    pub fn push(&self, record: &Record) -> (u64, sled::Result<()>) {
        let mut st = self.state();
        let seq = st.next_seq;
        st.next_seq += 1;
        st.queue.push_back((seq, record.clone()));
        let mut evicted = Vec::new();
        while st.queue.len() > self.max_events {
            if let Some((old, _)) = st.queue.pop_front() {
                evicted.push(old);
            }
        }
        let persisted = (|| {
            let tree = self.db.tree(&self.tree)?;
            tree.insert(seq.to_be_bytes(), record.encode())?;
            for old in &evicted {
                tree.remove(old.to_be_bytes())?;
            }
            Ok(())
        })();
        st.dirty |= persisted.is_err();
        (evicted.len() as u64, persisted)
    }

    /// The oldest record, if any.
    pub fn head(&self) -> Option<(u64, Record)> {
        self.state().queue.front().cloned()
    }

    /// Removes a delivered (or rejected) record; an error means only the tree missed it.
    pub fn remove(&self, seq: u64) -> sled::Result<()> {
        let mut st = self.state();
        st.queue.retain(|(s, _)| *s != seq);
        let persisted = self
            .db
            .tree(&self.tree)
            .and_then(|t| t.remove(seq.to_be_bytes()).map(|_| ()));
        st.dirty |= persisted.is_err();
        persisted
    }

    /// Removes a delivered record and waits until that is on disk, so a restart right after
    /// a delivery does not send it again (it would carry the same event id if it did).
    pub async fn remove_durably(&self, seq: u64) -> sled::Result<()> {
        self.remove(seq)?;
        self.db.flush_async().await
    }

    /// Records waiting.
    pub fn len(&self) -> usize {
        self.state().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.state().queue.is_empty()
    }

    /// Rewrites the tree from memory if a write to it failed (blocking).
    pub fn resync(&self) -> sled::Result<()> {
        let mut st = self.state();
        if !st.dirty {
            return Ok(());
        }
        let tree = self.db.tree(&self.tree)?;
        let live: std::collections::HashSet<u64> = st.queue.iter().map(|(s, _)| *s).collect();
        let mut batch = sled::Batch::default();
        for item in tree.iter() {
            let (k, _) = item?;
            if seq_of(&k).is_none_or(|s| !live.contains(&s)) {
                batch.remove(k);
            }
        }
        for (seq, r) in &st.queue {
            batch.insert(&seq.to_be_bytes(), r.encode());
        }
        tree.apply_batch(batch)?;
        st.dirty = false;
        Ok(())
    }
}

fn seq_of(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.try_into().ok()?))
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

    #[test]
    fn fifo_survives_reopen_and_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), 1 << 20).unwrap();
        {
            let o = Outbox::open(&db, "outbox-x", 3).unwrap();
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
        let o = Outbox::open(&db, "outbox-x", 3).unwrap();
        assert_eq!(o.len(), 2);
        assert_eq!(o.head().unwrap().1, rec(3));
        o.push(&rec(5)).1.unwrap();
        let (seq, _) = o.head().unwrap();
        o.remove(seq).unwrap();
        o.remove(o.head().unwrap().0).unwrap();
        assert_eq!(o.head().unwrap().1, rec(5), "order kept across restarts");
    }

    #[test]
    fn a_failed_tree_is_rewritten_from_memory() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(dir.path(), 1 << 20).unwrap();
        let o = Outbox::open(&db, "outbox-y", 10).unwrap();
        o.push(&rec(1)).1.unwrap();
        o.push(&rec(2)).1.unwrap();
        // Simulate writes the tree missed: memory moves on, the tree does not.
        o.state().queue.pop_front();
        o.state().queue.push_back((7, rec(7)));
        o.state().dirty = true;
        o.resync().unwrap();
        db.reopen().unwrap();
        let again = Outbox::open(&db, "outbox-y", 10).unwrap();
        let seqs: Vec<u64> = again.state().queue.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, [1, 7]);
    }
}

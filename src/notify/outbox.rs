//! A receiver's outbox: events in sled, keyed by a sequence number, written before any
//! delivery attempt and removed only once delivered (or rejected). Bounded: past the limit the
//! oldest is dropped and counted, so a dead receiver never grows memory or disk without bound.

use std::sync::atomic::{AtomicU64, Ordering};
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

/// A persistent FIFO of records.
pub struct Outbox {
    tree: sled::Tree,
    next_seq: AtomicU64,
    max_events: usize,
    /// Serialises push-with-eviction so the bound holds under concurrent pushes.
    push_lock: Mutex<()>,
}

impl Outbox {
    /// Opens the outbox tree `name` in `db`, continuing its sequence after a restart.
    pub fn open(db: &sled::Db, name: &str, max_events: usize) -> sled::Result<Self> {
        let tree = db.open_tree(name)?;
        let next = match tree.last()? {
            Some((k, _)) => seq_of(&k).map_or(0, |s| s + 1),
            None => 0,
        };
        Ok(Self {
            tree,
            next_seq: AtomicU64::new(next),
            max_events: max_events.max(1),
            push_lock: Mutex::new(()),
        })
    }

    /// Appends a record; returns how many old records were dropped to stay in bounds.
    pub fn push(&self, record: &Record) -> sled::Result<u64> {
        let _guard = self.push_lock.lock().unwrap_or_else(|p| p.into_inner());
        let seq = self.next_seq.fetch_add(1, Ordering::SeqCst);
        self.tree.insert(seq.to_be_bytes(), record.encode())?;
        let mut dropped = 0;
        while self.tree.len() > self.max_events {
            if self.tree.pop_min()?.is_none() {
                break;
            }
            dropped += 1;
        }
        Ok(dropped)
    }

    /// The oldest record, if any. Undecodable records are removed (and reported as such).
    pub fn head(&self) -> sled::Result<Option<(u64, Record)>> {
        while let Some((k, v)) = self.tree.first()? {
            match (seq_of(&k), Record::decode(&v)) {
                (Some(seq), Some(r)) => return Ok(Some((seq, r))),
                _ => {
                    tracing::error!("Dropping an undecodable outbox record");
                    self.tree.remove(k)?;
                }
            }
        }
        Ok(None)
    }

    /// Removes a delivered (or rejected) record.
    pub fn remove(&self, seq: u64) -> sled::Result<()> {
        self.tree.remove(seq.to_be_bytes())?;
        Ok(())
    }

    /// Removes a delivered record and waits until that is on disk, so a restart right after
    /// a delivery does not send it again (it would carry the same event id if it did).
    pub async fn remove_durably(&self, seq: u64) -> sled::Result<()> {
        self.remove(seq)?;
        self.tree.flush_async().await?;
        Ok(())
    }

    /// Records waiting.
    pub fn len(&self) -> usize {
        self.tree.len()
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
        {
            let db = sled::Config::new().path(dir.path()).open().unwrap();
            let o = Outbox::open(&db, "outbox-x", 3).unwrap();
            assert_eq!(o.push(&rec(1)).unwrap(), 0);
            o.push(&rec(2)).unwrap();
            o.push(&rec(3)).unwrap();
            assert_eq!(o.push(&rec(4)).unwrap(), 1, "oldest dropped");
            let (seq, r) = o.head().unwrap().unwrap();
            assert_eq!(r, rec(2));
            o.remove(seq).unwrap();
            db.flush().unwrap();
        }
        // sled's threads may hold the lock a moment after the first handle is dropped.
        let db = (0..100)
            .find_map(|_| {
                let db = sled::Config::new().path(dir.path()).open().ok();
                if db.is_none() {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                db
            })
            .expect("reopen");
        let o = Outbox::open(&db, "outbox-x", 3).unwrap();
        assert_eq!(o.len(), 2);
        assert_eq!(o.head().unwrap().unwrap().1, rec(3));
        o.push(&rec(5)).unwrap();
        let (seq, _) = o.head().unwrap().unwrap();
        o.remove(seq).unwrap();
        o.remove(o.head().unwrap().unwrap().0).unwrap();
        assert_eq!(
            o.head().unwrap().unwrap().1,
            rec(5),
            "order kept across restarts"
        );
    }
}

//! Writing each scrape's changes to the store and the alert book, and getting the store back
//! after a write failed (a full disk): detection goes on from memory meanwhile, and once the
//! database reopens, memory is written back whole.
//!
//! Order: the windows (journal, synced), then the alert states with their outbox records in
//! one transaction, then delivery. A kill between the first two loses the alert change with
//! the scrape's evaluation (the next scrape decides again); after the second, both survive.

use super::Pipeline;
use std::time::{Duration, Instant};

/// First wait before reopening a failed store; doubles up to `MAX_RETRY`.
const FIRST_RETRY: Duration = Duration::from_secs(5);
const MAX_RETRY: Duration = Duration::from_secs(80);

impl Pipeline {
    /// Writes the scrape's batch (flushed), or, while the store is failing, tries to recover it.
    pub(super) async fn persist(&mut self) {
        if let Some((at, _)) = self.store_retry {
            if Instant::now() >= at {
                self.recover();
            }
            // Until recovered the batch is not written: the resync rewrites everything.
            let _ = self.store.take_batch();
            let events = self.book.take_commit().has_events();
            self.book.committed(false, events);
            self.book.tick(crate::util::now_ms());
            return;
        }
        let (writer, batch) = self.store.take_batch();
        let result = tokio::task::spawn_blocking(move || writer.write(batch)).await;
        let result = match result {
            Ok(Ok(())) if self.store.compaction_due() => {
                // Streams every window to the snapshot file from here (no copy of them), a
                // few hundred ms at 100k series once per ~15 scrapes.
                let store = &mut self.store;
                Ok(tokio::task::block_in_place(|| store.compact()))
            }
            other => other,
        };
        let err = match result {
            Ok(Ok(())) => self.commit_alerts().await.err(),
            Ok(Err(e)) => {
                let events = self.book.take_commit().has_events();
                self.book.committed(false, events);
                Some(e.to_string())
            }
            Err(e) => Some(e.to_string()),
        };
        self.book.tick(crate::util::now_ms());
        let Some(err) = err else {
            return;
        };
        self.failed("write", FIRST_RETRY);
        tracing::error!(error = %err, retry_in = ?FIRST_RETRY, "Cannot write to the history store; detection goes on from memory");
    }

    /// The alert states and outbox records of this scrape, in one transaction; their events
    /// are delivered once it is on disk (or from memory, if it failed).
    async fn commit_alerts(&mut self) -> Result<(), String> {
        let commit = self.book.take_commit();
        if commit.is_empty() {
            return Ok(());
        }
        let events = commit.has_events();
        if events {
            crate::failpoint::hit("before_alert_commit");
        }
        let result = tokio::task::spawn_blocking(move || commit.write()).await;
        let result = match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if events && result.is_ok() {
            crate::failpoint::hit("after_alert_commit");
        }
        self.book.committed(result.is_ok(), events);
        result
    }

    /// Reopens the database and writes memory back (the windows, alerts and outboxes).
    fn recover(&mut self) {
        let (store, book) = (&mut self.store, &mut self.book);
        // Blocking, and rare (only after a failed write): reopening waits for sled's file lock
        // and the resync rewrites every window.
        let result = tokio::task::block_in_place(|| {
            store.db().reopen()?;
            store.resync()?;
            book.resync()?;
            Ok::<_, crate::store::StoreError>(())
        });
        match result {
            Ok(()) => {
                self.store_retry = None;
                self.exporter.metrics.store_last_write_successful.set(1);
                tracing::info!(
                    series = self.store.len(),
                    "History store writable again; memory written back"
                );
            }
            Err(e) => {
                let backoff = self
                    .store_retry
                    .map_or(FIRST_RETRY, |(_, b)| (b * 2).min(MAX_RETRY));
                self.failed("reopen", backoff);
                tracing::warn!(error = %e, retry_in = ?backoff, "History store still failing");
            }
        }
    }

    fn failed(&mut self, operation: &str, backoff: Duration) {
        self.exporter
            .metrics
            .store_errors_total
            .with_label_values(&[operation])
            .inc();
        self.exporter.metrics.store_last_write_successful.set(0);
        self.store_retry = Some((Instant::now() + backoff, backoff));
    }
}

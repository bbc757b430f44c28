//! Writing the changes of the scrapes evaluated since the last write (one, or those that
//! arrived together) to the store and the alert book, and getting the store back
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
        // The alert states and their outbox records, in one transaction after the journal
        // sync, made durable by the same flush; their events are delivered only then.
        let commit = self.book.take_commit();
        let events = commit.has_events();
        let result = tokio::task::spawn_blocking(move || {
            writer.write_then(batch, || {
                if events {
                    crate::failpoint::hit("before_alert_commit");
                }
                commit.apply()
            })
        })
        .await;
        let written = matches!(result, Ok(Ok(())));
        if written && events {
            crate::failpoint::hit("after_alert_commit");
        }
        // Deliverable now (from memory only, if the write failed; rewritten at recovery).
        self.book.committed(written, events);
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
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        self.book.tick(crate::util::now_ms());
        let Some(err) = err else {
            return;
        };
        self.failed("write", FIRST_RETRY);
        tracing::error!(error = %err, retry_in = ?FIRST_RETRY, "Cannot write to the history store; detection goes on from memory");
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

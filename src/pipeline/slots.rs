//! The pipeline's state per stored series, in a list indexed by the store's slots: when was
//! the series last scraped, and each selecting rule's window and alert on it. A scrape walks
//! its series in the order they were admitted, so it walks this list in order too.

use super::rule_series::RuleSeries;
use crate::store::{SeriesId, Slot};

/// One stored series.
#[derive(Default)]
pub(super) struct SlotState {
    /// The series the state belongs to: a slot freed by the store is reused for another.
    pub(super) id: SeriesId,
    /// Number of the last scrape that had the series (0: none yet).
    pub(super) seen_in: u64,
    /// Rule index → the rule's state on the series.
    pub(super) rules: RuleStates,
}

/// The rules' states on one series: most series have one rule, held inline (a list on the
/// heap cost a pointer chase, a cache miss, per sample), any more in a list.
#[derive(Default)]
pub(super) struct RuleStates {
    first: Option<(usize, RuleSeries)>,
    more: Vec<(usize, RuleSeries)>,
}

impl RuleStates {
    pub(super) fn get_mut(&mut self, ri: usize) -> Option<&mut RuleSeries> {
        match &mut self.first {
            Some((r, s)) if *r == ri => Some(s),
            _ => self.more.iter_mut().find(|(r, _)| *r == ri).map(|(_, s)| s),
        }
    }

    /// Adds the state of rule `ri` (which has none yet); returns it.
    pub(super) fn insert(&mut self, ri: usize, state: RuleSeries) -> &mut RuleSeries {
        if self.first.is_none() {
            return &mut self.first.insert((ri, state)).1;
        }
        self.more.push((ri, state));
        let last = self.more.len() - 1;
        &mut self.more[last].1
    }

    pub(super) fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut RuleSeries)> + '_ {
        self.first
            .iter_mut()
            .chain(&mut self.more)
            .map(|(r, s)| (*r, s))
    }

    /// Takes every state out.
    pub(super) fn take(&mut self) -> Vec<(usize, RuleSeries)> {
        let mut all: Vec<_> = self.first.take().into_iter().collect();
        all.append(&mut self.more);
        all
    }
}

#[derive(Default)]
pub(super) struct SlotStates {
    list: Vec<SlotState>,
}

impl SlotStates {
    /// The state of series `id` in `slot`, new if the slot held none or another series.
    #[inline]
    pub(super) fn at(&mut self, slot: Slot, id: SeriesId) -> &mut SlotState {
        let i = slot.index();
        if i >= self.list.len() {
            self.list.resize_with(i + 1, SlotState::default);
        }
        let state = &mut self.list[i];
        if state.id != id {
            *state = SlotState {
                id,
                ..SlotState::default()
            };
        }
        state
    }

    /// The state of series `id` in `slot`, if there is one.
    pub(super) fn get_mut(&mut self, slot: Slot, id: SeriesId) -> Option<&mut SlotState> {
        self.list.get_mut(slot.index()).filter(|s| s.id == id)
    }

    /// Starts fetching the state in `slot` (a hint).
    pub(super) fn prefetch(&self, slot: Slot) {
        if let Some(s) = self.list.get(slot.index()) {
            crate::prefetch::prefetch(s);
        }
    }

    /// Whether series `id` in `slot` was in scrape number `scrape`.
    pub(super) fn seen_in(&self, slot: Slot, id: SeriesId, scrape: u64) -> bool {
        self.list
            .get(slot.index())
            .is_some_and(|s| s.id == id && s.seen_in == scrape)
    }

    /// Forgets the state in `slot` (its series left the store).
    pub(super) fn clear(&mut self, slot: Slot) {
        if let Some(s) = self.list.get_mut(slot.index()) {
            *s = SlotState::default();
        }
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut SlotState> + '_ {
        self.list.iter_mut().filter(|s| !s.rules.is_empty())
    }
}

//! The alert state machine of one (rule, series): inactive → pending (condition true, `for`
//! not yet elapsed) → firing → resolved (back to inactive) when the condition clears, or,
//! with `keep_firing_for`, once it has stayed clear that long (as in Prometheus).
//! One alert per rule and series at a time: a firing alert never fires again until resolved.
//!
//! The condition is the detector's verdict, or with `min_anomalous: {count: k, of: n}`, at
//! least k anomalous verdicts among the last n (so one noisy sample neither fires nor
//! resolves an alert).

/// Where an alert stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AlertState {
    #[default]
    Inactive,
    Pending {
        since_ms: i64,
    },
    Firing {
        since_ms: i64,
    },
    /// Firing, but the condition cleared at `cleared_ms`; kept for `keep_firing_for`.
    Kept {
        since_ms: i64,
        cleared_ms: i64,
    },
}

/// How a rule turns verdicts into an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// `for`: how long the condition holds before the alert fires.
    pub for_ms: i64,
    /// `keep_firing_for`: how long a firing alert stays firing after the condition cleared.
    pub keep_firing_for_ms: i64,
    /// `min_anomalous`: the condition is at least `count` anomalous of the last `of`
    /// verdicts (1 of 1: the verdict itself). `of` ≤ 64.
    pub count: u32,
    pub of: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            for_ms: 0,
            keep_firing_for_ms: 0,
            count: 1,
            of: 1,
        }
    }
}

impl Policy {
    /// The condition after one more verdict; `recent` holds the last verdicts as bits
    /// (newest lowest) and is updated.
    pub fn condition(&self, recent: &mut u64, anomalous: bool) -> bool {
        let mask = if self.of >= 64 {
            u64::MAX
        } else {
            (1u64 << self.of) - 1
        };
        *recent = ((*recent << 1) | u64::from(anomalous)) & mask;
        recent.count_ones() >= self.count
    }
}

/// A change of state worth counting (and, for firing and resolved, announcing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Condition true, waiting for `for`.
    Pending,
    /// Condition cleared before `for` elapsed.
    Cancelled,
    Firing,
    Resolved,
}

impl Transition {
    /// The `to` label of `anomaly_sidecar_transitions_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Pending => "pending",
            Transition::Cancelled => "inactive",
            Transition::Firing => "firing",
            Transition::Resolved => "resolved",
        }
    }
}

impl AlertState {
    /// Advances on one evaluation at `now_ms` where the rule's condition is `anomalous`.
    pub fn step(&mut self, anomalous: bool, now_ms: i64, policy: &Policy) -> Option<Transition> {
        let (for_ms, keep_ms) = (policy.for_ms, policy.keep_firing_for_ms);
        let (next, t) = match (*self, anomalous) {
            (AlertState::Inactive, true) if for_ms <= 0 => (
                AlertState::Firing { since_ms: now_ms },
                Some(Transition::Firing),
            ),
            (AlertState::Inactive, true) => (
                AlertState::Pending { since_ms: now_ms },
                Some(Transition::Pending),
            ),
            (AlertState::Pending { since_ms }, true) if now_ms - since_ms >= for_ms => (
                AlertState::Firing { since_ms: now_ms },
                Some(Transition::Firing),
            ),
            (AlertState::Pending { .. }, false) => {
                (AlertState::Inactive, Some(Transition::Cancelled))
            }
            (AlertState::Firing { since_ms }, false) if keep_ms > 0 => (
                AlertState::Kept {
                    since_ms,
                    cleared_ms: now_ms,
                },
                None,
            ),
            (AlertState::Kept { since_ms, .. }, true) => (AlertState::Firing { since_ms }, None),
            (AlertState::Kept { cleared_ms, .. }, false) if now_ms - cleared_ms < keep_ms => {
                (*self, None)
            }
            (AlertState::Firing { .. } | AlertState::Kept { .. }, false) => {
                (AlertState::Inactive, Some(Transition::Resolved))
            }
            (state, _) => (state, None),
        };
        *self = next;
        t
    }

    /// Ends the alert because its series or rule went away.
    pub fn end(&mut self) -> Option<Transition> {
        let t = match *self {
            AlertState::Firing { .. } | AlertState::Kept { .. } => Some(Transition::Resolved),
            AlertState::Pending { .. } => Some(Transition::Cancelled),
            AlertState::Inactive => None,
        };
        *self = AlertState::Inactive;
        t
    }

    pub fn is_firing(&self) -> bool {
        self.firing_since().is_some()
    }

    /// When the firing alert started; None unless firing.
    pub fn firing_since(&self) -> Option<i64> {
        match *self {
            AlertState::Firing { since_ms } | AlertState::Kept { since_ms, .. } => Some(since_ms),
            _ => None,
        }
    }

    pub fn is_pending(&self) -> bool {
        matches!(self, AlertState::Pending { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(for_ms: i64, keep_firing_for_ms: i64) -> Policy {
        Policy {
            for_ms,
            keep_firing_for_ms,
            ..Policy::default()
        }
    }

    #[test]
    fn fires_at_once_without_for() {
        let (mut s, p) = (AlertState::default(), policy(0, 0));
        assert_eq!(s.step(true, 0, &p), Some(Transition::Firing));
        assert_eq!(s.step(true, 1, &p), None, "no duplicate firing");
        assert_eq!(s.step(false, 2, &p), Some(Transition::Resolved));
        assert_eq!(s.step(false, 3, &p), None);
    }

    #[test]
    fn waits_for_for() {
        let (mut s, p) = (AlertState::default(), policy(1000, 0));
        assert_eq!(s.step(true, 0, &p), Some(Transition::Pending));
        assert_eq!(s.step(true, 500, &p), None);
        assert!(s.is_pending());
        assert_eq!(s.step(true, 1000, &p), Some(Transition::Firing));
        assert_eq!(s.step(false, 1500, &p), Some(Transition::Resolved));
        assert_eq!(s.step(true, 2000, &p), Some(Transition::Pending));
        assert_eq!(s.step(false, 2500, &p), Some(Transition::Cancelled));
    }

    #[test]
    fn keep_firing_for_holds_a_cleared_alert_then_resolves() {
        let (mut s, p) = (AlertState::default(), policy(0, 1000));
        assert_eq!(s.step(true, 0, &p), Some(Transition::Firing));
        assert_eq!(s.step(false, 100, &p), None);
        assert!(s.is_firing());
        // Back before keep_firing_for ran out: the same alert, no new firing.
        assert_eq!(s.step(true, 600, &p), None);
        assert_eq!(s.firing_since(), Some(0));
        assert_eq!(s.step(false, 700, &p), None);
        assert_eq!(s.step(false, 1600, &p), None, "clear for 900 ms only");
        assert_eq!(s.step(false, 1700, &p), Some(Transition::Resolved));
        assert!(!s.is_firing());
    }

    #[test]
    fn min_anomalous_counts_the_last_n_verdicts() {
        let p = Policy {
            count: 3,
            of: 5,
            ..Policy::default()
        };
        let mut recent = 0;
        let verdicts = [
            true, false, true, false, true, false, false, true, false, false,
        ];
        let conditions: Vec<bool> = verdicts
            .iter()
            .map(|&a| p.condition(&mut recent, a))
            .collect();
        assert_eq!(
            conditions,
            [false, false, false, false, true, false, false, false, false, false]
        );
        let all = Policy {
            count: 64,
            of: 64,
            ..Policy::default()
        };
        let mut recent = 0;
        assert!(!(0..63).any(|_| all.condition(&mut recent, true)));
        assert!(all.condition(&mut recent, true));
    }

    #[test]
    fn end_resolves_firing() {
        let mut s = AlertState::Firing { since_ms: 0 };
        assert_eq!(s.end(), Some(Transition::Resolved));
        assert_eq!(s.end(), None);
    }
}

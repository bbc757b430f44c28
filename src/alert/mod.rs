//! Alerts: the state machine of one (rule, series) (`state`), the label set every output
//! shares (`labels`), the events announced (`event`), and the one owner of every active
//! alert's life after evaluation (`book`): its persistence, its notifications, its re-sends.

pub mod book;
pub mod event;
pub mod labels;
pub mod state;

pub use event::AlertEvent;
pub use state::{AlertState, Policy, Transition};

//! The Events a decision records on the Rollout.

/// An event to record on the Rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// `Warning` rather than `Normal`.
    pub warning: bool,
    /// CamelCase reason, e.g. `RolloutAborted`.
    pub reason: &'static str,
    pub message: String,
}

//! Sluice's API, `sluice.dev/v1alpha1`: the custom resources users write, their defaults and validation
//! rules, and the generation of their CustomResourceDefinitions.
//!
//! Every doc comment on a spec field becomes the field's description in the CRD, and so what
//! `kubectl explain` shows.

// `#[kube(printcolumn(...))]` repeats `type_ = "..."` across columns, which this lint misreads.
#![allow(clippy::duplicated_attributes)]

pub mod analysis;
pub mod common;
pub mod crdgen;
pub mod gate;
pub mod names;
pub mod notification;
pub mod policy;
pub mod release;
pub mod rollout;

pub use analysis::{AnalysisRun, AnalysisTemplate, ClusterAnalysisTemplate};
pub use gate::ErrorBudgetGate;
pub use release::Release;
pub use rollout::Rollout;

/// The API group of all Sluice resources.
pub const GROUP: &str = "sluice.dev";

//! Sluice's release engine: pure decisions, no I/O.
//!
//! The controller takes a snapshot (the Rollout, the ReplicaSets it owns, analysis verdicts, people's
//! requests) and the time, asks the engine for a [`release::Plan`] through [`release::decide`], and applies it. Because nothing
//! here reads a clock or a client, property tests drive thousands of random histories through the
//! same code that runs in the cluster.

pub mod analysis;
pub mod bluegreen;
pub mod canary;
pub mod conditions;
pub mod duration;
pub mod gate;
pub mod hash;
pub mod judge;
pub mod release;
pub mod replicas;
pub mod restart;

//! A real local Kubernetes control plane for Sluice's end-to-end tests and demo.
//!
//! The binaries (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd, kwok) are
//! built from their Go modules at pinned versions and cached per version outside the checkout; the
//! cluster runs on loopback with kwok's fake nodes, beside a real Prometheus. This is developer
//! tooling, so errors are `anyhow` errors with context for the person at the terminal.

pub mod binaries;
pub mod browser;
pub mod cache;
pub mod cluster;
pub mod docs;
pub mod http;
pub mod netpol;
pub mod node;
pub mod pki;
pub mod prometheus;

pub use binaries::{ArgoRollouts, Binaries, cache_dir, ensure_argo_rollouts, ensure_binaries};
pub use cluster::{Cluster, Options, down, status, up, up_with};

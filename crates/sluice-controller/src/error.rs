//! Reconcile errors, written for the person who has to act on them.

/// Why a reconcile could not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request; retried with backoff.
    #[error("Kubernetes API request failed: {0}")]
    Kube(#[from] kube::Error),
    /// The object could not be (de)serialized; a bug, or a field this version does not know.
    #[error("could not encode or decode an object: {0}")]
    Serialization(#[from] serde_json::Error),
    /// The Rollout has no namespace (it is namespaced; this cannot happen with a real API server).
    #[error("Rollout {0} has no namespace")]
    NoNamespace(String),
    /// The plan asked for something its observation did not include: a bug in Sluice; retried.
    #[error("the plan needs {0}, which was not observed before the decision (a bug); retrying")]
    Unobserved(String),
    /// The reconcile took longer than this (an API request that does not answer); retried.
    #[error("reconcile did not finish within {0:?}; retrying")]
    Timeout(std::time::Duration),
}

impl Error {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Serialization(_) => "serialization",
            Self::NoNamespace(_) => "no_namespace",
            Self::Timeout(_) => "timeout",
            Self::Unobserved(_) => "unobserved",
        }
    }
}

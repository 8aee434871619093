//! Reconcile errors, written for the person who has to act on them.

/// Why a reconcile could not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed a request; retried with backoff.
    #[error("Kubernetes API request failed: {}", api_words(.0))]
    Kube(#[from] kube::Error),
    /// The API server refused or failed a write of `object`; retried with backoff.
    #[error("writing {object}: {}", api_words(.source))]
    Write {
        /// The object being written, e.g. `ReplicaSet web-6d4b9c7f5`.
        object: String,
        source: kube::Error,
    },
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
    /// The reconcile panicked (a bug in Sluice); the process carries on and the reconcile is retried.
    #[error("reconcile panicked (a bug in Sluice): {0}")]
    Panic(String),
    /// The child process conditions are evaluated in could not run; retried with backoff.
    #[error("{0}; retrying")]
    Evaluator(String),
}

impl Error {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Write { .. } => "write",
            Self::Serialization(_) => "serialization",
            Self::NoNamespace(_) => "no_namespace",
            Self::Timeout(_) => "timeout",
            Self::Unobserved(_) => "unobserved",
            Self::Panic(_) => "panic",
            Self::Evaluator(_) => "evaluator",
        }
    }

    /// A write refused because the object changed since the view it was decided on (409): not a
    /// failure, a reason to look again.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            Self::Write { source: kube::Error::Api(status), .. } | Self::Kube(kube::Error::Api(status))
                if status.code == 409
        )
    }

    /// The reason of the condition and Event that report it.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Kube(_) => "ApiRequestFailed",
            Self::Write { .. } => "WriteRefused",
            Self::Serialization(_) => "EncodingFailed",
            Self::NoNamespace(_) => "NoNamespace",
            Self::Timeout(_) => "ReconcileTimeout",
            Self::Evaluator(_) => "EvaluatorUnavailable",
            Self::Unobserved(_) | Self::Panic(_) => "InternalError",
        }
    }
}

/// The API server's own words for a failed request: its message, status code and reason.
fn api_words(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => {
            format!("{} ({} {})", status.message, status.code, status.reason)
        }
        other => other.to_string(),
    }
}

/// Names the object a request was writing, for the error that reports its failure.
pub trait Writing<T> {
    fn writing(self, object: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T> Writing<T> for Result<T, kube::Error> {
    fn writing(self, object: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|source| Error::Write {
            object: object(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_write_names_the_object_in_the_api_servers_words() {
        let refused: Result<(), kube::Error> = Err(kube::Error::Api(
            kube::core::Status::failure(
                "ReplicaSet.apps \"web-1\" is invalid: spec.template.spec.containers[0].image: Required value",
                "Invalid",
            )
            .with_code(422)
            .boxed(),
        ));
        let error = refused
            .writing(|| "ReplicaSet web-1".to_owned())
            .expect_err("refused");
        assert_eq!(
            error.to_string(),
            "writing ReplicaSet web-1: ReplicaSet.apps \"web-1\" is invalid: \
             spec.template.spec.containers[0].image: Required value (422 Invalid)"
        );
        assert_eq!(error.reason(), "WriteRefused");
    }
}

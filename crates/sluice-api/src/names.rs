//! The labels and annotations Sluice puts on objects and reads from them, and the requests a person
//! can make of a Rollout: shared by the controller and the `kubectl sluice` plugin.

use std::fmt;
use std::str::FromStr;

/// On a Rollout: the name of the Argo Rollout (`argoproj.io`) in its namespace it takes over with
/// its pods (`kubectl sluice migrate --takeover` sets it). See `status.takeover`.
pub const TAKEOVER_ANNOTATION: &str = "sluice.dev/takeover-from";

/// Label on the ReplicaSets and AnalysisRuns a Rollout owns, naming it.
pub const ROLLOUT_LABEL: &str = "sluice.dev/rollout";
/// Label on an AnalysisRun: what it measures (`step`, `background`, `pre-promotion`,
/// `post-promotion`).
pub const ANALYSIS_KIND_LABEL: &str = "sluice.dev/analysis";
/// Label on a step's AnalysisRun: the step's index.
pub const STEP_LABEL: &str = "sluice.dev/step";
/// Annotation on an AnalysisRun: the stable version's pod-template hash, the baseline judge's
/// baseline.
pub const STABLE_HASH_ANNOTATION: &str = "sluice.dev/stable-pod-template-hash";
/// Annotation on an old ReplicaSet: when it is due to be scaled to zero (RFC 3339).
pub const SCALE_DOWN_AT_ANNOTATION: &str = "sluice.dev/scale-down-at";
/// Annotation on a Rollout carrying a person's request (a [`RolloutAction`]); the controller acts on
/// it and removes it. Kept out of the spec so that GitOps tools never revert it.
pub const ACTION_ANNOTATION: &str = "sluice.dev/action";
/// Who made the request in [`ACTION_ANNOTATION`] (the plugin writes the requester's identity, as
/// the API server knows it); recorded with what the request did in the release record.
pub const REQUESTED_BY_ANNOTATION: &str = "sluice.dev/requested-by";
/// Pins the step plan of a Rollout's next releases (`strategy.canary.adaptive`): `cautious`,
/// `standard` or `fast` (`kubectl sluice plan pin`).
pub const PLAN_ANNOTATION: &str = "sluice.dev/plan";
/// Why the request in [`ACTION_ANNOTATION`] was made (a breaker reset must say why); recorded with
/// it.
pub const REQUEST_REASON_ANNOTATION: &str = "sluice.dev/request-reason";
/// Annotation on a ReplicaSet holding the Rollout's pod template exactly as written (the ReplicaSet's
/// own copy gets the API server's defaults), so that `undo` restores a template with the same hash.
pub const TEMPLATE_ANNOTATION: &str = "sluice.dev/template";
/// Annotation on an HTTPRoute while a release shifts its weights.
pub const ROUTE_IN_FLIGHT_ANNOTATION: &str = "sluice.dev/release-in-flight";

/// Label on a Namespace: `"true"` requires every image its Rollouts release to carry a digest
/// (`name@sha256:...`), as `spec.requireImageDigest` does for one Rollout.
pub const REQUIRE_IMAGE_DIGEST_LABEL: &str = "sluice.dev/require-image-digest";

/// Label a Secret must carry (`"true"`) before Sluice reads it for analysis (arguments, provider
/// credentials, CA bundles): the controller's right to read Secrets never extends a tenant's.
pub const ANALYSIS_SECRET_LABEL: &str = "sluice.dev/analysis-secret";
/// Annotation on a Secret open to analysis: where its values may be sent, as the address policy's
/// rules (hosts, host patterns such as `*.svc`, address ranges), comma-separated; set by whoever may
/// edit the Secret. A value is sent only to a destination it allows (a provider's credentials to
/// the provider's host, an argument to the host of each metric that uses it, a notification sink's
/// token to the sink's host, its URL only if the URL's host is allowed); without it, nowhere.
pub const SECRET_DESTINATIONS_ANNOTATION: &str = "sluice.dev/destinations";
/// Label an AnalysisRun no Rollout owns must carry (`"true"`) to be run on its own.
pub const STANDALONE_LABEL: &str = "sluice.dev/standalone";

/// Label on a job metric's Job: the AnalysisRun it measures for.
pub const ANALYSIS_RUN_LABEL: &str = "sluice.dev/analysis-run";

/// A person's request of a Rollout, as the [`ACTION_ANNOTATION`] carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RolloutAction {
    /// Complete the current step (a pause, an analysis) and go on.
    Promote,
    /// Skip all remaining steps and analysis.
    PromoteFull,
    /// Send all traffic back to stable.
    Abort,
    /// Start an aborted release again from its first step.
    Retry,
    /// Pause where the release stands.
    Pause,
    /// Undo `pause`.
    Resume,
    /// Replace every pod, a few at a time.
    Restart,
    /// Close the circuit breaker (`kubectl sluice breaker reset`), with the reason in
    /// [`REQUEST_REASON_ANNOTATION`].
    ResetBreaker,
}

impl RolloutAction {
    /// Every request, in the order `kubectl sluice` lists them.
    pub const ALL: [Self; 8] = [
        Self::Promote,
        Self::PromoteFull,
        Self::Abort,
        Self::Retry,
        Self::Pause,
        Self::Resume,
        Self::Restart,
        Self::ResetBreaker,
    ];

    /// The annotation's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Promote => "promote",
            Self::PromoteFull => "promote-full",
            Self::Abort => "abort",
            Self::Retry => "retry",
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Restart => "restart",
            Self::ResetBreaker => "reset-breaker",
        }
    }
}

impl fmt::Display for RolloutAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RolloutAction {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let value = value.trim();
        Self::ALL
            .into_iter()
            .find(|a| a.as_str() == value)
            .ok_or_else(|| format!("unknown request {value:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_request_reads_back_as_itself() {
        for action in RolloutAction::ALL {
            assert_eq!(action.as_str().parse::<RolloutAction>(), Ok(action));
        }
        assert_eq!(
            " abort\n".parse::<RolloutAction>(),
            Ok(RolloutAction::Abort)
        );
        assert!("promote please".parse::<RolloutAction>().is_err());
    }
}

//! Notifications: where a namespace's releases are announced. Sinks are configured in the
//! ConfigMap `sluice-notifications` of the Rollouts' namespace, one key per sink (the key is the
//! sink's name, the value its settings in YAML); URLs and tokens may come from Secrets there
//! (labelled `sluice.dev/analysis-secret: "true"`, as for analysis). A sink with `on` hears those
//! transitions of every Rollout in the namespace; a Rollout's `spec.notifications` subscribes it to
//! more.
//!
//! ```yaml
//! apiVersion: v1
//! kind: ConfigMap
//! metadata: {name: sluice-notifications}
//! data:
//!   team-chat: |
//!     format: slack
//!     urlFrom: {secretKeyRef: {name: chat-webhook, key: url}}
//!     on: [aborted, paused, held, completed]
//! ```

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::common::SecretKeyRef;

/// The ConfigMap, in a Rollout's namespace, that holds its namespace's sinks.
pub const CONFIG_MAP: &str = "sluice-notifications";
/// The annotation on a Release record holding, per sink, how many of its timeline's transitions
/// were handled (sent, or not wanted), so that a restart never sends one again.
pub const NOTIFIED_ANNOTATION: &str = "sluice.dev/notified";

/// A release transition a notification is sent for.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// A release started.
    Started,
    /// A canary step completed.
    Step,
    /// The release waits for a person (a pause, an inconclusive analysis, a confidence review, a
    /// blue-green promotion, a webhook's confirmation).
    Paused,
    /// A person or the schedule promoted it.
    Promoted,
    /// It was aborted; the message says why.
    Aborted,
    /// An error-budget gate or the circuit breaker holds it.
    Held,
    /// It completed: the new version is stable.
    Completed,
}

impl Trigger {
    /// Every trigger, in the order a release meets them.
    pub const ALL: [Trigger; 7] = [
        Self::Started,
        Self::Step,
        Self::Paused,
        Self::Promoted,
        Self::Aborted,
        Self::Held,
        Self::Completed,
    ];

    /// As written in `on`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::Step => "step",
            Self::Paused => "paused",
            Self::Promoted => "promoted",
            Self::Aborted => "aborted",
            Self::Held => "held",
            Self::Completed => "completed",
        }
    }

    /// The trigger of a release record's timeline entry (its Event's reason and message), if it
    /// is one.
    pub fn of(reason: &str, message: &str) -> Option<Self> {
        Some(match reason {
            "ReleaseStarted" => Self::Started,
            "RolloutStepCompleted" => Self::Step,
            "RolloutPaused"
            | "WaitingForPromotion"
            | "AnalysisInconclusive"
            | "WaitingForConfirmation" => Self::Paused,
            // A pause step without a duration; one with a duration ends by itself.
            "PausedAtStep" if message.contains("waiting for a person") => Self::Paused,
            // Scored between the thresholds: a person decides.
            "ConfidenceScored" if message.contains("waiting for a person") => Self::Paused,
            "RolloutPromoted" | "RolloutPromotedFull" => Self::Promoted,
            "RolloutAborted" => Self::Aborted,
            "ReleaseHeld" | "PromotionHeld" | "CircuitOpened" => Self::Held,
            "RolloutCompleted" => Self::Completed,
            _ => return None,
        })
    }
}

/// How a sink wants its notifications written.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// A Slack incoming webhook: `{"text": ...}`.
    Slack,
    /// A Microsoft Teams workflow webhook: a message with an Adaptive Card.
    Teams,
    /// Sluice's own JSON document (see the README).
    Json,
    /// A CloudEvent (1.0, structured mode) whose `data` is Sluice's JSON document.
    Cloudevents,
}

/// A value read from a key of a Secret in the sink's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FromSecret {
    /// The Secret and key (the Secret labelled `sluice.dev/analysis-secret: "true"`).
    pub secret_key_ref: SecretKeyRef,
}

/// One sink, as written in the ConfigMap (unknown fields are refused, with an Event).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Sink {
    /// How notifications are written.
    pub format: Format,
    /// Where they are POSTed (or `urlFrom`): an http or https URL the controller's address policy
    /// allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The URL, from a Secret (chat webhooks carry their token in the URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_from: Option<FromSecret>,
    /// A bearer token sent as `Authorization: Bearer ...`, from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_from: Option<FromSecret>,
    /// The transitions every Rollout of the namespace sends here; none: only the Rollouts that
    /// subscribe (`spec.notifications`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on: Vec<Trigger>,
}

impl Sink {
    /// Reads one sink's settings, saying what is wrong in the words of the ConfigMap.
    pub fn parse(name: &str, text: &str) -> Result<Self, String> {
        let sink: Self =
            serde_yaml::from_str(text).map_err(|e| format!("{CONFIG_MAP} key {name}: {e}"))?;
        match (&sink.url, &sink.url_from) {
            (Some(_), None) | (None, Some(_)) => Ok(sink),
            _ => Err(format!(
                "{CONFIG_MAP} key {name}: set exactly one of url or urlFrom"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinks_are_read_strictly() {
        let sink = Sink::parse(
            "chat",
            "format: slack\nurlFrom: {secretKeyRef: {name: chat, key: url}}\non: [aborted, paused]\n",
        )
        .expect("sink");
        assert_eq!(sink.format, Format::Slack);
        assert_eq!(sink.on, [Trigger::Aborted, Trigger::Paused]);
        let typo = Sink::parse("chat", "format: slack\nurl: http://x.svc\nnon: [aborted]\n");
        assert!(typo.is_err_and(|e| e.contains("unknown field `non`")));
        let both = Sink::parse("chat", "format: json\n");
        assert!(both.is_err_and(|e| e.contains("exactly one of url or urlFrom")));
        let format = Sink::parse("chat", "format: email\nurl: http://x.svc\n");
        assert!(format.is_err_and(|e| e.contains("unknown variant `email`")));
    }

    #[test]
    fn timeline_reasons_map_to_triggers() {
        assert_eq!(Trigger::of("RolloutAborted", ""), Some(Trigger::Aborted));
        assert_eq!(
            Trigger::of(
                "ConfidenceScored",
                "step 2: ...; waiting for a person to promote"
            ),
            Some(Trigger::Paused)
        );
        assert_eq!(
            Trigger::of("ConfidenceScored", "...; the release goes on"),
            None
        );
        assert_eq!(Trigger::of("AnalysisRunStarted", ""), None);
    }
}

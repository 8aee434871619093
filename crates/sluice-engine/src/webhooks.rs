//! Webhooks (`spec.webhooks`, as Flagger's): HTTP calls at a release's moments. The engine decides
//! which calls are wanted and what their answers mean; the controller makes the calls outside the
//! reconcile and hands the answers back in the snapshot. Answers that settle something (a
//! confirmation, a `pre-rollout` or `post-rollout` outcome, a rollback asked for) are recorded in
//! `status.webhooks` for the revision, so a restart neither calls again nor forgets.
//!
//! - `confirm-rollout`: before the new version's first pod; the release waits (paused,
//!   `WaitingForConfirmation`) until it answers 2xx.
//! - `pre-rollout`: then, together with the pre-deployment checks; a failure aborts the release.
//! - `confirm-promotion`: before the new version becomes stable; the release waits as above.
//! - `rollback`: asked while the release is in flight; a 2xx answer aborts it.
//! - `post-rollout`: once the release completed or was aborted; a failure is reported.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use sluice_api::rollout::{
    PauseCondition, RolloutStatus, Webhook, WebhookPhase, WebhookStatus, WebhookType,
    WebhooksStatus,
};

use crate::events::Event;
use crate::release::{HookAnswer, HookCall, pause_reason};

/// The document's `phase` for each moment (Flagger's canary phases, where it has one).
pub mod phase {
    /// `confirm-rollout`.
    pub const WAITING: &str = "Waiting";
    /// `pre-rollout` and `rollback`.
    pub const PROGRESSING: &str = "Progressing";
    /// `confirm-promotion`.
    pub const WAITING_PROMOTION: &str = "WaitingPromotion";
    /// `post-rollout` after a completed release.
    pub const SUCCEEDED: &str = "Succeeded";
    /// `post-rollout` after an aborted release.
    pub const FAILED: &str = "Failed";
}

/// The webhooks of one decision: the spec, the revision, the answers handed in, and what the
/// decision asks for and announces.
pub(crate) struct Hooks<'a> {
    pub spec: &'a [Webhook],
    pub hash: &'a str,
    pub answers: &'a [HookAnswer],
    pub calls: Vec<HookCall>,
    pub events: Vec<Event>,
}

/// What the webhooks before the first pod mean for the release now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum BeforePods {
    /// Nothing to wait for.
    Go,
    /// A `confirm-rollout` webhook has not answered 2xx: the release waits, with this message.
    Confirming(String),
    /// A `pre-rollout` webhook has not answered yet: the new version gets no pods, with this message.
    Running(String),
    /// A `pre-rollout` webhook failed: abort with this message.
    Failed(String),
}

impl<'a> Hooks<'a> {
    pub fn new(spec: &'a [Webhook], hash: &'a str, answers: &'a [HookAnswer]) -> Self {
        Self {
            spec,
            hash,
            answers,
            calls: Vec::new(),
            events: Vec::new(),
        }
    }

    fn of(&self, type_: WebhookType) -> impl Iterator<Item = &'a Webhook> + use<'a> {
        self.spec.iter().filter(move |h| h.type_ == type_)
    }

    /// The answer to the call of `attempt` (an earlier attempt's answers count for nothing).
    fn answer(&self, name: &str, phase: &str, attempt: i32) -> Option<&'a HookAnswer> {
        self.answers.iter().find(|a| {
            a.name == name && a.revision == self.hash && a.phase == phase && a.attempt == attempt
        })
    }

    fn call(&mut self, name: &str, phase: &'static str, attempt: i32) {
        self.calls.push(HookCall {
            name: name.to_owned(),
            revision: self.hash.to_owned(),
            phase,
            attempt,
        });
    }

    fn event(&mut self, warning: bool, reason: &'static str, message: String) {
        self.events.push(Event {
            warning,
            reason,
            message,
        });
    }

    /// The record of this revision's webhooks, if the release has one.
    fn record<'s>(&self, status: &'s mut RolloutStatus) -> Option<&'s mut WebhooksStatus> {
        status
            .webhooks
            .as_mut()
            .filter(|record| record.revision == self.hash)
    }

    /// A fresh record for the revision: the webhooks before the first pod are waiting if the
    /// release has not started a pod yet (`starting`), and skipped if it has.
    fn fresh(&self, status: &RolloutStatus, starting: bool) -> WebhooksStatus {
        WebhooksStatus {
            revision: self.hash.to_owned(),
            attempt: status.webhooks.as_ref().map_or(1, |r| r.attempt + 1),
            hooks: self
                .spec
                .iter()
                .filter(|h| {
                    matches!(
                        h.type_,
                        WebhookType::ConfirmRollout | WebhookType::PreRollout
                    )
                })
                .map(|h| WebhookStatus {
                    name: h.name.clone(),
                    type_: h.type_,
                    phase: if starting {
                        WebhookPhase::Waiting
                    } else {
                        WebhookPhase::Skipped
                    },
                    message: (!starting).then(|| {
                        "the release was under way before this webhook could be called".to_owned()
                    }),
                })
                .collect(),
        }
    }

    /// A retry (or the same revision released again) starts the release again: the webhooks
    /// before the first pod are called again, whatever pods the aborted attempt left, and
    /// `post-rollout` will tell of the new outcome.
    pub fn rerun(&self, status: &mut RolloutStatus) {
        status.webhooks = (!self.spec.is_empty()).then(|| self.fresh(status, true));
    }

    /// A new revision to release: asked afresh if it is the one the record is for (released
    /// before); another revision's record stays until this one's release starts (its
    /// `post-rollout` may still be told).
    pub fn new_revision(&self, status: &mut RolloutStatus) {
        if status
            .webhooks
            .as_ref()
            .is_some_and(|r| r.revision == self.hash)
        {
            self.rerun(status);
        }
    }

    /// The webhooks before the first pod, for a release the gates let start. `starting`: it has not
    /// created a pod or sent traffic yet (webhooks that were never called for this revision are
    /// skipped otherwise).
    pub fn before_pods(&mut self, status: &mut RolloutStatus, starting: bool) -> BeforePods {
        if self.spec.is_empty() {
            status.webhooks = None;
            return BeforePods::Go;
        }
        if self.record(status).is_none() {
            status.webhooks = Some(self.fresh(status, starting));
        }
        let confirming = self.confirm(status, WebhookType::ConfirmRollout, phase::WAITING);
        if let Some(message) = confirming {
            return BeforePods::Confirming(message);
        }
        let mut running = Vec::new();
        let attempt = self.record(status).map_or(1, |r| r.attempt);
        for hook in self.of(WebhookType::PreRollout) {
            let Some(entry) = self
                .record(status)
                .and_then(|r| r.hooks.iter_mut().find(|e| e.name == hook.name))
            else {
                continue;
            };
            match entry.phase {
                WebhookPhase::Failed => {
                    return BeforePods::Failed(failed(hook, entry.message.as_deref()));
                }
                WebhookPhase::Passed | WebhookPhase::Skipped => continue,
                WebhookPhase::Waiting => {}
            }
            match self.answer(&hook.name, phase::PROGRESSING, attempt) {
                Some(answer) if answer.ok => {
                    entry.phase = WebhookPhase::Passed;
                    entry.message = Some(answer.message.clone());
                    self.event(
                        false,
                        "WebhookPassed",
                        format!("pre-rollout webhook {}: {}", hook.name, answer.message),
                    );
                }
                Some(answer) => {
                    entry.phase = WebhookPhase::Failed;
                    entry.message = Some(answer.message.clone());
                    let message = failed(hook, Some(&answer.message));
                    self.event(true, "WebhookFailed", message.clone());
                    return BeforePods::Failed(message);
                }
                None => {
                    running.push(hook.name.as_str());
                    self.call(&hook.name, phase::PROGRESSING, attempt);
                }
            }
        }
        if running.is_empty() {
            BeforePods::Go
        } else {
            BeforePods::Running(format!(
                "pre-rollout webhook {} called, no answer yet",
                running.join(", ")
            ))
        }
    }

    /// `confirm-promotion`: `Some(why)` while the release must wait before the new version
    /// becomes stable.
    pub fn confirm_promotion(&mut self, status: &mut RolloutStatus) -> Option<String> {
        self.confirm(
            status,
            WebhookType::ConfirmPromotion,
            phase::WAITING_PROMOTION,
        )
    }

    /// The confirmations of `type_`: each waits until it answers 2xx, recorded then. `Some(why)`
    /// while one has not.
    fn confirm(
        &mut self,
        status: &mut RolloutStatus,
        type_: WebhookType,
        phase: &'static str,
    ) -> Option<String> {
        let mut waiting = Vec::new();
        for hook in self.of(type_) {
            let record = self.record(status)?;
            let attempt = record.attempt;
            let entry = match record.hooks.iter().position(|e| e.name == hook.name) {
                Some(i) => &mut record.hooks[i],
                // Before the first pod, only the webhooks the release started with are asked.
                None if type_ == WebhookType::ConfirmRollout => continue,
                None => {
                    record.hooks.push(WebhookStatus {
                        name: hook.name.clone(),
                        type_,
                        phase: WebhookPhase::Waiting,
                        message: None,
                    });
                    let last = record.hooks.len() - 1;
                    &mut record.hooks[last]
                }
            };
            if entry.phase != WebhookPhase::Waiting {
                continue;
            }
            match self.answer(&hook.name, phase, attempt) {
                Some(answer) if answer.ok => {
                    entry.phase = WebhookPhase::Passed;
                    entry.message = Some(answer.message.clone());
                    self.event(
                        false,
                        "WebhookConfirmed",
                        format!(
                            "{} webhook {}: {}",
                            type_.as_str(),
                            hook.name,
                            answer.message
                        ),
                    );
                    continue;
                }
                Some(answer) => {
                    if entry.message.as_deref() != Some(answer.message.as_str()) {
                        entry.message = Some(answer.message.clone());
                        self.event(
                            false,
                            "WaitingForConfirmation",
                            format!(
                                "{} webhook {}: {}; asking again every 10s",
                                type_.as_str(),
                                hook.name,
                                answer.message
                            ),
                        );
                    }
                    waiting.push(format!(
                        "{} webhook {}: {}",
                        type_.as_str(),
                        hook.name,
                        answer.message
                    ));
                }
                None => waiting.push(format!(
                    "{} webhook {}: {}",
                    type_.as_str(),
                    hook.name,
                    entry
                        .message
                        .clone()
                        .unwrap_or_else(|| "called, no answer yet".to_owned())
                )),
            }
            self.call(&hook.name, phase, attempt);
        }
        (!waiting.is_empty()).then(|| waiting.join("; "))
    }

    /// `rollback`: asked while the release is in flight. `Some(why)` when one answered 2xx: the
    /// release is to be aborted.
    pub fn rollback(&mut self, status: &mut RolloutStatus) -> Option<String> {
        for hook in self.of(WebhookType::Rollback) {
            let record = self.record(status)?;
            let attempt = record.attempt;
            let answer = self.answer(&hook.name, phase::PROGRESSING, attempt);
            let entry = record.hooks.iter().position(|e| e.name == hook.name);
            match answer {
                Some(answer) if answer.ok => {
                    let message = format!(
                        "rollback webhook {} asked for it: {}",
                        hook.name, answer.message
                    );
                    let passed = WebhookStatus {
                        name: hook.name.clone(),
                        type_: WebhookType::Rollback,
                        phase: WebhookPhase::Passed,
                        message: Some(answer.message.clone()),
                    };
                    match entry {
                        Some(i) => record.hooks[i] = passed,
                        None => record.hooks.push(passed),
                    }
                    return Some(message);
                }
                // A refusal is the usual answer: kept (when it changes) to show the webhook is heard.
                Some(answer) => {
                    let waiting = WebhookStatus {
                        name: hook.name.clone(),
                        type_: WebhookType::Rollback,
                        phase: WebhookPhase::Waiting,
                        message: Some(answer.message.clone()),
                    };
                    match entry {
                        Some(i) => record.hooks[i] = waiting,
                        None => record.hooks.push(waiting),
                    }
                }
                None => {}
            }
            self.call(&hook.name, phase::PROGRESSING, attempt);
        }
        None
    }

    /// Once the strategy decided: the release is paused (`WaitingForConfirmation`) while a
    /// confirmation is missing (`confirming`) and not while none is, and `post-rollout` is told
    /// when the release of this revision ended (aborted, or `completed`: stable is this revision).
    pub fn settle(
        &mut self,
        status: &mut RolloutStatus,
        confirming: bool,
        completed: bool,
        now: Timestamp,
    ) {
        let paused = status
            .pause_conditions
            .iter()
            .any(|p| p.reason == pause_reason::WAITING_FOR_CONFIRMATION);
        if confirming && !status.abort {
            if !paused {
                status.pause_conditions.push(PauseCondition {
                    reason: pause_reason::WAITING_FOR_CONFIRMATION.to_owned(),
                    start_time: Time(now),
                });
            }
            status.controller_pause = true;
        } else if paused {
            status
                .pause_conditions
                .retain(|p| p.reason != pause_reason::WAITING_FOR_CONFIRMATION);
            status.controller_pause = !status.pause_conditions.is_empty();
        }
        if status.abort {
            self.after_release(status, phase::FAILED);
        } else if completed {
            self.after_release(status, phase::SUCCEEDED);
        }
    }

    /// `post-rollout`, once the release of this revision ended (`phase`: `Succeeded` or `Failed`):
    /// called until each has an outcome, which is recorded and announced.
    fn after_release(&mut self, status: &mut RolloutStatus, phase: &'static str) {
        for hook in self.of(WebhookType::PostRollout) {
            let Some(record) = self.record(status) else {
                return;
            };
            if record
                .hooks
                .iter()
                .any(|e| e.name == hook.name && e.phase != WebhookPhase::Waiting)
            {
                continue;
            }
            let attempt = record.attempt;
            let Some(answer) = self.answer(&hook.name, phase, attempt) else {
                self.call(&hook.name, phase, attempt);
                continue;
            };
            let (outcome, warning, reason, message) = if answer.ok {
                (
                    WebhookPhase::Passed,
                    false,
                    "WebhookPassed",
                    format!("post-rollout webhook {}: {}", hook.name, answer.message),
                )
            } else {
                (
                    WebhookPhase::Failed,
                    true,
                    "WebhookFailed",
                    format!(
                        "post-rollout webhook {} failed: {}; the release's outcome stands",
                        hook.name, answer.message
                    ),
                )
            };
            record.hooks.retain(|e| e.name != hook.name);
            record.hooks.push(WebhookStatus {
                name: hook.name.clone(),
                type_: WebhookType::PostRollout,
                phase: outcome,
                message: Some(answer.message.clone()),
            });
            self.event(warning, reason, message);
        }
    }
}

fn failed(hook: &Webhook, message: Option<&str>) -> String {
    format!(
        "pre-rollout webhook {} failed: {}; no pod was started",
        hook.name,
        message.unwrap_or("no 2xx answer")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(name: &str, type_: WebhookType) -> Webhook {
        Webhook {
            name: name.to_owned(),
            type_,
            url: format!("http://hooks.test/{name}"),
            timeout: None,
            retries: None,
            metadata: Default::default(),
        }
    }

    fn answer(name: &str, phase: &str, ok: bool) -> HookAnswer {
        HookAnswer {
            name: name.to_owned(),
            revision: "new".to_owned(),
            phase: phase.to_owned(),
            attempt: 1,
            ok,
            message: if ok {
                "answered 200 OK"
            } else {
                "answered 403 Forbidden"
            }
            .to_owned(),
        }
    }

    fn names(calls: &[HookCall]) -> Vec<(&str, &str)> {
        calls.iter().map(|c| (c.name.as_str(), c.phase)).collect()
    }

    #[test]
    fn confirm_rollout_holds_until_it_answers_2xx_then_pre_rollout_is_called_once() {
        let spec = [
            hook("approve", WebhookType::ConfirmRollout),
            hook("smoke", WebhookType::PreRollout),
        ];
        let mut status = RolloutStatus::default();
        // Not answered yet: asked, and the release waits.
        let mut hooks = Hooks::new(&spec, "new", &[]);
        assert!(matches!(
            hooks.before_pods(&mut status, true),
            BeforePods::Confirming(_)
        ));
        assert_eq!(names(&hooks.calls), [("approve", "Waiting")]);
        // Refused: still waiting, asked again; the refusal is recorded once.
        let refused = [answer("approve", phase::WAITING, false)];
        let mut hooks = Hooks::new(&spec, "new", &refused);
        let waits = hooks.before_pods(&mut status, true);
        assert_eq!(
            waits,
            BeforePods::Confirming(
                "confirm-rollout webhook approve: answered 403 Forbidden".to_owned()
            )
        );
        assert_eq!(hooks.events.len(), 1);
        let mut again = Hooks::new(&spec, "new", &refused);
        again.before_pods(&mut status, true);
        assert!(
            again.events.is_empty(),
            "the same refusal is not announced twice"
        );
        // Confirmed: pre-rollout is called next.
        let confirmed = [answer("approve", phase::WAITING, true)];
        let mut hooks = Hooks::new(&spec, "new", &confirmed);
        assert!(matches!(
            hooks.before_pods(&mut status, true),
            BeforePods::Running(_)
        ));
        assert_eq!(names(&hooks.calls), [("smoke", "Progressing")]);
        // Its answer is recorded: no more calls, even with no answers handed in (a restart).
        let passed = [answer("smoke", phase::PROGRESSING, true)];
        let mut hooks = Hooks::new(&spec, "new", &passed);
        assert_eq!(hooks.before_pods(&mut status, true), BeforePods::Go);
        let mut restarted = Hooks::new(&spec, "new", &[]);
        assert_eq!(restarted.before_pods(&mut status, false), BeforePods::Go);
        assert!(restarted.calls.is_empty());
    }

    #[test]
    fn a_failed_pre_rollout_aborts_and_a_retry_calls_it_again() {
        let spec = [hook("smoke", WebhookType::PreRollout)];
        let mut status = RolloutStatus::default();
        Hooks::new(&spec, "new", &[]).before_pods(&mut status, true);
        let failed = [answer("smoke", phase::PROGRESSING, false)];
        let outcome = Hooks::new(&spec, "new", &failed).before_pods(&mut status, true);
        assert_eq!(
            outcome,
            BeforePods::Failed(
                "pre-rollout webhook smoke failed: answered 403 Forbidden; no pod was started"
                    .to_owned()
            )
        );
        // A retry, with the aborted attempt's pods still there: called again.
        Hooks::new(&spec, "new", &failed).rerun(&mut status);
        let mut hooks = Hooks::new(&spec, "new", &failed);
        hooks.before_pods(&mut status, false);
        assert_eq!(names(&hooks.calls), [("smoke", "Progressing")]);
    }

    #[test]
    fn webhooks_added_once_pods_run_are_skipped_before_pods_but_later_moments_are_called() {
        let spec = [
            hook("approve", WebhookType::ConfirmRollout),
            hook("promote", WebhookType::ConfirmPromotion),
            hook("done", WebhookType::PostRollout),
            hook("stop", WebhookType::Rollback),
        ];
        let mut status = RolloutStatus::default();
        let mut hooks = Hooks::new(&spec, "new", &[]);
        assert_eq!(hooks.before_pods(&mut status, false), BeforePods::Go);
        assert!(hooks.rollback(&mut status).is_none());
        assert!(hooks.confirm_promotion(&mut status).is_some());
        assert_eq!(
            names(&hooks.calls),
            [("stop", "Progressing"), ("promote", "WaitingPromotion")]
        );
        let record = status.webhooks.as_ref().expect("record");
        assert_eq!(record.hooks[0].phase, WebhookPhase::Skipped);
        // Ended: post-rollout is told once.
        let mut hooks = Hooks::new(&spec, "new", &[]);
        hooks.after_release(&mut status, phase::SUCCEEDED);
        assert_eq!(names(&hooks.calls), [("done", "Succeeded")]);
        let told = [answer("done", phase::SUCCEEDED, false)];
        let mut hooks = Hooks::new(&spec, "new", &told);
        hooks.after_release(&mut status, phase::SUCCEEDED);
        assert_eq!(hooks.events.len(), 1);
        assert!(hooks.events[0].warning);
        let mut hooks = Hooks::new(&spec, "new", &[]);
        hooks.after_release(&mut status, phase::SUCCEEDED);
        assert!(hooks.calls.is_empty() && hooks.events.is_empty());
    }

    #[test]
    fn a_rollback_webhook_that_answers_2xx_asks_for_the_abort() {
        let spec = [hook("stop", WebhookType::Rollback)];
        let mut status = RolloutStatus::default();
        Hooks::new(&spec, "new", &[]).before_pods(&mut status, true);
        let no = [answer("stop", phase::PROGRESSING, false)];
        assert!(
            Hooks::new(&spec, "new", &no)
                .rollback(&mut status)
                .is_none()
        );
        let yes = [answer("stop", phase::PROGRESSING, true)];
        let why = Hooks::new(&spec, "new", &yes).rollback(&mut status);
        assert_eq!(
            why.as_deref(),
            Some("rollback webhook stop asked for it: answered 200 OK")
        );
        // Answers for another revision count for nothing.
        let mut other = RolloutStatus::default();
        let mut hooks = Hooks::new(&spec, "other", &yes);
        hooks.before_pods(&mut other, true);
        assert!(hooks.rollback(&mut other).is_none());
    }
}

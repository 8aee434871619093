//! Taking over a running Argo Rollout (`sluice.dev/takeover-from`), pods and all.
//!
//! The Sluice Rollout adopts the stable ReplicaSet Argo Rollouts created: its pods keep running, not
//! one is replaced. While the Argo Rollout exists, nothing is written that it owns but labels: the
//! ReplicaSet and its pods get Sluice's labels (the revision's hash), which no Argo controller reads.
//! Its Services keep Argo's selector, which the pods still match. Once the Argo Rollout is deleted
//! with its ReplicaSets orphaned (`kubectl sluice migrate --takeover` does it), the Sluice Rollout
//! owns the ReplicaSet, points each Service at Sluice's label instead of Argo's (the pods carry
//! both, so no request finds no pod), and from then on releases as any Rollout does.
//!
//! A takeover is refused, with the reason and nothing touched, while the Argo Rollout is not
//! Healthy (mid-release, paused, aborted, degraded) or when its stable pods do not run the pod
//! template the Sluice Rollout has: adopting them would be releasing a revision without its steps.

use sluice_api::rollout::TakeoverStatus;

/// Argo Rollouts' pod-template-hash label, on its ReplicaSets, pods and Service selectors.
pub const ARGO_HASH_LABEL: &str = "rollouts-pod-template-hash";

/// The Argo Rollout, as its status says.
#[derive(Clone, Debug, Default)]
pub struct ArgoRollout<'a> {
    /// `status.phase`: Healthy, Progressing, Paused, Degraded.
    pub phase: Option<&'a str>,
    /// `status.stableRS`.
    pub stable_hash: Option<&'a str>,
    /// `status.currentPodHash`.
    pub current_hash: Option<&'a str>,
    /// `spec.paused` or `status.pauseConditions`.
    pub paused: bool,
    /// `status.abort`.
    pub aborted: bool,
    /// `status.observedGeneration` is the object's generation.
    pub observed: bool,
}

/// The ReplicaSet to adopt: the Argo Rollout's stable one.
#[derive(Clone, Debug, Default)]
pub struct Candidate<'a> {
    pub name: &'a str,
    /// Still controlled by the Argo Rollout (its owner reference not yet removed).
    pub controlled_by_argo: bool,
    /// Controlled by this Sluice Rollout already.
    pub controlled_by_us: bool,
    /// Controlled by something else altogether (its kind and name).
    pub controlled_by_other: Option<String>,
    /// Carries Sluice's labels (the Rollout's name, the revision's hash, in its pod template too).
    pub labelled: bool,
    /// Where its pod template differs from the Sluice Rollout's (hash labels aside), if it does.
    pub differs: Option<String>,
    /// Its pods without Sluice's hash label.
    pub unlabelled_pods: Vec<&'a str>,
    /// Being deleted.
    pub deleting: bool,
}

/// What one takeover reconcile sees.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    /// The Argo Rollout's name (the annotation's value).
    pub from: &'a str,
    /// The Argo Rollout, if it still exists.
    pub argo: Option<ArgoRollout<'a>>,
    /// Its stable ReplicaSet (found by the Argo Rollout's stable hash, or by the name recorded).
    pub candidate: Option<Candidate<'a>>,
    /// When no candidate was found: what was (the ReplicaSets with the stable hash, and owners).
    pub candidate_note: Option<String>,
    /// The Services the Sluice Rollout names whose selector still has Argo's hash label.
    pub services_on_argo: Vec<&'a str>,
    /// What status records so far.
    pub status: Option<&'a TakeoverStatus>,
}

/// What to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Taken over: the Rollout goes on as any other.
    Done,
    /// Not now, and why (recorded; nothing is touched). Looked at again shortly.
    Refused(String),
    /// Label the ReplicaSet and pods (while the Argo Rollout still runs), then wait for it to go.
    Prepare {
        label_replica_set: Option<String>,
        label_pods: Vec<String>,
        status: TakeoverStatus,
    },
    /// Wait (for the Argo Rollout's deletion, or the garbage collector to orphan the ReplicaSet).
    Wait(TakeoverStatus),
    /// Own the ReplicaSet, point the Services at Sluice's label, and record the revision stable.
    Adopt {
        own_replica_set: Option<String>,
        label_pods: Vec<String>,
        services: Vec<String>,
        status: TakeoverStatus,
    },
}

pub const WAITING_FOR_ARGO: &str = "WaitingForArgoRollout";
pub const WAITING_FOR_REMOVAL: &str = "WaitingForArgoRolloutRemoval";
pub const WAITING_FOR_ORPHAN: &str = "WaitingForReplicaSetOrphaned";
pub const TAKEN_OVER: &str = "TakenOver";
pub const REFUSED: &str = "Refused";

fn status(inputs: &Inputs<'_>, phase: &str, message: String) -> TakeoverStatus {
    TakeoverStatus {
        from: inputs.from.to_owned(),
        replica_set: inputs
            .candidate
            .as_ref()
            .map(|c| c.name.to_owned())
            .or_else(|| inputs.status.and_then(|s| s.replica_set.clone())),
        phase: phase.to_owned(),
        message,
    }
}

/// The next step of the takeover.
pub fn decide(inputs: &Inputs<'_>) -> Step {
    if inputs
        .status
        .is_some_and(|s| s.phase == TAKEN_OVER && s.from == inputs.from)
    {
        return Step::Done;
    }
    let from = inputs.from;
    match &inputs.argo {
        Some(argo) => {
            if !argo.observed {
                // Not a refusal: Argo's controller has yet to write what it made of the spec.
                return Step::Wait(status(
                    inputs,
                    WAITING_FOR_ARGO,
                    format!("waiting for Argo Rollout {from} to act on its latest spec"),
                ));
            }
            let healthy = argo.phase == Some("Healthy")
                && !argo.paused
                && !argo.aborted
                && argo.stable_hash.is_some()
                && argo.stable_hash == argo.current_hash;
            if !healthy {
                return Step::Refused(format!(
                    "Argo Rollout {from} is {} (stable {}, current {}): a takeover adopts a settled service only; finish or abort its release first",
                    match (argo.aborted, argo.paused) {
                        (true, _) => "aborted".to_owned(),
                        (false, true) => "paused".to_owned(),
                        _ => argo.phase.unwrap_or("not Healthy").to_owned(),
                    },
                    argo.stable_hash.unwrap_or("none"),
                    argo.current_hash.unwrap_or("none"),
                ));
            }
            let Some(candidate) = &inputs.candidate else {
                // Argo's status may name a ReplicaSet a read does not return yet: look again.
                return Step::Wait(status(
                    inputs,
                    WAITING_FOR_ARGO,
                    format!(
                        "waiting for Argo Rollout {from}'s stable ReplicaSet ({ARGO_HASH_LABEL}={}){}",
                        argo.stable_hash.unwrap_or_default(),
                        inputs
                            .candidate_note
                            .as_deref()
                            .map(|n| format!(": {n}"))
                            .unwrap_or_default()
                    ),
                ));
            };
            if let Some(other) = &candidate.controlled_by_other {
                return Step::Refused(format!(
                    "ReplicaSet {} is controlled by {other}, not Argo Rollout {from}",
                    candidate.name
                ));
            }
            if let Some(difference) = &candidate.differs {
                return Step::Refused(format!(
                    "the pod template differs from the one Argo Rollout {from}'s stable pods run ({difference}); a takeover keeps those pods, so the templates must be equal (`kubectl sluice migrate --takeover` copies it)"
                ));
            }
            Step::Prepare {
                label_replica_set: (!candidate.labelled).then(|| candidate.name.to_owned()),
                label_pods: candidate
                    .unlabelled_pods
                    .iter()
                    .map(|p| (*p).to_owned())
                    .collect(),
                status: status(
                    inputs,
                    WAITING_FOR_REMOVAL,
                    format!(
                        "ReplicaSet {} and its pods are labelled for Sluice; delete Argo Rollout {from} with its ReplicaSets orphaned (`kubectl delete rollouts.argoproj.io/{from} --cascade=orphan`) and the takeover completes",
                        candidate.name
                    ),
                ),
            }
        }
        None if inputs
            .status
            .is_none_or(|s| s.from != from || s.phase == REFUSED && s.replica_set.is_none()) =>
        {
            Step::Refused(format!(
                "there is no Argo Rollout {from} in this namespace to take over (sluice.dev/takeover-from)"
            ))
        }
        None => {
            let Some(candidate) = &inputs.candidate else {
                // Nothing left to adopt (never prepared, or the ReplicaSet went with the Argo
                // Rollout): the Rollout starts its own pods as any new Rollout does.
                return Step::Adopt {
                    own_replica_set: None,
                    label_pods: Vec::new(),
                    services: inputs
                        .services_on_argo
                        .iter()
                        .map(|s| (*s).to_owned())
                        .collect(),
                    status: status(
                        inputs,
                        TAKEN_OVER,
                        format!(
                            "Argo Rollout {from} is gone and left no ReplicaSet to adopt: the Rollout runs pods of its own"
                        ),
                    ),
                };
            };
            if candidate.deleting {
                return Step::Wait(status(
                    inputs,
                    WAITING_FOR_ORPHAN,
                    format!(
                        "ReplicaSet {} is being deleted with Argo Rollout {from}",
                        candidate.name
                    ),
                ));
            }
            if candidate.controlled_by_argo {
                return Step::Wait(status(
                    inputs,
                    WAITING_FOR_ORPHAN,
                    format!(
                        "Argo Rollout {from} is deleted; waiting for ReplicaSet {} to be orphaned",
                        candidate.name
                    ),
                ));
            }
            if let Some(other) = &candidate.controlled_by_other {
                return Step::Refused(format!(
                    "ReplicaSet {} is now controlled by {other}",
                    candidate.name
                ));
            }
            // Checked again at adoption: adopting pods of another template would count them as
            // the new revision and skip its steps. Its pods serve on meanwhile; undoing the edit
            // lets the takeover complete.
            if let Some(difference) = &candidate.differs {
                return Step::Refused(format!(
                    "ReplicaSet {} is not adopted: {difference}; set the template back to the one its pods run, and the takeover completes",
                    candidate.name
                ));
            }
            Step::Adopt {
                own_replica_set: (!candidate.controlled_by_us).then(|| candidate.name.to_owned()),
                label_pods: candidate
                    .unlabelled_pods
                    .iter()
                    .map(|p| (*p).to_owned())
                    .collect(),
                services: inputs
                    .services_on_argo
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect(),
                status: status(
                    inputs,
                    TAKEN_OVER,
                    format!(
                        "took over Argo Rollout {from}: ReplicaSet {} adopted with its pods, none replaced",
                        candidate.name
                    ),
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> ArgoRollout<'static> {
        ArgoRollout {
            phase: Some("Healthy"),
            stable_hash: Some("abc"),
            current_hash: Some("abc"),
            observed: true,
            ..ArgoRollout::default()
        }
    }

    fn candidate() -> Candidate<'static> {
        Candidate {
            name: "web-abc",
            controlled_by_argo: true,
            unlabelled_pods: vec!["web-abc-1", "web-abc-2"],
            ..Candidate::default()
        }
    }

    fn inputs<'a>(argo: Option<ArgoRollout<'a>>, candidate: Option<Candidate<'a>>) -> Inputs<'a> {
        Inputs {
            from: "web",
            argo,
            candidate,
            candidate_note: None,
            services_on_argo: vec!["web-stable"],
            status: None,
        }
    }

    #[test]
    fn a_healthy_argo_rollout_is_prepared_by_labels_only_and_waits_for_its_removal() {
        let step = decide(&inputs(Some(healthy()), Some(candidate())));
        let Step::Prepare {
            label_replica_set,
            label_pods,
            status,
        } = step
        else {
            panic!("{step:?}");
        };
        assert_eq!(label_replica_set.as_deref(), Some("web-abc"));
        assert_eq!(label_pods, ["web-abc-1", "web-abc-2"]);
        assert_eq!(status.phase, WAITING_FOR_REMOVAL);
        assert!(
            status.message.contains("--cascade=orphan"),
            "{}",
            status.message
        );
    }

    #[test]
    fn a_release_in_flight_or_a_different_template_is_refused() {
        let mid = ArgoRollout {
            phase: Some("Paused"),
            current_hash: Some("def"),
            paused: true,
            ..healthy()
        };
        let Step::Refused(why) = decide(&inputs(Some(mid), Some(candidate()))) else {
            panic!("a release in flight was not refused");
        };
        assert!(why.contains("finish or abort"), "{why}");
        let differs = Candidate {
            differs: Some("containers[0].image: web:1 here, web:2 there".to_owned()),
            ..candidate()
        };
        let Step::Refused(why) = decide(&inputs(Some(healthy()), Some(differs))) else {
            panic!("a different template was not refused");
        };
        assert!(why.contains("containers[0].image"), "{why}");
    }

    #[test]
    fn once_the_argo_rollout_is_gone_the_orphaned_replica_set_is_adopted_and_services_moved() {
        let prepared = TakeoverStatus {
            from: "web".to_owned(),
            replica_set: Some("web-abc".to_owned()),
            phase: WAITING_FOR_REMOVAL.to_owned(),
            message: String::new(),
        };
        let inputs = |candidate| Inputs {
            status: Some(&prepared),
            ..inputs(None, Some(candidate))
        };
        let still_owned = decide(&inputs(candidate()));
        assert!(
            matches!(&still_owned, Step::Wait(s) if s.phase == WAITING_FOR_ORPHAN),
            "{still_owned:?}"
        );
        let orphaned = Candidate {
            controlled_by_argo: false,
            labelled: true,
            unlabelled_pods: Vec::new(),
            ..candidate()
        };
        let step = decide(&inputs(orphaned));
        assert_eq!(
            step,
            Step::Adopt {
                own_replica_set: Some("web-abc".to_owned()),
                label_pods: Vec::new(),
                services: vec!["web-stable".to_owned()],
                status: TakeoverStatus {
                    from: "web".to_owned(),
                    replica_set: Some("web-abc".to_owned()),
                    phase: TAKEN_OVER.to_owned(),
                    message: "took over Argo Rollout web: ReplicaSet web-abc adopted with its pods, none replaced".to_owned(),
                },
            }
        );
    }

    /// A template edited between prepare and adopt is refused at adoption (before, the orphaned
    /// ReplicaSet was adopted as the new revision and its steps skipped).
    #[test]
    fn a_template_edited_after_prepare_is_refused_at_adoption() {
        let prepared = TakeoverStatus {
            from: "web".to_owned(),
            replica_set: Some("web-abc".to_owned()),
            phase: WAITING_FOR_REMOVAL.to_owned(),
            message: String::new(),
        };
        let edited = Candidate {
            controlled_by_argo: false,
            labelled: false,
            unlabelled_pods: Vec::new(),
            differs: Some("the Rollout's pod template changed".to_owned()),
            ..candidate()
        };
        let step = decide(&Inputs {
            status: Some(&prepared),
            ..inputs(None, Some(edited))
        });
        assert!(
            matches!(&step, Step::Refused(why) if why.contains("not adopted") && why.contains("template changed")),
            "{step:?}"
        );
    }

    #[test]
    fn an_argo_rollout_yet_to_act_on_its_spec_is_waited_for_not_refused() {
        let behind = ArgoRollout {
            observed: false,
            ..healthy()
        };
        let step = decide(&inputs(Some(behind), Some(candidate())));
        assert!(
            matches!(&step, Step::Wait(s) if s.phase == WAITING_FOR_ARGO),
            "{step:?}"
        );
    }

    #[test]
    fn a_takeover_of_an_argo_rollout_never_seen_is_refused() {
        let step = decide(&inputs(None, None));
        assert!(
            matches!(&step, Step::Refused(why) if why.contains("no Argo Rollout web")),
            "{step:?}"
        );
    }

    #[test]
    fn a_finished_takeover_is_done() {
        let done = TakeoverStatus {
            from: "web".to_owned(),
            phase: TAKEN_OVER.to_owned(),
            ..TakeoverStatus::default()
        };
        let mut seen = inputs(None, None);
        seen.status = Some(&done);
        assert_eq!(decide(&seen), Step::Done);
    }
}

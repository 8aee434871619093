//! The circuit breaker: scripted cases, and random histories of releases of a few Rollouts sharing
//! a breaker (starts, rollbacks, outcomes, time passing, resets) checked after every event: never
//! two releases through half-open, a failure let through half-open always reopens it for longer
//! (capped), a success closes it, and a rollback is never held.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use proptest::prelude::*;
use sluice_api::release::ReleaseOutcome;
use sluice_engine::breaker::{
    AdmittedRelease, Breaker, CircuitInputs, Config, EndedRelease, evaluate,
};
use sluice_engine::gate::{Gating, gate_release};

const CONFIG: Config = Config {
    failures: 3,
    cooldown: Duration::from_secs(60),
    max_cooldown: Duration::from_secs(200),
};

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_000_000 + seconds).expect("time")
}

fn ended(name: &str, outcome: ReleaseOutcome, admitted: i64, end: i64) -> EndedRelease {
    EndedRelease {
        revision: String::new(),
        images: Vec::new(),
        name: name.to_owned(),
        outcome,
        rollback: false,
        admitted_at: Some(at(admitted)),
        ended_at: at(end),
        reason: "analysis failed".to_owned(),
    }
}

#[test]
fn three_failures_open_it_one_release_goes_half_open_and_its_failure_doubles_the_cooldown() {
    let mut inputs = CircuitInputs::default();
    for (i, end) in [10, 20].into_iter().enumerate() {
        inputs.ended.push(ended(
            &format!("web-{i}"),
            ReleaseOutcome::Aborted,
            end - 5,
            end,
        ));
    }
    assert!(
        matches!(evaluate(&CONFIG, &inputs, at(25)), Breaker::Closed { ref failures } if failures.len() == 2)
    );
    inputs
        .ended
        .push(ended("web-3", ReleaseOutcome::Aborted, 25, 30));
    let open = evaluate(&CONFIG, &inputs, at(31));
    assert!(matches!(open, Breaker::Open { half_open_at, .. } if half_open_at == at(90)));
    assert!(
        open.hold("web")
            .is_some_and(|m| m.contains("3 failed release(s)"))
    );
    // Half-open: the first release let start goes; another Rollout's waits.
    let half = evaluate(&CONFIG, &inputs, at(95));
    assert_eq!(half.hold("api"), None, "the next release becomes the trial");
    inputs.in_flight.push(AdmittedRelease {
        rollout: "api".to_owned(),
        name: "api-7".to_owned(),
        admitted_at: at(95),
    });
    let trial = evaluate(&CONFIG, &inputs, at(96));
    assert_eq!(trial.hold("api"), None, "the trial itself goes on");
    assert!(trial.hold("web").is_some_and(|m| m.contains("api-7")));
    // The trial fails: open again for 120 s.
    inputs.in_flight.clear();
    inputs
        .ended
        .push(ended("api-7", ReleaseOutcome::Aborted, 95, 100));
    assert!(
        matches!(evaluate(&CONFIG, &inputs, at(101)), Breaker::Open { half_open_at, .. } if half_open_at == at(220))
    );
    // Its next trial fails too: 200 s (capped, not 240).
    inputs
        .ended
        .push(ended("web-4", ReleaseOutcome::Aborted, 221, 230));
    assert!(
        matches!(evaluate(&CONFIG, &inputs, at(231)), Breaker::Open { half_open_at, .. } if half_open_at == at(430))
    );
    // A success closes it; so does a reset.
    let mut closed = inputs.clone();
    closed
        .ended
        .push(ended("web-5", ReleaseOutcome::Completed, 431, 440));
    assert!(
        matches!(evaluate(&CONFIG, &closed, at(441)), Breaker::Closed { ref failures } if failures.is_empty())
    );
    let mut reset = inputs.clone();
    reset.reset_at = Some(at(300));
    assert!(
        matches!(evaluate(&CONFIG, &reset, at(301)), Breaker::Closed { ref failures } if failures.is_empty())
    );
}

#[test]
fn rollbacks_and_superseded_releases_count_neither_way() {
    let mut inputs = CircuitInputs::default();
    for (i, end) in [10, 20, 30].into_iter().enumerate() {
        inputs.ended.push(ended(
            &format!("web-{i}"),
            ReleaseOutcome::Aborted,
            end - 5,
            end,
        ));
        inputs.ended.push(EndedRelease {
            revision: String::new(),
            images: Vec::new(),
            rollback: true,
            ..ended(
                &format!("web-rb{i}"),
                ReleaseOutcome::Completed,
                end + 1,
                end + 2,
            )
        });
        inputs.ended.push(ended(
            &format!("web-s{i}"),
            ReleaseOutcome::Superseded,
            end + 3,
            end + 4,
        ));
    }
    assert!(matches!(
        evaluate(&CONFIG, &inputs, at(40)),
        Breaker::Open { .. }
    ));
}

#[test]
fn an_open_breaker_never_holds_a_rollback() {
    use sluice_api::rollout::RolloutStatus;
    let gating = Gating {
        circuit_hold: Some("circuit breaker open".to_owned()),
        ..Gating::default()
    };
    let mut status = RolloutStatus {
        stable_rs: Some("new".to_owned()),
        error_budget: Some(sluice_api::rollout::ErrorBudgetReleaseStatus {
            released_revisions: vec!["old".to_owned(), "new".to_owned()],
            ..Default::default()
        }),
        ..RolloutStatus::default()
    };
    let mut events = Vec::new();
    let rollback = gate_release(&mut status, &gating, "old", true, at(0), 1, &mut events);
    assert_eq!(rollback.held(), None, "back to a revision that was stable");
    let new = gate_release(&mut status, &gating, "newer", true, at(0), 1, &mut events);
    assert_eq!(new.held(), Some("circuit breaker open"));
}

#[derive(Clone, Debug)]
enum Event {
    Wait(u16),
    Start(usize),
    Rollback(usize),
    End(usize, bool),
    Reset,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (1u16..150).prop_map(Event::Wait),
        (0usize..3).prop_map(Event::Start),
        (0usize..3).prop_map(Event::Rollback),
        ((0usize..3), any::<bool>()).prop_map(|(r, ok)| Event::End(r, ok)),
        Just(Event::Reset),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(2000)
    ))]
    #[test]
    fn breaker_invariants_hold_over_random_histories(
        failures in 1usize..4,
        cooldown in 10u64..100,
        cap in 1u64..5,
        events in proptest::collection::vec(event(), 1..80),
    ) {
        let config = Config {
            failures,
            cooldown: Duration::from_secs(cooldown),
            max_cooldown: Duration::from_secs(cooldown * cap),
        };
        let rollouts = ["a", "b", "c"];
        let mut now = 0i64;
        let mut number = 0;
        let mut inputs = CircuitInputs::default();
        // The rollback each Rollout has in flight, if any.
        let mut rollbacks: [bool; 3] = [false; 3];
        for event in events {
            let before = evaluate(&config, &inputs, at(now));
            match event {
                Event::Wait(s) => now += i64::from(s),
                Event::Reset => inputs.reset_at = Some(at(now)),
                Event::Start(r) | Event::Rollback(r) => {
                    let rollback = matches!(event, Event::Rollback(_));
                    // A new template supersedes the release in flight.
                    if let Some(i) = inputs.in_flight.iter().position(|f| f.rollout == rollouts[r]) {
                        let f = inputs.in_flight.remove(i);
                        inputs.ended.push(EndedRelease {
                            revision: String::new(),
                            images: Vec::new(),
                            name: f.name, outcome: ReleaseOutcome::Superseded, rollback: false,
                            admitted_at: Some(f.admitted_at), ended_at: at(now), reason: String::new(),
                        });
                    }
                    number += 1;
                    if rollback {
                        rollbacks[r] = true;
                    } else if before.hold(rollouts[r]).is_none() {
                        inputs.in_flight.push(AdmittedRelease {
                            rollout: rollouts[r].to_owned(),
                            name: format!("{}-{number}", rollouts[r]),
                            admitted_at: at(now),
                        });
                    }
                }
                Event::End(r, ok) => {
                    if std::mem::take(&mut rollbacks[r]) {
                        inputs.ended.push(EndedRelease {
                            revision: String::new(),
                            images: Vec::new(),
                            name: format!("{}-rb{number}", rollouts[r]),
                            outcome: if ok { ReleaseOutcome::Completed } else { ReleaseOutcome::Aborted },
                            rollback: true, admitted_at: None, ended_at: at(now), reason: String::new(),
                        });
                        let after = evaluate(&config, &inputs, at(now));
                        prop_assert_eq!(std::mem::discriminant(&after), std::mem::discriminant(&before), "a rollback changed the breaker");
                    } else if let Some(i) = inputs.in_flight.iter().position(|f| f.rollout == rollouts[r]) {
                        let f = inputs.in_flight.remove(i);
                        let outcome = if ok { ReleaseOutcome::Completed } else { ReleaseOutcome::Aborted };
                        inputs.ended.push(EndedRelease {
                            revision: String::new(),
                            images: Vec::new(),
                            name: f.name.clone(), outcome, rollback: false,
                            admitted_at: Some(f.admitted_at), ended_at: at(now), reason: String::new(),
                        });
                        let after = evaluate(&config, &inputs, at(now));
                        // Failures in the same second count after it (the breaker errs towards holding).
                        let failed_with_it = inputs.ended.iter().any(|e| {
                            e.ended_at == at(now) && e.outcome == ReleaseOutcome::Aborted && !e.rollback
                        });
                        if ok && !failed_with_it {
                            prop_assert!(matches!(after, Breaker::Closed { .. }), "a success left it {after:?}");
                        }
                        if let Breaker::HalfOpen { half_open_at, opened_at, .. } = &before
                            && f.admitted_at >= *half_open_at && !ok
                        {
                            let cooldown = Duration::try_from(half_open_at.duration_since(*opened_at)).unwrap_or_default();
                            let longer = (cooldown * 2).min(config.max_cooldown);
                            prop_assert!(
                                matches!(after, Breaker::Open { opened_at, half_open_at, .. }
                                    if Duration::try_from(half_open_at.duration_since(opened_at)).ok() == Some(longer)),
                                "a failed trial left it {after:?}"
                            );
                        }
                    }
                }
            }
            // Never two releases through half-open.
            if let Breaker::HalfOpen { half_open_at, .. } = evaluate(&config, &inputs, at(now)) {
                let through = inputs.in_flight.iter().filter(|f| f.admitted_at >= half_open_at).count();
                prop_assert!(through <= 1, "{through} releases through half-open");
            }
        }
    }
}

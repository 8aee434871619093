//! Replica arithmetic for a canary without a traffic router, where the share of canary pods is the
//! share of traffic.
//!
//! The desired counts round both sides up, so that any weight strictly between 0 and 100 keeps at
//! least one pod of each version. Moving towards them honours `maxSurge` (pods above `replicas`) and
//! `maxUnavailable` (available pods below `replicas`), as a Deployment's rolling update does; the
//! stable side is never taken below its own desired count.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Resolves `maxSurge` and `maxUnavailable` against `replicas` (defaults 25% each): surge rounds
/// up, unavailability rounds down, and if both come to zero the surge becomes one so that progress
/// is possible.
pub fn surge_and_unavailable(
    replicas: i32,
    max_surge: Option<&IntOrString>,
    max_unavailable: Option<&IntOrString>,
) -> (i32, i32) {
    let resolve = |value: Option<&IntOrString>, round_up: bool| -> i32 {
        match value {
            Some(IntOrString::Int(n)) => (*n).max(0),
            Some(IntOrString::String(s)) => {
                let percent: i64 = s.trim_end_matches('%').parse().unwrap_or(25);
                percent_of(replicas, percent, round_up)
            }
            None => percent_of(replicas, 25, round_up),
        }
    };
    let surge = resolve(max_surge, true);
    let unavailable = resolve(max_unavailable, false).min(replicas);
    if surge == 0 && unavailable == 0 {
        (1, 0)
    } else {
        (surge, unavailable)
    }
}

fn percent_of(replicas: i32, percent: i64, round_up: bool) -> i32 {
    let product = i64::from(replicas.max(0)) * percent.max(0);
    let value = if round_up {
        (product + 99) / 100
    } else {
        product / 100
    };
    i32::try_from(value).unwrap_or(i32::MAX)
}

/// Pods of the canary and of stable that a weight asks for: both rounded up.
pub fn desired_for_weight(replicas: i32, weight: i32) -> Counts {
    let weight = weight.clamp(0, 100);
    Counts {
        canary: percent_of(replicas, i64::from(weight), true),
        stable: percent_of(replicas, i64::from(100 - weight), true),
    }
}

/// Pod counts of the two versions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counts {
    pub canary: i32,
    pub stable: i32,
}

/// What a ReplicaSet currently has: its `spec.replicas` and its available pods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    pub replicas: i32,
    pub available: i32,
}

/// The next `spec.replicas` of canary and stable on the way to `desired`, within the surge and
/// unavailability budgets. `others` are pods of superseded ReplicaSets, which are scaled to zero
/// first and count against the surge until they are gone.
pub fn next_counts(
    replicas: i32,
    surge: i32,
    unavailable: i32,
    desired: Counts,
    canary: Observed,
    stable: Observed,
    others: Observed,
) -> Counts {
    let mut next = Counts {
        canary: canary.replicas,
        stable: stable.replicas,
    };
    // Rounding both sides up may need one pod more than `replicas`.
    let extra = desired.canary + desired.stable - replicas;
    let max_total = replicas + surge + extra.max(0);

    // Scale up, stable first: capacity for the version that serves most traffic comes first.
    let mut room = max_total - (canary.replicas + stable.replicas + others.replicas);
    if next.stable < desired.stable && room > 0 {
        let step = (desired.stable - next.stable).min(room);
        next.stable += step;
        room -= step;
    }
    if next.canary < desired.canary && room > 0 {
        next.canary += (desired.canary - next.canary).min(room);
    }
    if others.replicas > 0 {
        // Superseded pods go first; nothing else shrinks until they have.
        return next;
    }

    // Scale down only what keeps `replicas - unavailable` pods available. Pods that are scaling down
    // already count by their target, not by what is still up.
    let min_available = replicas - unavailable;
    let counted = |rs: Observed| rs.available.min(rs.replicas);
    let growing = desired.canary >= canary.replicas;
    // A canary we are shrinking may have unavailable pods (a crash loop); count it whole so it can
    // still shrink. Stable only ever counts by its available pods: its capacity is what must hold.
    let canary_counted = if growing {
        counted(canary)
    } else {
        canary.replicas
    };
    let stable_counted = counted(stable);
    let mut budget = canary_counted + stable_counted - min_available;
    if budget <= 0 {
        return next;
    }
    if next.canary > desired.canary {
        let step = (next.canary - desired.canary).min(budget);
        next.canary -= step;
        budget -= step;
    }
    if next.stable > desired.stable && budget > 0 {
        next.stable -= (next.stable - desired.stable).min(budget);
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(replicas: i32, available: i32) -> Observed {
        Observed {
            replicas,
            available,
        }
    }

    #[test]
    fn resolves_budgets_like_a_deployment() {
        assert_eq!(surge_and_unavailable(10, None, None), (3, 2));
        assert_eq!(
            surge_and_unavailable(
                10,
                Some(&IntOrString::Int(0)),
                Some(&IntOrString::String("0%".into()))
            ),
            (1, 0)
        );
        assert_eq!(
            surge_and_unavailable(
                4,
                Some(&IntOrString::String("50%".into())),
                Some(&IntOrString::Int(0))
            ),
            (2, 0)
        );
    }

    #[test]
    fn weights_round_both_sides_up() {
        assert_eq!(
            desired_for_weight(10, 10),
            Counts {
                canary: 1,
                stable: 9
            }
        );
        assert_eq!(
            desired_for_weight(10, 5),
            Counts {
                canary: 1,
                stable: 10
            }
        );
        assert_eq!(
            desired_for_weight(1, 95),
            Counts {
                canary: 1,
                stable: 1
            }
        );
        assert_eq!(
            desired_for_weight(4, 0),
            Counts {
                canary: 0,
                stable: 4
            }
        );
        assert_eq!(
            desired_for_weight(4, 100),
            Counts {
                canary: 4,
                stable: 0
            }
        );
    }

    // Cases from the basic-canary arithmetic users know from Argo Rollouts.
    #[test]
    fn moves_within_surge_and_unavailability() {
        let none = Observed::default();
        let next = |r, w, surge, unavail, canary, stable| {
            next_counts(
                r,
                surge,
                unavail,
                desired_for_weight(r, w),
                canary,
                stable,
                none,
            )
        };
        assert_eq!(
            next(10, 10, 1, 1, rs(0, 0), rs(10, 10)),
            Counts {
                canary: 1,
                stable: 9
            }
        );
        assert_eq!(
            next(10, 30, 3, 0, rs(0, 0), rs(10, 10)),
            Counts {
                canary: 3,
                stable: 10
            }
        );
        assert_eq!(
            next(10, 30, 0, 5, rs(0, 0), rs(10, 10)),
            Counts {
                canary: 0,
                stable: 7
            }
        );
        // 5% of 10 rounds stable up to all 10: nothing of stable may go.
        assert_eq!(
            next(10, 5, 1, 1, rs(0, 0), rs(10, 10)),
            Counts {
                canary: 1,
                stable: 10
            }
        );
        assert_eq!(
            next(1, 5, 1, 0, rs(0, 0), rs(1, 1)),
            Counts {
                canary: 1,
                stable: 1
            }
        );
        assert_eq!(
            next(1, 95, 1, 0, rs(0, 0), rs(1, 1)),
            Counts {
                canary: 1,
                stable: 1
            }
        );
    }

    #[test]
    fn keeps_stable_while_the_canary_is_not_available() {
        // Canary pods never become ready: stable must not shrink below replicas - maxUnavailable.
        let next = next_counts(
            4,
            1,
            0,
            desired_for_weight(4, 50),
            rs(2, 0),
            rs(4, 4),
            Observed::default(),
        );
        assert_eq!(next.stable, 4);
    }
}

//! How long an object whose reconcile failed waits before the next try: exponential from one second
//! to five minutes, with jitter so that many objects failing together (an API server restart) do not
//! all come back at once; a reconcile that succeeds starts the object's sequence afresh.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// The first wait after a failure.
const FIRST: Duration = Duration::from_secs(1);
/// The longest wait.
const LONGEST: Duration = Duration::from_secs(300);

/// The backoff of each object that is failing, by kind, namespace and name.
#[derive(Default)]
pub struct Backoffs {
    failing: Mutex<HashMap<(&'static str, String, String), ExponentialBackoff>>,
}

impl Backoffs {
    /// The wait before the next try of an object whose reconcile just failed.
    pub fn failed(&self, kind: &'static str, namespace: &str, name: &str) -> Duration {
        let Ok(mut failing) = self.failing.lock() else {
            return LONGEST;
        };
        failing
            .entry((kind, namespace.to_owned(), name.to_owned()))
            .or_insert_with(|| {
                ExponentialBuilder::new()
                    .with_min_delay(FIRST)
                    .with_max_delay(LONGEST)
                    .with_jitter()
                    .without_max_times()
                    .build()
            })
            .next()
            .unwrap_or(LONGEST)
    }

    /// The object's reconcile succeeded: its next failure waits the shortest time again.
    pub fn succeeded(&self, kind: &'static str, namespace: &str, name: &str) {
        if let Ok(mut failing) = self.failing.lock()
            && !failing.is_empty()
        {
            failing.remove(&(kind, namespace.to_owned(), name.to_owned()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_to_the_longest_and_start_again_after_a_success() {
        let backoffs = Backoffs::default();
        let waits: Vec<Duration> = (0..12)
            .map(|_| backoffs.failed("Rollout", "a", "web"))
            .collect();
        // Jitter adds up to the wait itself on top of it.
        assert!(waits[0] >= FIRST && waits[0] <= FIRST * 2, "{waits:?}");
        assert!(waits[3] >= FIRST * 8, "{waits:?}");
        assert!(waits.iter().all(|w| *w <= LONGEST * 2), "{waits:?}");
        assert!(waits[11] >= LONGEST, "{waits:?}");
        // Another object is not slowed by this one.
        assert!(backoffs.failed("Rollout", "a", "api") <= FIRST * 2);
        backoffs.succeeded("Rollout", "a", "web");
        assert!(backoffs.failed("Rollout", "a", "web") <= FIRST * 2);
    }
}

//! Health checks counted against a policy: the one bake loop, used by a
//! deployment's health gate and by the check a rollback makes of the
//! release it went back to, and the tally the health guard counts with.
//!
//! A deployment's bake watches the whole `bake` window and fails early at
//! `unhealthy_after` consecutive failures; a rollback's check ends as soon
//! as the release is healthy and never fails early (it can only report);
//! the guard counts failures forever. One tally, so "consecutive" means the
//! same thing in all three.

use super::error::CheckResult;
use super::steps::{Runner, StepCall};
use crate::config::HealthConfig;
use crate::runtime::{Health, StepOutcome, StepValue};
use std::time::{Duration, Instant};

/// What a health check's outcome says.
pub(super) fn check_result(outcome: &StepOutcome) -> CheckResult {
    match &outcome.result {
        Ok(StepValue::Health { status, message }) => match status {
            Health::Healthy => CheckResult::Healthy(message.clone()),
            Health::Unhealthy => CheckResult::Unhealthy(message.clone()),
            Health::Unknown => CheckResult::Unknown(message.clone()),
        },
        Ok(other) => CheckResult::Unexpected(format!("{other:?}")),
        Err(e) => CheckResult::Step(e.clone()),
    }
}

/// Consecutive passes and failures of one environment's checks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tally {
    pub passes: u32,
    pub failures: u32,
}

impl Tally {
    /// Count one check: a pass ends a run of failures and the other way round.
    pub fn record(&mut self, result: &CheckResult) {
        if result.is_healthy() {
            self.passes += 1;
            self.failures = 0;
        } else {
            self.passes = 0;
            self.failures += 1;
        }
    }

    /// Forget the runs (the environment changed under the checks).
    pub fn reset(&mut self) {
        *self = Self::default();
    }
}

/// How a bake counts and when it ends.
#[derive(Debug, Clone, Copy)]
pub(super) struct BakePolicy {
    pub interval: Duration,
    /// Checks are made while the next one falls inside this window.
    pub window: Duration,
    /// Consecutive passes that make the release healthy.
    pub healthy_after: u32,
    /// Consecutive failures that end the bake at once; `None`: never.
    pub fail_after: Option<u32>,
    /// End as soon as the release is healthy, instead of watching the
    /// whole window.
    pub done_when_healthy: bool,
}

impl BakePolicy {
    /// A deployment's health gate: the whole `bake` window, failing at
    /// `unhealthy_after` consecutive failures.
    pub fn gate(health: &HealthConfig) -> Self {
        Self {
            interval: health.interval,
            window: health.bake,
            healthy_after: health.healthy_after,
            fail_after: Some(health.unhealthy_after),
            done_when_healthy: false,
        }
    }

    /// After a rollback: until the release it went back to is healthy, at
    /// most the `bake` window; a failure only reports.
    pub fn recheck(health: &HealthConfig) -> Self {
        Self {
            fail_after: None,
            done_when_healthy: true,
            ..Self::gate(health)
        }
    }
}

/// How a bake ended.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum BakeEnd {
    Healthy,
    /// `fail_after` consecutive failures.
    Unhealthy {
        failures: u32,
        last: CheckResult,
    },
    /// The window ended without `healthy_after` consecutive passes.
    NotHealthy {
        passes: u32,
        last: CheckResult,
    },
}

/// Check every `interval` under `policy`; `call` makes attempt N's check.
pub(super) async fn bake<'a>(
    runner: &Runner,
    policy: BakePolicy,
    call: impl Fn(u32) -> StepCall<'a>,
) -> BakeEnd {
    let deadline = Instant::now() + policy.window;
    let mut tally = Tally::default();
    let mut attempt = 0u32;
    let last = loop {
        attempt += 1;
        let outcome = runner.run(&call(attempt)).await;
        let last = check_result(&outcome);
        tally.record(&last);
        if let Some(limit) = policy.fail_after
            && tally.failures >= limit
        {
            return BakeEnd::Unhealthy {
                failures: tally.failures,
                last,
            };
        }
        if policy.done_when_healthy && tally.passes >= policy.healthy_after {
            return BakeEnd::Healthy;
        }
        if Instant::now() + policy.interval > deadline {
            break last;
        }
        tokio::time::sleep(policy.interval).await;
    };
    if tally.passes >= policy.healthy_after {
        BakeEnd::Healthy
    } else {
        BakeEnd::NotHealthy {
            passes: tally.passes,
            last,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_ends_a_run_of_failures_and_the_other_way_round() {
        let (ok, bad) = (
            CheckResult::Healthy("200".into()),
            CheckResult::Unhealthy("503".into()),
        );
        let mut t = Tally::default();
        for r in [&ok, &ok, &bad, &bad] {
            t.record(r);
        }
        assert_eq!(
            t,
            Tally {
                passes: 0,
                failures: 2
            }
        );
        t.record(&ok);
        assert_eq!(
            t,
            Tally {
                passes: 1,
                failures: 0
            }
        );
        t.reset();
        assert_eq!(t, Tally::default());
    }
}

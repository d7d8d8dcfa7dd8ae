//! A deployment's phases as data: a pure transition function from (phase,
//! event) to the next phase and what to report. The driver
//! (`deployment.rs`) does the work of each phase and feeds back how it
//! went; this module decides what comes next. No I/O, no wasmtime: the
//! rules are unit-tested here.
//!
//! Environments are entered in promotion order (`i` is the index).
//!
//! | phase          | event                 | next phase                                     | reported                  |
//! |----------------|-----------------------|------------------------------------------------|---------------------------|
//! | `Build`        | passed                | enter env 0                                    |                           |
//! | `Build`        | failed                | `End(Failed)`                                  | `build` failed            |
//! | enter env `i`  |                       | `Approve(i)` if manual, else `PreDeploy(i)`; past the last: `End(Succeeded)` | |
//! | `Approve(i)`   | passed (approved)     | `PreDeploy(i)`                                 |                           |
//! | `Approve(i)`   | cancelled             | `End(Cancelled)`                               | `i` cancelled             |
//! | `PreDeploy(i)` | passed                | `Activate(i)`                                  | `i` started               |
//! | `PreDeploy(i)` | failed                | `End(Failed)`: `i` untouched                   | `i` failed                |
//! | `Activate(i)`  | passed                | `Smoke(i)`, else `Bake(i)`, else `MarkGood(i)` |                           |
//! | `Smoke(i)`     | passed                | `Bake(i)`, else `MarkGood(i)`                  |                           |
//! | `Bake(i)`      | passed                | `MarkGood(i)`                                  |                           |
//! | `MarkGood(i)`  | passed                | enter env `i + 1`                              | `i` succeeded, promoted   |
//! | a gate of `i`  | failed                | `RollBack(i)`; with `on_failure = "stop"`: `End(Failed)` | (stop: `i` failed) |
//! | `RollBack(i)`  | passed                | `End(RolledBack)`                              | `i` rolled-back           |
//! | `RollBack(i)`  | failed                | `End(Failed)`: not rolled back                 | `i` failed                |
//!
//! The gates of an environment are `Activate`, `Smoke`, `Bake` and
//! `MarkGood` (recording it as good). A deployment that ends `Failed` or
//! `RolledBack` is pinned by the driver; `Cancelled` is not (nothing failed).

use super::error::{BuildError, Cancelled, DeploymentError, GateFailure, RollbackError};
use crate::config::{AppConfig, OnFailure, Promote};
use crate::runtime::StepError;
use crate::vocab::EnvOutcome;

/// What the machine needs to know of each environment, in promotion order.
#[derive(Debug, Clone)]
pub(super) struct EnvPlan {
    pub name: String,
    /// A manual gate (`promote = "manual"`) before it.
    pub manual: bool,
    pub smoke: bool,
    pub health: bool,
    /// `on_failure = "rollback"` (else a failed gate leaves it in place).
    pub roll_back: bool,
}

/// The environments of one deployment.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    pub envs: Vec<EnvPlan>,
}

impl Plan {
    pub fn of(app: &AppConfig) -> Self {
        let envs = app
            .environments
            .iter()
            .map(|e| EnvPlan {
                name: e.name.clone(),
                manual: e.promote == Promote::Manual,
                smoke: e.smoke.is_some(),
                health: e.health.is_some(),
                roll_back: e.on_failure == OnFailure::Rollback,
            })
            .collect();
        Self { envs }
    }

    fn enter(&self, i: usize) -> Phase {
        match self.envs.get(i) {
            None => Phase::End(End::Succeeded),
            Some(env) if env.manual => Phase::Approve(i),
            Some(_) => Phase::PreDeploy(i),
        }
    }

    fn after_activate(&self, i: usize) -> Phase {
        if self.envs[i].smoke {
            Phase::Smoke(i)
        } else {
            self.after_smoke(i)
        }
    }

    fn after_smoke(&self, i: usize) -> Phase {
        if self.envs[i].health {
            Phase::Bake(i)
        } else {
            Phase::MarkGood(i)
        }
    }
}

/// Where a deployment is; the driver does the phase's work.
#[derive(Debug)]
pub(super) enum Phase {
    /// Place the source and run the build step.
    Build,
    /// Wait at environment `i`'s manual gate.
    Approve(usize),
    /// Run `i`'s `pre_deploy` steps (none: passes at once).
    PreDeploy(usize),
    /// The deploy step and the supervised process of `i`.
    Activate(usize),
    Smoke(usize),
    Bake(usize),
    /// Record the release as `i`'s last good one.
    MarkGood(usize),
    /// Put `i` back on its last good release after a failed gate.
    RollBack(usize, GateFailure),
    End(End),
}

impl Phase {
    /// The environment the phase is about, if any.
    pub fn env(&self) -> Option<usize> {
        match self {
            Phase::Approve(i)
            | Phase::PreDeploy(i)
            | Phase::Activate(i)
            | Phase::Smoke(i)
            | Phase::Bake(i)
            | Phase::MarkGood(i)
            | Phase::RollBack(i, _) => Some(*i),
            Phase::Build | Phase::End(_) => None,
        }
    }
}

/// How a deployment ended.
#[derive(Debug)]
pub(super) enum End {
    Succeeded,
    /// Not rolled back (nothing to roll back, or it could not be).
    Failed(DeploymentError),
    /// A gate failed; that environment is back on its last good release.
    RolledBack(DeploymentError),
    /// A manual gate was not passed.
    Cancelled(Cancelled),
}

/// How a phase's work went.
#[derive(Debug)]
pub(super) enum Event {
    Passed,
    Failed(Failure),
    /// A manual gate timed out or was superseded.
    Cancelled(Cancelled),
}

/// What failed, as the phase's work reports it.
#[derive(Debug)]
pub(super) enum Failure {
    Build(BuildError),
    PreDeploy {
        index: usize,
        plugin: String,
        error: StepError,
    },
    Gate(GateFailure),
    Rollback(RollbackError),
}

/// Something to count or tell on the way (never an action).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Report {
    /// `slipway_deployments_total` of environment `env` (`None`: the build).
    Outcome {
        env: Option<usize>,
        outcome: EnvOutcome,
    },
    /// Environment `i` passed its gates (a `promoted` notification).
    Promoted(usize),
}

fn outcome(env: Option<usize>, outcome: EnvOutcome) -> Report {
    Report::Outcome { env, outcome }
}

/// The next phase after `event` in `phase`, and what to report.
pub(super) fn next(plan: &Plan, phase: Phase, event: Event) -> (Phase, Vec<Report>) {
    use EnvOutcome as O;
    let name = |i: usize| plan.envs[i].name.clone();
    match (phase, event) {
        (Phase::Build, Event::Passed) => (plan.enter(0), vec![]),
        (Phase::Build, Event::Failed(Failure::Build(e))) => (
            Phase::End(End::Failed(e.into())),
            vec![outcome(None, O::Failed)],
        ),
        (Phase::Approve(i), Event::Passed) => (Phase::PreDeploy(i), vec![]),
        (Phase::Approve(i), Event::Cancelled(why)) => (
            Phase::End(End::Cancelled(why)),
            vec![outcome(Some(i), O::Cancelled)],
        ),
        (Phase::PreDeploy(i), Event::Passed) => {
            (Phase::Activate(i), vec![outcome(Some(i), O::Started)])
        }
        (
            Phase::PreDeploy(i),
            Event::Failed(Failure::PreDeploy {
                index,
                plugin,
                error,
            }),
        ) => {
            let e = DeploymentError::PreDeploy {
                env: name(i),
                index,
                plugin,
                error,
            };
            (
                Phase::End(End::Failed(e)),
                vec![outcome(Some(i), O::Failed)],
            )
        }
        (Phase::Activate(i), Event::Passed) => (plan.after_activate(i), vec![]),
        (Phase::Smoke(i), Event::Passed) => (plan.after_smoke(i), vec![]),
        (Phase::Bake(i), Event::Passed) => (Phase::MarkGood(i), vec![]),
        (Phase::MarkGood(i), Event::Passed) => (
            plan.enter(i + 1),
            vec![outcome(Some(i), O::Succeeded), Report::Promoted(i)],
        ),
        (
            Phase::Activate(i) | Phase::Smoke(i) | Phase::Bake(i) | Phase::MarkGood(i),
            Event::Failed(Failure::Gate(gate)),
        ) => {
            if plan.envs[i].roll_back {
                (Phase::RollBack(i, gate), vec![])
            } else {
                let e = DeploymentError::NotRolledBack {
                    env: name(i),
                    gate,
                    why: RollbackError::LeftInPlace,
                };
                (
                    Phase::End(End::Failed(e)),
                    vec![outcome(Some(i), O::Failed)],
                )
            }
        }
        (Phase::RollBack(i, gate), Event::Passed) => (
            Phase::End(End::RolledBack(DeploymentError::Gate {
                env: name(i),
                gate,
            })),
            vec![outcome(Some(i), O::RolledBack)],
        ),
        (Phase::RollBack(i, gate), Event::Failed(Failure::Rollback(why))) => {
            let e = DeploymentError::NotRolledBack {
                env: name(i),
                gate,
                why,
            };
            (
                Phase::End(End::Failed(e)),
                vec![outcome(Some(i), O::Failed)],
            )
        }
        (Phase::End(end), _) => (Phase::End(end), vec![]),
        (phase, event) => {
            let env = phase.env();
            let e = DeploymentError::Internal(format!("{phase:?} cannot take {event:?}"));
            (Phase::End(End::Failed(e)), vec![outcome(env, O::Failed)])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::error::{AppLog, StopCause};

    fn env(name: &str, manual: bool, roll_back: bool) -> EnvPlan {
        EnvPlan {
            name: name.into(),
            manual,
            smoke: true,
            health: true,
            roll_back,
        }
    }

    fn plan() -> Plan {
        Plan {
            envs: vec![env("staging", false, true), env("production", true, true)],
        }
    }

    fn smoke_failed() -> Event {
        Event::Failed(Failure::Gate(GateFailure::Smoke {
            error: StepError::Failed("expected 200, got 500".into()),
            app_log: AppLog::default(),
        }))
    }

    /// Feed `events` from `Build`; the phases passed through (as their
    /// `Debug` names) and every report.
    fn walk(plan: &Plan, events: Vec<Event>) -> (Vec<String>, Vec<Report>, Phase) {
        let mut phase = Phase::Build;
        let (mut seen, mut reports) = (vec![short(&phase)], vec![]);
        for event in events {
            let (p, r) = next(plan, phase, event);
            phase = p;
            seen.push(short(&phase));
            reports.extend(r);
        }
        (seen, reports, phase)
    }

    fn short(phase: &Phase) -> String {
        match phase {
            Phase::RollBack(i, _) => format!("RollBack({i})"),
            Phase::End(end) => format!("End({})", format!("{end:?}").split('(').next().unwrap()),
            other => format!("{other:?}"),
        }
    }

    #[test]
    fn a_release_passes_every_gate_of_every_environment_in_order() {
        let (seen, reports, end) = walk(&plan(), (0..12).map(|_| Event::Passed).collect());
        assert_eq!(
            seen,
            [
                "Build",
                "PreDeploy(0)",
                "Activate(0)",
                "Smoke(0)",
                "Bake(0)",
                "MarkGood(0)",
                "Approve(1)",
                "PreDeploy(1)",
                "Activate(1)",
                "Smoke(1)",
                "Bake(1)",
                "MarkGood(1)",
                "End(Succeeded)",
            ]
        );
        use EnvOutcome as O;
        assert_eq!(
            reports,
            [
                outcome(Some(0), O::Started),
                outcome(Some(0), O::Succeeded),
                Report::Promoted(0),
                outcome(Some(1), O::Started),
                outcome(Some(1), O::Succeeded),
                Report::Promoted(1),
            ]
        );
        assert!(matches!(end, Phase::End(End::Succeeded)));
    }

    #[test]
    fn an_environment_without_smoke_or_health_goes_straight_to_good() {
        let plan = Plan {
            envs: vec![EnvPlan {
                smoke: false,
                health: false,
                ..env("staging", false, true)
            }],
        };
        let (seen, _, _) = walk(&plan, (0..4).map(|_| Event::Passed).collect());
        assert_eq!(
            seen,
            [
                "Build",
                "PreDeploy(0)",
                "Activate(0)",
                "MarkGood(0)",
                "End(Succeeded)"
            ]
        );
    }

    #[test]
    fn a_failed_gate_rolls_that_environment_back_and_stops_there() {
        let events = vec![Event::Passed, Event::Passed, Event::Passed, smoke_failed()];
        let (seen, reports, end) = walk(&plan(), events);
        assert_eq!(seen.last().unwrap(), "RollBack(0)");
        let (end, more) = next(&plan(), end, Event::Passed);
        let Phase::End(End::RolledBack(e)) = end else {
            panic!("{end:?}")
        };
        assert_eq!(
            e.to_string(),
            "staging: smoke test failed: expected 200, got 500"
        );
        assert_eq!(reports, [outcome(Some(0), EnvOutcome::Started)]);
        assert_eq!(more, [outcome(Some(0), EnvOutcome::RolledBack)]);
    }

    #[test]
    fn a_rollback_that_cannot_be_done_ends_failed_with_both_reasons() {
        let events = vec![Event::Passed, Event::Passed, Event::Passed, smoke_failed()];
        let (_, _, phase) = walk(&plan(), events);
        let why = RollbackError::Stopped {
            env: "staging".into(),
            why: StopCause::NoGoodRelease,
        };
        let (end, reports) = next(&plan(), phase, Event::Failed(Failure::Rollback(why)));
        let Phase::End(End::Failed(e)) = end else {
            panic!("{end:?}")
        };
        assert_eq!(
            e.to_string(),
            "staging: smoke test failed: expected 200, got 500\nnot rolled back: no earlier good release; staging was stopped"
        );
        assert_eq!(reports, [outcome(Some(0), EnvOutcome::Failed)]);
    }

    #[test]
    fn on_failure_stop_leaves_the_release_in_place() {
        let plan = Plan {
            envs: vec![env("staging", false, false)],
        };
        let events = vec![Event::Passed, Event::Passed, Event::Passed, smoke_failed()];
        let (_, reports, end) = walk(&plan, events);
        let Phase::End(End::Failed(e)) = end else {
            panic!("{end:?}")
        };
        assert!(
            e.to_string()
                .ends_with("\nnot rolled back: on_failure = stop: the release was left in place"),
            "{e}"
        );
        assert_eq!(reports.last(), Some(&outcome(Some(0), EnvOutcome::Failed)));
    }

    #[test]
    fn a_failed_build_or_pre_deploy_touches_no_environment() {
        let build = Event::Failed(Failure::Build(BuildError::Step(StepError::Failed(
            "cargo: 1 test failed".into(),
        ))));
        let (seen, reports, end) = walk(&plan(), vec![build]);
        assert_eq!(seen, ["Build", "End(Failed)"]);
        assert_eq!(reports, [outcome(None, EnvOutcome::Failed)]);
        let Phase::End(End::Failed(e)) = end else {
            panic!()
        };
        assert!(matches!(e, DeploymentError::Build(BuildError::Step(_))));

        let pre = Event::Failed(Failure::PreDeploy {
            index: 0,
            plugin: "migrate".into(),
            error: StepError::Failed("no such column".into()),
        });
        let (seen, _, end) = walk(&plan(), vec![Event::Passed, pre]);
        assert_eq!(seen.last().unwrap(), "End(Failed)");
        let Phase::End(End::Failed(e)) = end else {
            panic!()
        };
        assert_eq!(
            e.to_string(),
            "staging: pre_deploy[0] (migrate) failed, release not activated: no such column"
        );
    }

    #[test]
    fn a_manual_gate_not_passed_cancels_without_touching_the_environment() {
        let mut events: Vec<Event> = (0..6).map(|_| Event::Passed).collect();
        events.push(Event::Cancelled(Cancelled::NotApproved {
            env: "production".into(),
            within: std::time::Duration::from_secs(1),
        }));
        let (seen, reports, end) = walk(&plan(), events);
        assert_eq!(&seen[seen.len() - 2..], ["Approve(1)", "End(Cancelled)"]);
        assert_eq!(
            reports.last(),
            Some(&outcome(Some(1), EnvOutcome::Cancelled))
        );
        let Phase::End(End::Cancelled(why)) = end else {
            panic!("{end:?}")
        };
        assert_eq!(
            why.to_string(),
            "production: not approved within 1 s; production was not touched"
        );
    }

    #[test]
    fn an_event_a_phase_cannot_take_ends_the_deployment_instead_of_guessing() {
        let (end, reports) = next(&plan(), Phase::Build, smoke_failed());
        let Phase::End(End::Failed(DeploymentError::Internal(why))) = end else {
            panic!("{end:?}")
        };
        assert!(why.starts_with("Build cannot take Failed(Gate("), "{why}");
        assert_eq!(reports, [outcome(None, EnvOutcome::Failed)]);
        // An ended deployment stays ended.
        let (end, reports) = next(&plan(), Phase::End(End::Succeeded), Event::Passed);
        assert!(matches!(end, Phase::End(End::Succeeded)) && reports.is_empty());
    }
}

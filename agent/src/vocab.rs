//! The words Slipway uses for what happened: one spelling each, shared by
//! the journal, `/metrics` labels, the API, the CLI and notifications.
//!
//! Every state and outcome the agent records is an enum here, and each enum
//! is declared once with its word (the [`vocabulary!`] macro), which gives
//! it `as_str`, `parse`, `Display`, `FromStr`, serde and SQLite encodings
//! from that one table. Code compares the enums, never the words; a word
//! changes in one place or not at all (the journal stores them, so a word
//! already written is kept readable for ever).
//!
//! It is the bottom of the crate's layering: it knows nothing of the
//! engine, the runtime or the store, which all use it.

/// Declares an enum whose variants are written as fixed words.
macro_rules! vocabulary {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => $word:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The word written for it, everywhere.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $word, )+
                }
            }

            /// The value written as `word`, if any.
            pub fn parse(word: &str) -> Option<Self> {
                match word {
                    $( $word => Some($name::$variant), )+
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownWord;
            fn from_str(word: &str) -> Result<Self, UnknownWord> {
                Self::parse(word).ok_or_else(|| UnknownWord {
                    what: stringify!($name),
                    word: word.to_string(),
                    known: Self::ALL.iter().map(|v| v.as_str()).collect(),
                })
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let word = String::deserialize(d)?;
                word.parse().map_err(serde::de::Error::custom)
            }
        }

        impl rusqlite::ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
                Ok(rusqlite::types::ToSqlOutput::from(self.as_str()))
            }
        }

        impl rusqlite::types::FromSql for $name {
            fn column_result(
                value: rusqlite::types::ValueRef<'_>,
            ) -> rusqlite::types::FromSqlResult<Self> {
                let word = value.as_str()?;
                word.parse()
                    .map_err(|e: UnknownWord| rusqlite::types::FromSqlError::Other(e.into()))
            }
        }
    };
}

/// A word that names none of an enum's values (a journal written by a
/// newer agent, a hand-edited file, an API client's typo).
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown {what} `{word}` (known: {})", known.join(", "))]
pub struct UnknownWord {
    pub what: &'static str,
    pub word: String,
    pub known: Vec<&'static str>,
}

vocabulary! {
    /// Where a deployment is; `running` until it ends one of the other ways.
    pub enum DeploymentState {
        /// Started and not yet ended (after a crash: interrupted, see recovery).
        Running => "running",
        /// Every environment passed its gates.
        Succeeded => "succeeded",
        /// A step or gate failed; `reason` says which.
        Failed => "failed",
        /// A gate failed and that environment was put back on its last good
        /// release; `reason` says which gate and why.
        RolledBack => "rolled-back",
        /// The agent stopped while it ran; found and closed at start-up.
        Interrupted => "interrupted",
        /// Stopped at a manual gate: not approved in time, or superseded by a
        /// newer config. The environments past the gate were not touched.
        Cancelled => "cancelled",
    }
}

vocabulary! {
    /// Why an environment's current release changed: the journal's history
    /// of an environment (`slipway history APP --env ENV`).
    pub enum EnvChange {
        /// A deployment put a new release in place (its gates follow).
        Activating => "activating",
        /// A failed gate, the health guard or an operator put it back on a
        /// good release.
        RolledBack => "rolled-back",
        /// Start-up found a release that had not passed its gates and put
        /// the last good one back.
        RolledBackInRecovery => "rolled-back (recovery)",
        /// A rollback found nothing good to go back to, and stopped it.
        Stopped => "stopped",
        /// Start-up found a release that had not passed its gates and no
        /// good one before it.
        StoppedInRecovery => "stopped (recovery)",
        /// Start-up could not start the release it ran.
        StoppedCouldNotStart => "stopped (could not start)",
        /// Start-up found the release's directory gone.
        StoppedReleaseMissing => "stopped (release directory missing)",
    }
}

vocabulary! {
    /// How one step ended: the journal's step outcome and the `result`
    /// label of `slipway_step_duration_seconds` and `slipway_health_checks`.
    pub enum Verdict {
        /// A step other than a health check succeeded.
        Ok => "ok",
        /// A health check passed.
        Healthy => "healthy",
        /// A health check failed.
        Unhealthy => "unhealthy",
        /// A health check could not tell.
        Unknown => "unknown",
        /// The plugin returned an error.
        Failed => "failed",
        /// The step ran out of wall time.
        Timeout => "timeout",
        /// The step hit a memory or resource limit.
        Limit => "limit",
        /// The plugin trapped.
        Trap => "trap",
        /// The step could not run (setup, bad output).
        Error => "error",
        /// The agent stopped during the step.
        Interrupted => "interrupted",
    }
}

vocabulary! {
    /// What happened to one environment in a deployment: the `state` label
    /// of `slipway_deployments_total`.
    pub enum EnvOutcome {
        /// The release's activation began.
        Started => "started",
        /// It passed its gates.
        Succeeded => "succeeded",
        /// A step or gate failed and it was not rolled back.
        Failed => "failed",
        /// A gate or the health guard failed and it was put back on a good
        /// release (or an operator rolled it back).
        RolledBack => "rolled-back",
        /// A manual gate before it was not passed.
        Cancelled => "cancelled",
    }
}

vocabulary! {
    /// A deployment's state change as `notify` steps see it (`event.state`).
    pub enum NotifyState {
        /// A deployment of a new version started (before its build).
        Started => "started",
        /// An environment passed its gates and runs the new release.
        Promoted => "promoted",
        /// The deployment waits at an environment's manual gate.
        WaitingApproval => "waiting-approval",
        /// Every environment runs the new release.
        Succeeded => "succeeded",
        /// The deployment failed; nothing was rolled back.
        Failed => "failed",
        /// An environment was put back on its last good release (a failed
        /// gate, the health guard, or an operator).
        RolledBack => "rolled-back",
        /// A manual gate was not passed (timeout, or a newer config).
        Cancelled => "cancelled",
    }
}

vocabulary! {
    /// What a step was for: the journal's step kind and the `kind` label of
    /// `slipway_step_duration_seconds`. Several roles call the same plugin
    /// world (a `pre-deploy` step is a deploy-kind plugin).
    pub enum StepRole {
        Build => "build",
        /// A `pre_deploy` step, before the environment is touched.
        PreDeploy => "pre-deploy",
        Deploy => "deploy",
        SmokeTest => "smoke-test",
        /// A health check of a bake or of the guard.
        HealthCheck => "health-check",
        /// A health check of the release a rollback went back to.
        RollbackCheck => "rollback-check",
        Rollback => "rollback",
        /// An `on_rollback` step, after the failed release stopped.
        OnRollback => "on-rollback",
        Notify => "notify",
    }
}

impl NotifyState {
    /// How a deployment that tried a rollback ended: `rolled-back` if the
    /// environment is back on a good release, `failed` if not.
    pub fn after_rollback(rolled_back: bool) -> Self {
        if rolled_back {
            NotifyState::RolledBack
        } else {
            NotifyState::Failed
        }
    }
}

impl EnvOutcome {
    /// The outcome of an environment whose failed gate tried a rollback.
    pub fn after_rollback(rolled_back: bool) -> Self {
        if rolled_back {
            EnvOutcome::RolledBack
        } else {
            EnvOutcome::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_word_reads_back_as_its_value() {
        fn round_trip<T>(all: &[T])
        where
            T: Copy + PartialEq + std::fmt::Debug + std::str::FromStr + std::fmt::Display,
        {
            for v in all {
                let word = v.to_string();
                assert_eq!(word.parse::<T>().ok(), Some(*v), "{word}");
            }
        }
        round_trip(DeploymentState::ALL);
        round_trip(EnvChange::ALL);
        round_trip(Verdict::ALL);
        round_trip(EnvOutcome::ALL);
        round_trip(NotifyState::ALL);
        round_trip(StepRole::ALL);
    }

    #[test]
    fn one_spelling_for_a_rollback_in_the_journal_metrics_and_notifications() {
        let words = [
            DeploymentState::RolledBack.as_str(),
            EnvChange::RolledBack.as_str(),
            EnvOutcome::RolledBack.as_str(),
            NotifyState::RolledBack.as_str(),
        ];
        assert!(words.iter().all(|w| *w == "rolled-back"), "{words:?}");
    }

    #[test]
    fn an_unknown_word_is_named_with_the_known_ones() {
        let e = "rolled_back".parse::<DeploymentState>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown DeploymentState `rolled_back` (known: running, succeeded, failed, rolled-back, interrupted, cancelled)"
        );
        let json = serde_json::to_string(&Verdict::Healthy).unwrap();
        assert_eq!(json, "\"healthy\"");
        assert_eq!(
            serde_json::from_str::<Verdict>(&json).unwrap(),
            Verdict::Healthy
        );
    }
}

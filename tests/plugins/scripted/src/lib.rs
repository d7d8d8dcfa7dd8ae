//! Test fixture: a build, deploy, smoke-test and health-check plugin whose
//! outcome is scripted by its params, so the engine's state-machine test
//! (`tests/e2e/model.rs`) can drive every way a real step ends: `pass`,
//! `fail`, `trap` (a panic) or `timeout` (a loop the step's time limit stops).
//!
//! The artifact is real: `build` writes `artifact.txt` naming the release
//! into the release dir, and every other step checks it is there and names
//! the release it is told about before it passes, so a step run on a release
//! that was never built (or on the wrong one) fails.

use slipway_plugin_sdk::Release;
use slipway_plugin_sdk::prelude::*;

struct Scripted;

#[derive(Deserialize)]
struct Params {
    outcome: Outcome,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Outcome {
    Pass,
    Fail,
    Trap,
    Timeout,
}

impl Plugin for Scripted {
    const NAME: &'static str = "scripted";
    const DESCRIPTION: &'static str =
        "Ends each step as its params say: pass, fail, trap or timeout.";
    type Params = Params;
    fn params_schema() -> Value {
        json!({
            "type": "object",
            "required": ["outcome"],
            "additionalProperties": false,
            "properties": {
                "outcome": { "enum": ["pass", "fail", "trap", "timeout"] }
            }
        })
    }
}

/// The artifact's file in a release dir, and what it says for a release.
const ARTIFACT: &str = "artifact.txt";

fn artifact_text(release: &Release) -> String {
    format!("{} {}\n", release.version, release.id)
}

/// Fail, trap or loop as scripted; `Ok` for `pass`.
fn script(outcome: Outcome, step: &str) -> Result<(), String> {
    match outcome {
        Outcome::Pass => Ok(()),
        Outcome::Fail => Err(format!("{step}: scripted to fail")),
        Outcome::Trap => panic!("{step}: scripted to trap"),
        Outcome::Timeout => loop {
            // Only the step's wall-time limit (epoch interruption) ends it.
            std::hint::spin_loop();
        },
    }
}

/// The release's artifact is there and names it.
fn check_artifact(ctx: &StepContext) -> Result<(), String> {
    let path = format!("{}/{ARTIFACT}", ctx.release.dir);
    let found = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let expected = artifact_text(&ctx.release);
    if found != expected {
        return Err(format!(
            "{path} says {found:?}, not {expected:?}: not this release's artifact"
        ));
    }
    Ok(())
}

impl Build for Scripted {
    fn build(ctx: &StepContext, p: Params) -> Result<Artifact, String> {
        script(p.outcome, "build")?;
        let path = format!("{}/{ARTIFACT}", ctx.release.dir);
        std::fs::write(&path, artifact_text(&ctx.release)).map_err(|e| format!("{path}: {e}"))?;
        Ok(Artifact {
            dir: ctx.release.dir.clone(),
            metadata: vec![("artifact".into(), ARTIFACT.into())],
        })
    }
}

impl Deploy for Scripted {
    fn deploy(ctx: &StepContext, p: Params) -> Result<(), String> {
        check_artifact(ctx)?;
        script(p.outcome, "deploy")
    }
}

impl SmokeTest for Scripted {
    fn smoke_test(ctx: &StepContext, p: Params) -> Result<String, String> {
        check_artifact(ctx)?;
        script(p.outcome, "smoke-test")?;
        Ok(format!("{} passed", ctx.release.id))
    }
}

impl HealthCheck for Scripted {
    fn check(ctx: &StepContext, p: Params) -> HealthReport {
        if let Err(e) = check_artifact(ctx) {
            return HealthReport::unhealthy(e);
        }
        match script(p.outcome, "health-check") {
            Ok(()) => HealthReport::healthy(format!("{} healthy", ctx.release.id)),
            Err(e) => HealthReport::unhealthy(e),
        }
    }
}

slipway_plugin_sdk::export!(Scripted: build, deploy, smoke_test, health_check);

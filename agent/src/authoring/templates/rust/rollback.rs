//! `{{name}}`: a Slipway rollback plugin, written with the Rust SDK.
//!
//! The agent calls `rollback` to return an environment to its previous
//! release after a failed gate, when the health guard trips, or when a
//! person runs `slipway rollback`. This one runs `program` with `args`, with
//! the release to return to in its environment (`SLIPWAY_PREVIOUS_VERSION`,
//! `SLIPWAY_PREVIOUS_RELEASE_DIR`); the program must be in the plugin's
//! `grants.exec`. Replace it with your own.

use slipway_plugin_sdk::prelude::*;

/// The step's `params` from the config. The agent has already checked them
/// against `params_schema()`, so deserializing only fails if the two
/// disagree.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    program: String,
    #[serde(default)]
    args: Vec<String>,
}

struct {{type}};

impl Plugin for {{type}} {
    const NAME: &'static str = "{{name}}";
    const DESCRIPTION: &'static str =
        "Returns an environment to its previous release by running a program.";
    type Params = Params;

    fn params_schema() -> Value {
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["program"],
            "properties": {
                "program": { "type": "string", "minLength": 1, "description": "program to run; must be in grants.exec" },
                "args": { "type": "array", "items": { "type": "string" }, "default": [] }
            }
        })
    }
}

impl Rollback for {{type}} {
    fn rollback(ctx: &StepContext, p: Params) -> Result<(), String> {
        let previous = ctx
            .previous_release
            .as_ref()
            .ok_or("there is no previous release to return to")?;
        let environment = ctx.environment.clone().unwrap_or_default();
        log::with(
            log::Level::Info,
            "rolling back",
            &[
                ("to", previous.version.as_str()),
                ("environment", environment.as_str()),
            ],
        );
        let out = exec::Command::new(&p.program)
            .args(&p.args)
            .env("SLIPWAY_APP", &ctx.app)
            .env("SLIPWAY_ENVIRONMENT", &environment)
            .env("SLIPWAY_VERSION", &ctx.release.version)
            .env("SLIPWAY_PREVIOUS_VERSION", &previous.version)
            .env("SLIPWAY_PREVIOUS_RELEASE_DIR", &previous.dir)
            .run()
            .map_err(|e| format!("{}: {e}", p.program))?;
        if !out.success() {
            return Err(format!(
                "{}: {}\n{}",
                p.program,
                out.status_text(),
                out.tail(20)
            ));
        }
        log::info(&out.tail(5));
        Ok(())
    }
}

slipway_plugin_sdk::export!({{type}}: rollback);

//! `{{name}}`: a Slipway deploy plugin, written with the Rust SDK.
//!
//! The agent calls `deploy` to activate a release in an environment, before
//! the app's `run` process (if any) is restarted. This one runs `program`
//! with `args` in the release directory, with the release in its environment
//! (`SLIPWAY_VERSION`, `SLIPWAY_RELEASE_DIR`, `SLIPWAY_ENVIRONMENT`); the
//! program must be in the plugin's `grants.exec`. Replace it with your own.

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
    const DESCRIPTION: &'static str = "Activates a release by running a program.";
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

impl Deploy for {{type}} {
    fn deploy(ctx: &StepContext, p: Params) -> Result<(), String> {
        let environment = ctx.environment.clone().unwrap_or_default();
        log::with(
            log::Level::Info,
            "deploying",
            &[
                ("version", ctx.release.version.as_str()),
                ("environment", environment.as_str()),
            ],
        );
        let out = exec::Command::new(&p.program)
            .args(&p.args)
            .env("SLIPWAY_APP", &ctx.app)
            .env("SLIPWAY_ENVIRONMENT", &environment)
            .env("SLIPWAY_VERSION", &ctx.release.version)
            .env("SLIPWAY_RELEASE_DIR", &ctx.release.dir)
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

slipway_plugin_sdk::export!({{type}}: deploy);

//! `{{name}}`: a Slipway build plugin, written with the Rust SDK.
//!
//! The agent calls `build` once per release, in the release directory (a copy
//! of the app's source, writable for this step only); the same artifact is
//! then promoted through every environment. This one runs `program` with
//! `args` there; the program must be in the plugin's `grants.exec`. Replace
//! it with your own.

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
    const DESCRIPTION: &'static str = "Builds a release by running a program in its directory.";
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

impl Build for {{type}} {
    fn build(ctx: &StepContext, p: Params) -> Result<Artifact, String> {
        log::with(
            log::Level::Info,
            "building",
            &[
                ("version", ctx.release.version.as_str()),
                ("program", p.program.as_str()),
            ],
        );
        let out = exec::Command::new(&p.program)
            .args(&p.args)
            .env("SLIPWAY_APP", &ctx.app)
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
        Ok(Artifact {
            dir: ctx.release.dir.clone(),
            metadata: vec![(
                "built-by".into(),
                format!("{} {}", p.program, p.args.join(" ")),
            )],
        })
    }
}

slipway_plugin_sdk::export!({{type}}: build);

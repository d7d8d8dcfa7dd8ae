//! `command`: build, deploy and roll back by running the commands its params
//! list, in order, in the release directory.
//!
//! Each program must be in the plugin's `exec` grant. The first command that
//! exits non-zero (or times out) fails the step, with the tail of its output
//! in the error so the operator sees why without digging; a command that
//! succeeds leaves the tail of its output in the step's log.
//!
//! `secret_env` hands granted secrets to the commands as environment
//! variables (`{ PGPASSWORD = "db-password" }`): how a pre-deploy backup or
//! migration gets its password without it being written in the config. The
//! agent redacts the values from the output it records.

use slipway_plugin_sdk::prelude::*;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    /// Commands, each a string ("cargo build --release", split on spaces,
    /// with "double quotes" kept together) or an argv array.
    run: Vec<CommandLine>,
    /// Working directory relative to the release dir.
    #[serde(default)]
    cwd: Option<String>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, String>,
    /// Environment variable -> name of a secret granted to the plugin.
    #[serde(default)]
    secret_env: std::collections::BTreeMap<String, String>,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u32,
    /// For builds: the artifact directory, relative to the release dir.
    #[serde(default)]
    artifact: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum CommandLine {
    Line(String),
    Argv(Vec<String>),
}

fn default_timeout_ms() -> u32 {
    10 * 60 * 1000
}

impl CommandLine {
    fn argv(&self) -> Result<Vec<String>, String> {
        let argv = match self {
            CommandLine::Argv(argv) => argv.clone(),
            CommandLine::Line(line) => split(line)?,
        };
        if argv.is_empty() {
            return Err("empty command".into());
        }
        Ok(argv)
    }
}

/// Split a command line on whitespace, keeping "double quoted" parts whole.
fn split(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return Err(format!("unclosed quote in {line:?}"));
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

struct Command;

impl Plugin for Command {
    const NAME: &'static str = "command";
    const DESCRIPTION: &'static str =
        "Runs allowlisted commands in the release directory; fails on the first non-zero exit.";
    type Params = Params;

    fn params_schema() -> Value {
        json!({
            "type": "object",
            "additionalProperties": false,
            "required": ["run"],
            "properties": {
                "run": {
                    "type": "array", "minItems": 1,
                    "items": { "oneOf": [
                        { "type": "string", "minLength": 1 },
                        { "type": "array", "minItems": 1, "items": { "type": "string" } }
                    ] }
                },
                "cwd": { "type": "string" },
                "env": { "type": "object", "additionalProperties": { "type": "string" } },
                "secret_env": {
                    "description": "environment variable -> name of a secret in the plugin's grants.secrets",
                    "type": "object",
                    "additionalProperties": { "type": "string", "minLength": 1 }
                },
                "timeout_ms": { "type": "integer", "minimum": 1 },
                "artifact": { "type": "string" }
            }
        })
    }
}

fn run_all(ctx: &StepContext, p: &Params) -> Result<(), String> {
    let cwd = match &p.cwd {
        Some(dir) => format!("{}/{dir}", ctx.release.dir),
        None => ctx.release.dir.clone(),
    };
    let mut secrets = Vec::new();
    for (var, name) in &p.secret_env {
        let value = secret(name).map_err(|e| format!("secret_env.{var}: {e}"))?;
        secrets.push((var, value));
    }
    for line in &p.run {
        let argv = line.argv()?;
        let shown = argv.join(" ");
        log::with(log::Level::Info, "running", &[("command", &shown)]);
        let mut command = exec::Command::new(&argv[0])
            .args(&argv[1..])
            .cwd(&cwd)
            .timeout_ms(p.timeout_ms)
            .env("SLIPWAY_APP", &ctx.app)
            .env("SLIPWAY_VERSION", &ctx.release.version)
            .env("SLIPWAY_RELEASE_ID", &ctx.release.id)
            .env("SLIPWAY_RELEASE_DIR", &ctx.release.dir);
        if let Some(env) = &ctx.environment {
            command = command.env("SLIPWAY_ENVIRONMENT", env);
        }
        for (k, v) in &p.env {
            command = command.env(k, v);
        }
        for (k, v) in &secrets {
            command = command.env(*k, v);
        }
        let output = command.run().map_err(|e| format!("`{shown}`: {e}"))?;
        if !output.success() {
            return Err(format!(
                "`{shown}` failed ({}):\n{}",
                output.status_text(),
                output.tail(20)
            ));
        }
        let tail = output.tail(20);
        if !tail.trim().is_empty() {
            log::with(log::Level::Info, &tail, &[("command", &shown)]);
        }
    }
    Ok(())
}

impl Build for Command {
    fn build(ctx: &StepContext, p: Params) -> Result<Artifact, String> {
        run_all(ctx, &p)?;
        let dir = match &p.artifact {
            Some(a) => format!("{}/{a}", ctx.release.dir),
            None => ctx.release.dir.clone(),
        };
        Ok(Artifact {
            dir,
            metadata: vec![("commands".into(), p.run.len().to_string())],
        })
    }
}

impl Deploy for Command {
    fn deploy(ctx: &StepContext, p: Params) -> Result<(), String> {
        run_all(ctx, &p)
    }
}

impl Rollback for Command {
    fn rollback(ctx: &StepContext, p: Params) -> Result<(), String> {
        run_all(ctx, &p)
    }
}

slipway_plugin_sdk::export!(Command: build, deploy, rollback);

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn splits_command_lines() {
        assert_eq!(
            split("cargo build  --release").unwrap(),
            ["cargo", "build", "--release"]
        );
        assert_eq!(
            split(r#"sh -c "echo hi there""#).unwrap(),
            ["sh", "-c", "echo hi there"]
        );
        assert_eq!(split(r#"echo """#).unwrap(), ["echo", ""]);
        assert!(split(r#"echo "oops"#).is_err());
    }
}

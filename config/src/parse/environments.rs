//! `[apps.NAME.environments.ENV]`: how an environment runs the release
//! (`run` or a `deploy` plugin), its gates, what to do on failure, and how
//! it is promoted.

use super::doc::{Doc, Value, required};
use super::steps::{health, step, steps};
use crate::*;

pub(super) fn environment(
    doc: &mut Doc<'_>,
    app: &str,
    name: &str,
    v: &Value<'_>,
) -> Option<EnvConfig> {
    let what = format!("[apps.{app}.environments.{name}]");
    let table = doc.table(v, &what)?;
    doc.known_keys(
        table,
        &what,
        &[
            "promote_from",
            "run",
            "deploy",
            "smoke",
            "health",
            "rollback",
            "on_failure",
            "promote",
            "approval_timeout",
            "pre_deploy",
            "on_rollback",
        ],
    );
    let promote_from = table
        .get("promote_from")
        .and_then(|v| doc.string(v, "`promote_from`"));
    let run = table.get("run").and_then(|v| run(doc, v));
    let deploy = table.get("deploy").and_then(|v| step(doc, v, "`deploy`"));
    let smoke = table.get("smoke").and_then(|v| step(doc, v, "`smoke`"));
    let health = table.get("health").and_then(|v| health(doc, v));
    let rollback = table
        .get("rollback")
        .and_then(|v| step(doc, v, "`rollback`"));
    let on_failure = match table.get("on_failure") {
        Some(v) => match doc.string(v, "`on_failure`").as_deref() {
            Some("rollback") => OnFailure::Rollback,
            Some("stop") => OnFailure::Stop,
            Some(other) => {
                doc.error(
                    v.span(),
                    format!("`on_failure` must be \"rollback\" or \"stop\", not \"{other}\""),
                );
                OnFailure::Rollback
            }
            None => OnFailure::Rollback,
        },
        None => OnFailure::Rollback,
    };
    let promote = match table.get("promote") {
        Some(v) => match doc.string(v, "`promote`").as_deref() {
            Some("auto") | None => Promote::Auto,
            Some("manual") => Promote::Manual,
            Some(other) => {
                doc.error(
                    v.span(),
                    format!("`promote` must be \"auto\" or \"manual\", not \"{other}\""),
                );
                Promote::Auto
            }
        },
        None => Promote::Auto,
    };
    let approval_timeout = match table.get("approval_timeout") {
        Some(v) => {
            if promote != Promote::Manual {
                doc.error(
                    v.span(),
                    format!("{what} `approval_timeout` needs `promote = \"manual\"`"),
                );
            }
            doc.duration(v, "`approval_timeout`")
        }
        None => None,
    };
    let pre_deploy = table
        .get("pre_deploy")
        .map(|v| steps(doc, v, "`pre_deploy`"))
        .unwrap_or_default();
    let on_rollback = table
        .get("on_rollback")
        .map(|v| steps(doc, v, "`on_rollback`"))
        .unwrap_or_default();
    if run.is_none()
        && deploy.is_none()
        && !table.contains_key("run")
        && !table.contains_key("deploy")
    {
        doc.error(
            v.span(),
            format!("{what} needs `run` (a process the agent runs) or `deploy` (a plugin)"),
        );
    }
    Some(EnvConfig {
        name: name.to_string(),
        promote_from,
        run,
        deploy,
        smoke,
        health,
        rollback,
        on_failure,
        promote,
        approval_timeout,
        pre_deploy,
        on_rollback,
    })
}

fn run(doc: &mut Doc<'_>, v: &Value<'_>) -> Option<RunConfig> {
    let table = doc.table(v, "`run`")?;
    doc.known_keys(table, "`run`", &["command", "args", "env", "cwd"]);
    let command = required(doc, table, "command", "`run`", v.span())?;
    let command = doc.string(command, "`run.command`")?;
    let args = match table.get("args") {
        Some(v) => doc.strings(v, "`run.args`")?,
        None => Vec::new(),
    };
    let env = match table.get("env") {
        Some(v) => doc.string_map(v, "`run.env`")?,
        None => BTreeMap::new(),
    };
    let cwd = match table.get("cwd") {
        Some(v) => Some(doc.string(v, "`run.cwd`")?),
        None => None,
    };
    Some(RunConfig {
        command,
        args,
        env,
        cwd,
    })
}

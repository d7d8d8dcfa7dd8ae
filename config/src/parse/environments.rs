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
            "traffic",
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
    let traffic = table.get("traffic").and_then(|v| traffic(doc, v));
    if let (Some(t), Some(v)) = (&traffic, table.get("traffic")) {
        let earlier = doc.listens.iter().find(|(a, _, _)| {
            a.port() == t.listen.port()
                && (a.ip() == t.listen.ip()
                    || a.ip().is_unspecified()
                    || t.listen.ip().is_unspecified())
        });
        if let Some((addr, _, who)) = earlier {
            let message = format!(
                "{what} `traffic.listen` {} overlaps {who}'s {addr}: each environment needs a public address of its own",
                t.listen
            );
            doc.error(v.span(), message);
        }
        doc.listens.push((t.listen, v.span(), what.clone()));
    }
    if let Some(v) = table.get("traffic") {
        if !table.contains_key("run") {
            doc.error(
                v.span(),
                format!("{what} `traffic` needs `run`: the traffic layer sends requests to a process the agent runs"),
            );
        }
        if let Some(run) = &run
            && run.env.contains_key("PORT")
        {
            doc.error(
                v.span(),
                format!("{what} sets `run.env.PORT` and `traffic`: with `traffic` the agent gives each release a port of its own in PORT (the public port is `traffic.listen`); remove `PORT` from `run.env`"),
            );
        }
    }
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
    if traffic.is_none() {
        let steps = [&deploy, &smoke, &rollback]
            .into_iter()
            .flatten()
            .chain(health.as_ref().map(|h| &h.step))
            .chain(pre_deploy.iter())
            .chain(on_rollback.iter());
        for step in steps {
            if mentions_release_port(&step.params) {
                doc.error(
                    v.span(),
                    format!(
                        "{what}: the params of its `{}` step use `${{release.port}}` or `${{release.addr}}`, which only an environment with `traffic` has (each release's own port)",
                        step.plugin
                    ),
                );
            }
        }
    }
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
        traffic,
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

fn traffic(doc: &mut Doc<'_>, v: &Value<'_>) -> Option<TrafficConfig> {
    let table = doc.table(v, "`traffic`")?;
    doc.known_keys(
        table,
        "`traffic`",
        &[
            "listen",
            "mode",
            "drain",
            "start_timeout",
            "keep_previous",
            "canary",
        ],
    );
    let listen_v = required(doc, table, "listen", "`traffic`", v.span())?;
    let text = doc.string(listen_v, "`traffic.listen`")?;
    let listen = match text.parse::<std::net::SocketAddr>() {
        Ok(addr) if addr.port() != 0 => addr,
        Ok(_) => {
            doc.error(
                listen_v.span(),
                "`traffic.listen` needs a port other than 0",
            );
            return None;
        }
        Err(_) => {
            doc.error(
                listen_v.span(),
                format!("`traffic.listen` must be IP:PORT (like \"127.0.0.1:8080\" or \"[::]:443\"), not \"{text}\""),
            );
            return None;
        }
    };
    let mode = match table.get("mode") {
        Some(m) => match doc.string(m, "`traffic.mode`").as_deref() {
            Some("http") | None => TrafficMode::Http,
            Some("tcp") => TrafficMode::Tcp,
            Some(other) => {
                doc.error(
                    m.span(),
                    format!("`traffic.mode` must be \"http\" or \"tcp\", not \"{other}\""),
                );
                TrafficMode::Http
            }
        },
        None => TrafficMode::Http,
    };
    // A drain or a keep window may be zero; a start timeout may not.
    let mut duration = |key: &str, default: Duration, zero: bool| match table.get(key) {
        Some(d) if zero => doc
            .duration_or_zero(d, &format!("`traffic.{key}`"))
            .unwrap_or(default),
        Some(d) => doc
            .duration(d, &format!("`traffic.{key}`"))
            .unwrap_or(default),
        None => default,
    };
    Some(TrafficConfig {
        listen,
        mode,
        drain: duration("drain", DEFAULT_DRAIN, true),
        start_timeout: duration("start_timeout", DEFAULT_START_TIMEOUT, false),
        keep_previous: duration("keep_previous", DEFAULT_KEEP_PREVIOUS, true),
        canary: table.get("canary").and_then(|c| canary(doc, c)),
    })
}

fn canary(doc: &mut Doc<'_>, v: &Value<'_>) -> Option<CanaryConfig> {
    let table = doc.table(v, "`traffic.canary`")?;
    doc.known_keys(
        table,
        "`traffic.canary`",
        &["share", "for", "max_error_ratio", "max_p99", "min_requests"],
    );
    let share_v = required(doc, table, "share", "`traffic.canary`", v.span())?;
    let share = percent(doc, share_v, "`traffic.canary.share`")?;
    let share_permille = (share * 10.0).round() as u32;
    if !(1..=999).contains(&share_permille) {
        doc.error(
            share_v.span(),
            "`traffic.canary.share` must be between 0.1% and 99.9%",
        );
        return None;
    }
    let for_v = required(doc, table, "for", "`traffic.canary`", v.span())?;
    let duration = doc.duration(for_v, "`traffic.canary.for`")?;
    let max_error_ratio = match table.get("max_error_ratio") {
        Some(m) => percent(doc, m, "`traffic.canary.max_error_ratio`")? / 100.0,
        None => 0.01,
    };
    let max_p99 = match table.get("max_p99") {
        Some(m) => Some(doc.duration(m, "`traffic.canary.max_p99`")?),
        None => None,
    };
    let min_requests = match table.get("min_requests") {
        Some(m) => doc.integer(m, "`traffic.canary.min_requests`", 1)? as u64,
        None => 20,
    };
    Some(CanaryConfig {
        share_permille,
        duration,
        max_error_ratio,
        max_p99,
        min_requests,
    })
}

/// `"10%"`, `"0.5%"`: the number before the `%`, 0 to 100.
fn percent(doc: &mut Doc<'_>, v: &Value<'_>, what: &str) -> Option<f64> {
    let text = doc.string(v, what)?;
    match text
        .trim()
        .strip_suffix('%')
        .map(|n| n.trim().parse::<f64>())
    {
        Some(Ok(n)) if (0.0..=100.0).contains(&n) => Some(n),
        _ => {
            doc.error(
                v.span(),
                format!("{what} must be a percentage like \"10%\" (0 to 100), not \"{text}\""),
            );
            None
        }
    }
}

/// Whether any string in `params` names `${release.port}` or `${release.addr}`.
fn mentions_release_port(params: &serde_json::Value) -> bool {
    match params {
        serde_json::Value::String(s) => {
            s.contains("${release.port}") || s.contains("${release.addr}")
        }
        serde_json::Value::Array(items) => items.iter().any(mentions_release_port),
        serde_json::Value::Object(map) => map.values().any(mentions_release_port),
        _ => false,
    }
}

//! The operator commands — `status`, `history`, `show`, `logs`,
//! `rollback`, `approve` — as clients of the agent's API. Each returns the
//! text to print (a table, or the API's JSON with `--json`); following a
//! deployment live prints as it goes.
//!
//! Exit codes: 0 ok; 1 the operation or the deployment followed failed, or
//! the agent cannot be reached; 2 usage (bad arguments, unknown app...).

use crate::api::view::{
    AppList, AppView, ApproveRequest, Approved, DeploymentList, DeploymentLogs, DeploymentView,
    EnvHistory, RollbackRequest, RollbackStarted, StepView,
};
use crate::cli::CliError;
use crate::client::{Client, Target};
use crate::store::{Deployment, StepRecord};
use crate::vocab::DeploymentState;
use serde::Serialize;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::time::Duration;

/// `-` for what is not there.
fn or_dash(v: Option<&str>) -> &str {
    v.unwrap_or("-")
}

fn json_out(v: &impl Serialize) -> String {
    format!(
        "{}\n",
        serde_json::to_string_pretty(v).expect("a view serializes")
    )
}

pub use crate::datetime::fmt_time;

/// `850ms`, `12.3s`, `4m05s`.
pub fn fmt_duration(ms: i64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1000)
    }
}

/// Columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let last = cells.len() - 1;
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                let _ = write!(out, "{cell:<w$}  ", w = widths[i]);
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for row in rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

/// `slipway status [APP]`.
pub async fn status(target: &Target, app: Option<&str>, as_json: bool) -> Result<String, CliError> {
    let client = Client::new(target)?;
    let apps = match app {
        Some(app) => AppList {
            apps: vec![client.get(&format!("/v1/apps/{}", urlencode(app))).await?],
        },
        None => client.get("/v1/apps").await?,
    };
    if as_json {
        return Ok(json_out(&apps));
    }
    if apps.apps.is_empty() {
        return Ok("no apps in the config\n".into());
    }
    let mut rows = Vec::new();
    let mut notes = String::new();
    for a in &apps.apps {
        status_rows(a, &mut rows, &mut notes);
    }
    let mut out = table(
        &[
            "APP",
            "ENV",
            "VERSION",
            "RELEASE",
            "LAST GOOD",
            "HEALTH",
            "PROCESS",
        ],
        &rows,
    );
    let traffic = traffic_rows(&apps);
    if !traffic.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &[
                "APP",
                "ENV",
                "LISTEN",
                "TRAFFIC TO",
                "RATE",
                "ERRORS",
                "P99",
            ],
            &traffic,
        ));
    }
    if !notes.is_empty() {
        out.push('\n');
        out.push_str(&notes);
    }
    Ok(out)
}

/// One row per environment behind the traffic layer: who takes its
/// traffic (and who drains), and its rate, error ratio and p99 over the
/// last minute.
fn traffic_rows(apps: &AppList) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for a in &apps.apps {
        for e in &a.environments {
            let Some(t) = &e.traffic else {
                continue;
            };
            let total: u32 = t.releases.iter().map(|r| r.weight).sum();
            let to: Vec<String> = t
                .releases
                .iter()
                .map(|r| match r.weight {
                    0 => format!(
                        "{} (draining: {} in flight, {} open)",
                        r.release, r.in_flight, r.open
                    ),
                    w if w == total => r.release.clone(),
                    w => format!(
                        "{} {:.0}%",
                        r.release,
                        100.0 * f64::from(w) / f64::from(total.max(1))
                    ),
                })
                .collect();
            let measured = t.window_s > 0.0;
            rows.push(vec![
                a.name.clone(),
                e.name.clone(),
                t.listen.clone(),
                if to.is_empty() {
                    "nothing (503)".into()
                } else {
                    to.join(", ")
                },
                if measured {
                    format!("{:.1}/s", t.rate)
                } else {
                    "-".into()
                },
                if measured {
                    format!("{:.2}%", 100.0 * t.error_ratio)
                } else {
                    "-".into()
                },
                match t.p99_ms {
                    Some(ms) if ms >= 1000.0 => format!("{:.1} s", ms / 1000.0),
                    Some(ms) => format!("{ms:.1} ms"),
                    None => "-".into(),
                },
            ]);
        }
    }
    rows
}

/// One app's rows of the status table, and its notes (waiting, running,
/// pinned) below it.
fn status_rows(a: &AppView, rows: &mut Vec<Vec<String>>, notes: &mut String) {
    let name = &a.name;
    for e in &a.environments {
        let health = match &e.health {
            None => "-".to_string(),
            Some(h) => format!("{} ({} ago)", h.result, ago(Some(h.at))),
        };
        let process = match &e.process {
            None => "-".to_string(),
            Some(p) => match p.pid {
                Some(pid) if p.restarts > 0 => format!("pid {pid}, {} restarts", p.restarts),
                Some(pid) => format!("pid {pid}"),
                None => format!(
                    "restarting ({})",
                    p.last_exit.as_deref().unwrap_or("exited")
                ),
            },
        };
        rows.push(vec![
            name.clone(),
            e.name.clone(),
            or_dash(e.current_version.as_deref()).to_string(),
            or_dash(e.current_release.as_deref()).to_string(),
            or_dash(e.last_good_version.as_deref()).to_string(),
            health,
            process,
        ]);
        if let Some(w) = &e.waiting_approval {
            let _ = writeln!(
                notes,
                "{name}: deployment {} ({}) waits for approval to enter {env}: slipway approve {name} --env {env}",
                w.deployment,
                w.version,
                env = e.name,
            );
        }
    }
    if let Some(d) = &a.running_deployment {
        let _ = writeln!(
            notes,
            "{name}: deployment {} of {} running for {} (slipway show {})",
            d.id,
            d.version,
            ago(Some(d.started_at)),
            d.id
        );
    }
    if let Some(p) = &a.pinned {
        let _ = writeln!(
            notes,
            "{name}: version {} is pinned as bad and will not be redeployed until the config changes (deployment {}): {}",
            or_dash(a.version.as_deref()),
            p.deployment_id,
            first_line(&p.reason)
        );
    }
}

fn ago(at: Option<i64>) -> String {
    match at {
        Some(at) => fmt_duration((crate::store::now_ms() - at).max(0)),
        None => "-".into(),
    }
}

/// How long a deployment took, or has run so far.
fn took(d: &Deployment) -> String {
    match d.ended_at {
        Some(end) => fmt_duration(end - d.started_at),
        None => format!("{} so far", ago(Some(d.started_at))),
    }
}

/// `slipway history APP`: its deployments; with `--env`, what that
/// environment ran and why it changed.
pub async fn history(
    target: &Target,
    app: &str,
    env: Option<&str>,
    limit: usize,
    as_json: bool,
) -> Result<String, CliError> {
    let client = Client::new(target)?;
    if let Some(env) = env {
        return env_history(&client, app, env, limit, as_json).await;
    }
    let list: DeploymentList = client
        .get(&format!(
            "/v1/deployments?app={}&limit={limit}",
            urlencode(app)
        ))
        .await?;
    if as_json {
        return Ok(json_out(&list));
    }
    let rows: Vec<Vec<String>> = list
        .deployments
        .iter()
        .map(|d| {
            vec![
                d.id.to_string(),
                d.version.clone(),
                d.state.to_string(),
                fmt_time(d.started_at),
                took(d),
                first_line(d.reason.as_deref().unwrap_or("")).to_string(),
            ]
        })
        .collect();
    if rows.is_empty() {
        return Ok(format!("no deployments of {app} yet\n"));
    }
    Ok(table(
        &["ID", "VERSION", "STATE", "STARTED (UTC)", "TOOK", "REASON"],
        &rows,
    ))
}

/// `slipway history APP --env ENV`.
async fn env_history(
    client: &Client,
    app: &str,
    env: &str,
    limit: usize,
    as_json: bool,
) -> Result<String, CliError> {
    let history: EnvHistory = client
        .get(&format!(
            "/v1/apps/{}/environments/{}/history?limit={limit}",
            urlencode(app),
            urlencode(env)
        ))
        .await?;
    if as_json {
        return Ok(json_out(&history));
    }
    if history.events.is_empty() {
        return Ok(format!("{app} has not run anything in {env} yet\n"));
    }
    let rows: Vec<Vec<String>> = history
        .events
        .iter()
        .map(|e| {
            vec![
                fmt_time(e.event.at),
                e.event.event.clone(),
                or_dash(e.version.as_deref()).to_string(),
                or_dash(e.event.release_id.as_deref()).to_string(),
                e.event
                    .deployment_id
                    .map(|id| id.to_string())
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    Ok(table(
        &["AT (UTC)", "CHANGE", "VERSION", "RELEASE", "DEPLOYMENT"],
        &rows,
    ))
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn deployment_path(id: &str) -> Result<String, CliError> {
    match id.parse::<i64>() {
        Ok(n) if n > 0 => Ok(format!("/v1/deployments/{n}")),
        _ => Err(CliError {
            message: format!(
                "a deployment id is a positive number (see `slipway history APP`), not `{id}`"
            ),
            code: 2,
        }),
    }
}

/// `slipway show DEPLOYMENT`: what ran, how it ended, and why.
pub async fn show(target: &Target, id: &str, as_json: bool) -> Result<String, CliError> {
    let client = Client::new(target)?;
    let view: DeploymentView = client.get(&deployment_path(id)?).await?;
    if as_json {
        return Ok(json_out(&view));
    }
    Ok(render_deployment(&view))
}

/// `build` for the build's steps, else the environment.
fn step_env(st: &StepRecord, build: &'static str) -> String {
    st.environment.clone().unwrap_or_else(|| build.into())
}

fn step_outcome(st: &StepRecord) -> &str {
    st.outcome.as_deref().unwrap_or("running")
}

fn render_deployment(view: &DeploymentView) -> String {
    let d = &view.deployment;
    let mut out = String::new();
    let took = match d.ended_at {
        Some(end) => fmt_duration(end - d.started_at),
        None => "running".into(),
    };
    let _ = writeln!(
        out,
        "deployment {}: {} {} — {} ({took}), started {} UTC",
        d.id,
        d.app,
        d.version,
        d.state,
        fmt_time(d.started_at)
    );
    if let Some(release) = &d.release_id {
        let _ = writeln!(out, "release: {release}");
    }
    if let Some(w) = &view.waiting_approval {
        let _ = writeln!(
            out,
            "waiting for approval to enter {env}: slipway approve {} --env {env}",
            d.app,
            env = w.environment,
        );
    }
    if let Some(reason) = &d.reason {
        let _ = writeln!(out, "reason:\n{}", indent(reason));
    }
    let rows: Vec<Vec<String>> = view
        .steps
        .iter()
        .map(
            |StepView {
                 step: st,
                 duration_ms,
             }| {
                vec![
                    step_env(st, "(build)"),
                    st.kind.clone(),
                    st.plugin.clone(),
                    st.attempt.to_string(),
                    step_outcome(st).to_string(),
                    duration_ms.map(fmt_duration).unwrap_or_else(|| "-".into()),
                    first_line(st.message.as_deref().unwrap_or("")).to_string(),
                ]
            },
        )
        .collect();
    if !rows.is_empty() {
        out.push('\n');
        out.push_str(&table(
            &["ENV", "STEP", "PLUGIN", "TRY", "RESULT", "TOOK", "MESSAGE"],
            &rows,
        ));
    }
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// `slipway logs DEPLOYMENT`: every step's plugin logs, in order.
pub async fn logs(target: &Target, id: &str, as_json: bool) -> Result<String, CliError> {
    let client = Client::new(target)?;
    let view: DeploymentLogs = client
        .get(&format!("{}/logs", deployment_path(id)?))
        .await?;
    if as_json {
        return Ok(json_out(&view));
    }
    let mut out = String::new();
    for entry in &view.steps {
        let st = &entry.step;
        let _ = writeln!(
            out,
            "== {} {} ({}, try {}): {}",
            step_env(st, "(build)"),
            st.kind,
            st.plugin,
            st.attempt,
            step_outcome(st)
        );
        for l in &entry.logs {
            let time = fmt_time(l.at);
            let fields: String = l.fields.iter().map(|(k, v)| format!(" {k}={v}")).collect();
            let _ = writeln!(
                out,
                "{} {:<5} {:<6} {}{fields}",
                time.get(11..).unwrap_or(&time),
                l.level,
                l.source,
                l.message
            );
        }
        if let Some(message) = st.message.as_deref().filter(|m| !m.is_empty()) {
            let _ = writeln!(out, "-> {}", first_line(message));
        }
    }
    if out.is_empty() {
        out.push_str("no steps recorded\n");
    }
    Ok(out)
}

/// `slipway rollback APP --env ENV [--to VERSION]`: start it, then follow
/// it to the end unless `wait` is false.
pub async fn rollback(
    target: &Target,
    app: &str,
    env: &str,
    to: Option<&str>,
    wait: bool,
    as_json: bool,
) -> Result<String, CliError> {
    let client = Client::new(target)?;
    let body = RollbackRequest {
        to: to.map(str::to_string),
    };
    let started: RollbackStarted = client
        .post(
            &format!(
                "/v1/apps/{}/environments/{}/rollback",
                urlencode(app),
                urlencode(env)
            ),
            &body,
        )
        .await?;
    let id = started.deployment;
    if !wait {
        return Ok(if as_json {
            json_out(&started)
        } else {
            format!("rollback of {app} in {env} started: deployment {id} (slipway show {id})\n")
        });
    }
    let mut end = follow(&client, &[id], !as_json).await?;
    let end = end.remove(0);
    let state = end.deployment.state;
    let text = if as_json {
        json_out(&end)
    } else {
        render_deployment(&end)
    };
    if state == DeploymentState::RolledBack {
        Ok(text)
    } else {
        Err(CliError::failed(format!(
            "{text}rollback did not complete: {state}"
        )))
    }
}

/// `slipway approve APP --env ENV`.
pub async fn approve(
    target: &Target,
    app: &str,
    env: &str,
    as_json: bool,
) -> Result<String, CliError> {
    let client = Client::new(target)?;
    let answer: Approved = client
        .post(
            &format!(
                "/v1/apps/{}/environments/{}/approve",
                urlencode(app),
                urlencode(env)
            ),
            &ApproveRequest {},
        )
        .await?;
    Ok(if as_json {
        json_out(&answer)
    } else {
        format!(
            "approved: deployment {} ({app} {}) goes on into {env} (slipway status --watch {app})\n",
            answer.deployment, answer.version
        )
    })
}

/// `slipway status --watch [APP]`: follow the running deployments (or the
/// next one to start) to their end; exit 1 if one did not succeed.
pub async fn watch(target: &Target, app: Option<&str>, as_json: bool) -> Result<String, CliError> {
    let client = Client::new(target)?;
    let mut said_waiting = false;
    let ids = loop {
        let apps: AppList = client.get("/v1/apps").await?;
        if let Some(name) = app
            && !apps.apps.iter().any(|a| a.name == name)
        {
            return Err(CliError {
                message: format!("no app `{name}`"),
                code: 2,
            });
        }
        let ids: Vec<i64> = apps
            .apps
            .iter()
            .filter(|a| app.is_none_or(|name| a.name == name))
            .filter_map(|a| a.running_deployment.as_ref().map(|d| d.id))
            .collect();
        if !ids.is_empty() {
            break ids;
        }
        if !said_waiting && !as_json {
            eprintln!(
                "no deployment running; waiting for one to start (edit the config to deploy)"
            );
            said_waiting = true;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let ends = follow(&client, &ids, !as_json).await?;
    let failed: Vec<String> = ends
        .iter()
        .map(|v| &v.deployment)
        .filter(|d| d.state != DeploymentState::Succeeded)
        .map(|d| format!("deployment {} ({} {}): {}", d.id, d.app, d.version, d.state))
        .collect();
    let text = if as_json {
        json_out(&ends)
    } else {
        ends.iter()
            .map(render_deployment)
            .collect::<Vec<_>>()
            .join("\n")
    };
    if failed.is_empty() {
        Ok(text)
    } else {
        Err(CliError::failed(format!("{text}{}", failed.join("\n"))))
    }
}

/// Poll deployments until they end, showing progress on stderr: a redrawn
/// line per deployment on a terminal, a plain line per step change when
/// piped. Returns each deployment's final view.
async fn follow(
    client: &Client,
    ids: &[i64],
    progress: bool,
) -> Result<Vec<DeploymentView>, CliError> {
    let tty = std::io::stderr().is_terminal();
    let mut seen: Vec<std::collections::HashMap<i64, String>> = vec![Default::default(); ids.len()];
    let mut drawn = 0usize;
    loop {
        let mut views: Vec<DeploymentView> = Vec::new();
        for id in ids {
            views.push(client.get(&format!("/v1/deployments/{id}")).await?);
        }
        let done = views
            .iter()
            .all(|v| v.deployment.state != DeploymentState::Running);
        if progress {
            let mut err = std::io::stderr().lock();
            if tty {
                // Redraw: up over the lines drawn last time.
                if drawn > 0 {
                    let _ = write!(err, "\x1b[{drawn}A");
                }
                drawn = 0;
                for v in &views {
                    let _ = writeln!(err, "\x1b[2K{}", progress_line(v));
                    drawn += 1;
                }
            } else {
                for (i, v) in views.iter().enumerate() {
                    for StepView {
                        step: st,
                        duration_ms,
                    } in &v.steps
                    {
                        let now = step_outcome(st).to_string();
                        if seen[i].get(&st.id) != Some(&now) {
                            let _ = writeln!(
                                err,
                                "deployment {}: {}{} ({}) {}{}",
                                v.deployment.id,
                                st.environment
                                    .as_deref()
                                    .map(|e| format!("{e} "))
                                    .unwrap_or_default(),
                                st.kind,
                                st.plugin,
                                now,
                                duration_ms
                                    .map(|ms| format!(" in {}", fmt_duration(ms)))
                                    .unwrap_or_default()
                            );
                            seen[i].insert(st.id, now);
                        }
                    }
                }
            }
        }
        if done {
            return Ok(views);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn progress_line(v: &DeploymentView) -> String {
    let d = &v.deployment;
    let elapsed = match d.ended_at {
        Some(end) => fmt_duration(end - d.started_at),
        None => ago(Some(d.started_at)),
    };
    let step = v
        .steps
        .last()
        .map(|StepView { step: st, .. }| {
            format!(
                "{} {} ({}) {}",
                step_env(st, "build"),
                st.kind,
                st.plugin,
                st.outcome.as_deref().unwrap_or("running…")
            )
        })
        .unwrap_or_else(|| "starting".into());
    let waiting = match &v.waiting_approval {
        Some(w) => format!(" — waiting for approval into {}", w.environment),
        None => String::new(),
    };
    format!(
        "deployment {} {} {}: {} [{elapsed}] {step}{waiting}",
        d.id, d.app, d.version, d.state
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_durations_read_well() {
        assert_eq!(fmt_time(0), "1970-01-01 00:00:00");
        assert_eq!(fmt_time(1_796_000_000_000), "2026-11-30 00:53:20");
        assert_eq!(fmt_time(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(fmt_duration(850), "850ms");
        assert_eq!(fmt_duration(12_345), "12.3s");
        assert_eq!(fmt_duration(245_000), "4m05s");
    }

    #[test]
    fn tables_pad_every_column_but_the_last() {
        let t = table(&["A", "BB"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "A    BB\nxyz  1\n");
    }
}

//! The operator commands — `status`, `history`, `show`, `logs`,
//! `rollback`, `approve` — as clients of the agent's API. Each returns the
//! text to print (a table, or the API's JSON with `--json`); following a
//! deployment live prints as it goes.
//!
//! Exit codes: 0 ok; 1 the operation or the deployment followed failed, or
//! the agent cannot be reached; 2 usage (bad arguments, unknown app...).

use crate::cli::CliError;
use crate::client::{Client, Target};
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::time::Duration;

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("-")
}

fn json_out(v: &Value) -> String {
    format!("{}\n", serde_json::to_string_pretty(v).expect("json"))
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
        Some(app) => json!({ "apps": [client.get(&format!("/v1/apps/{app}")).await?] }),
        None => client.get("/v1/apps").await?,
    };
    if as_json {
        return Ok(json_out(&apps));
    }
    let list = apps["apps"].as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        return Ok("no apps in the config\n".into());
    }
    let mut rows = Vec::new();
    let mut notes = String::new();
    for a in &list {
        let name = s(&a["name"]);
        for e in a["environments"].as_array().into_iter().flatten() {
            let health = match &e["health"] {
                Value::Null => "-".to_string(),
                h => format!("{} ({} ago)", s(&h["result"]), ago(h["at"].as_i64())),
            };
            let process = match &e["process"] {
                Value::Null => "-".to_string(),
                p => match p["pid"].as_u64() {
                    Some(pid) if p["restarts"].as_u64().unwrap_or(0) > 0 => {
                        format!("pid {pid}, {} restarts", p["restarts"])
                    }
                    Some(pid) => format!("pid {pid}"),
                    None => format!(
                        "restarting ({})",
                        p["last_exit"].as_str().unwrap_or("exited")
                    ),
                },
            };
            rows.push(vec![
                name.to_string(),
                s(&e["name"]).to_string(),
                s(&e["current_version"]).to_string(),
                s(&e["current_release"]).to_string(),
                s(&e["last_good_version"]).to_string(),
                health,
                process,
            ]);
            if let Value::Object(w) = &e["waiting_approval"] {
                let _ = writeln!(
                    notes,
                    "{name}: deployment {} ({}) waits for approval to enter {}: slipway approve {name} --env {}",
                    w["deployment"],
                    s(&w["version"]),
                    s(&e["name"]),
                    s(&e["name"])
                );
            }
        }
        if let Value::Object(d) = &a["running_deployment"] {
            let _ = writeln!(
                notes,
                "{name}: deployment {} of {} running for {} (slipway show {})",
                d["id"],
                s(&d["version"]),
                ago(d["started_at"].as_i64()),
                d["id"]
            );
        }
        if let Value::Object(p) = &a["pinned"] {
            let _ = writeln!(
                notes,
                "{name}: version {} is pinned as bad and will not be redeployed until the config changes (deployment {}): {}",
                s(&a["version"]),
                p["deployment_id"],
                first_line(s(&p["reason"]))
            );
        }
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
    if !notes.is_empty() {
        out.push('\n');
        out.push_str(&notes);
    }
    Ok(out)
}

fn ago(at: Option<i64>) -> String {
    match at {
        Some(at) => fmt_duration((crate::store::now_ms() - at).max(0)),
        None => "-".into(),
    }
}

/// `slipway history APP`.
pub async fn history(
    target: &Target,
    app: &str,
    limit: usize,
    as_json: bool,
) -> Result<String, CliError> {
    let client = Client::new(target)?;
    let list = client
        .get(&format!(
            "/v1/deployments?app={}&limit={limit}",
            urlencode(app)
        ))
        .await?;
    if as_json {
        return Ok(json_out(&list));
    }
    let rows: Vec<Vec<String>> = list["deployments"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|d| {
            let took = match (d["started_at"].as_i64(), d["ended_at"].as_i64()) {
                (Some(a), Some(b)) => fmt_duration(b - a),
                (Some(a), None) => format!("{} so far", ago(Some(a))),
                _ => "-".into(),
            };
            vec![
                d["id"].to_string(),
                s(&d["version"]).to_string(),
                s(&d["state"]).to_string(),
                d["started_at"].as_i64().map(fmt_time).unwrap_or_default(),
                took,
                first_line(d["reason"].as_str().unwrap_or("")).to_string(),
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
    let view = client.get(&deployment_path(id)?).await?;
    if as_json {
        return Ok(json_out(&view));
    }
    Ok(render_deployment(&view))
}

fn render_deployment(view: &Value) -> String {
    let d = &view["deployment"];
    let mut out = String::new();
    let took = match (d["started_at"].as_i64(), d["ended_at"].as_i64()) {
        (Some(a), Some(b)) => fmt_duration(b - a),
        _ => "running".into(),
    };
    let _ = writeln!(
        out,
        "deployment {}: {} {} — {} ({}), started {} UTC",
        d["id"],
        s(&d["app"]),
        s(&d["version"]),
        s(&d["state"]),
        took,
        d["started_at"].as_i64().map(fmt_time).unwrap_or_default()
    );
    if let Some(release) = d["release_id"].as_str() {
        let _ = writeln!(out, "release: {release}");
    }
    if let Value::Object(w) = &view["waiting_approval"] {
        let _ = writeln!(
            out,
            "waiting for approval to enter {}: slipway approve {} --env {}",
            s(&w["environment"]),
            s(&d["app"]),
            s(&w["environment"])
        );
    }
    if let Some(reason) = d["reason"].as_str() {
        let _ = writeln!(out, "reason:\n{}", indent(reason));
    }
    let rows: Vec<Vec<String>> = view["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|st| {
            vec![
                st["environment"].as_str().unwrap_or("(build)").to_string(),
                s(&st["kind"]).to_string(),
                s(&st["plugin"]).to_string(),
                st["attempt"].to_string(),
                st["outcome"].as_str().unwrap_or("running").to_string(),
                st["duration_ms"]
                    .as_i64()
                    .map(fmt_duration)
                    .unwrap_or_else(|| "-".into()),
                first_line(st["message"].as_str().unwrap_or("")).to_string(),
            ]
        })
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
    let view = client
        .get(&format!("{}/logs", deployment_path(id)?))
        .await?;
    if as_json {
        return Ok(json_out(&view));
    }
    let mut out = String::new();
    for entry in view["steps"].as_array().into_iter().flatten() {
        let st = &entry["step"];
        let _ = writeln!(
            out,
            "== {} {} ({}, try {}): {}",
            st["environment"].as_str().unwrap_or("(build)"),
            s(&st["kind"]),
            s(&st["plugin"]),
            st["attempt"],
            st["outcome"].as_str().unwrap_or("running")
        );
        for l in entry["logs"].as_array().into_iter().flatten() {
            let time = l["at"].as_i64().map(fmt_time).unwrap_or_default();
            let fields: String = l["fields"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|kv| {
                    Some(format!(
                        " {}={}",
                        kv.get(0)?.as_str()?,
                        kv.get(1)?.as_str()?
                    ))
                })
                .collect();
            let _ = writeln!(
                out,
                "{} {:<5} {:<6} {}{fields}",
                time.get(11..).unwrap_or(&time),
                s(&l["level"]),
                s(&l["source"]),
                s(&l["message"])
            );
        }
        if let Some(message) = st["message"].as_str().filter(|m| !m.is_empty()) {
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
    let body = match to {
        Some(v) => json!({ "to": v }),
        None => json!({}),
    };
    let started = client
        .post(
            &format!(
                "/v1/apps/{}/environments/{}/rollback",
                urlencode(app),
                urlencode(env)
            ),
            &body,
        )
        .await?;
    let id = started["deployment"].as_i64().unwrap_or_default();
    if !wait {
        return Ok(if as_json {
            json_out(&started)
        } else {
            format!("rollback of {app} in {env} started: deployment {id} (slipway show {id})\n")
        });
    }
    let end = follow(&client, &[id], !as_json).await?;
    let state = end[0]["deployment"]["state"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let text = if as_json {
        json_out(&end[0])
    } else {
        render_deployment(&end[0])
    };
    if state == "rolled-back" {
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
    let answer = client
        .post(
            &format!(
                "/v1/apps/{}/environments/{}/approve",
                urlencode(app),
                urlencode(env)
            ),
            &json!({}),
        )
        .await?;
    Ok(if as_json {
        json_out(&answer)
    } else {
        format!(
            "approved: deployment {} ({app} {}) goes on into {env} (slipway status --watch {app})\n",
            answer["deployment"],
            s(&answer["version"])
        )
    })
}

/// `slipway status --watch [APP]`: follow the running deployments (or the
/// next one to start) to their end; exit 1 if one did not succeed.
pub async fn watch(target: &Target, app: Option<&str>, as_json: bool) -> Result<String, CliError> {
    let client = Client::new(target)?;
    let mut said_waiting = false;
    let ids = loop {
        let apps = client.get("/v1/apps").await?;
        let ids: Vec<i64> = apps["apps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| app.is_none_or(|name| a["name"] == name))
            .filter_map(|a| a["running_deployment"]["id"].as_i64())
            .collect();
        if let Some(name) = app
            && !apps["apps"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|a| a["name"] == name)
        {
            return Err(CliError {
                message: format!("no app `{name}`"),
                code: 2,
            });
        }
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
        .map(|v| &v["deployment"])
        .filter(|d| d["state"] != "succeeded")
        .map(|d| {
            format!(
                "deployment {} ({} {}): {}",
                d["id"],
                s(&d["app"]),
                s(&d["version"]),
                s(&d["state"])
            )
        })
        .collect();
    let text = if as_json {
        json_out(&json!(ends))
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
async fn follow(client: &Client, ids: &[i64], progress: bool) -> Result<Vec<Value>, CliError> {
    let tty = std::io::stderr().is_terminal();
    let mut seen: Vec<std::collections::HashMap<i64, String>> = vec![Default::default(); ids.len()];
    let mut drawn = 0usize;
    loop {
        let mut views = Vec::new();
        for id in ids {
            views.push(client.get(&format!("/v1/deployments/{id}")).await?);
        }
        let done = views.iter().all(|v| v["deployment"]["state"] != "running");
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
                    for st in v["steps"].as_array().into_iter().flatten() {
                        let key = st["id"].as_i64().unwrap_or_default();
                        let now = st["outcome"].as_str().unwrap_or("running").to_string();
                        if seen[i].get(&key) != Some(&now) {
                            let _ = writeln!(
                                err,
                                "deployment {}: {}{} ({}) {}{}",
                                v["deployment"]["id"],
                                st["environment"]
                                    .as_str()
                                    .map(|e| format!("{e} "))
                                    .unwrap_or_default(),
                                s(&st["kind"]),
                                s(&st["plugin"]),
                                now,
                                st["duration_ms"]
                                    .as_i64()
                                    .map(|ms| format!(" in {}", fmt_duration(ms)))
                                    .unwrap_or_default()
                            );
                            seen[i].insert(key, now);
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

fn progress_line(v: &Value) -> String {
    let d = &v["deployment"];
    let elapsed = match (d["started_at"].as_i64(), d["ended_at"].as_i64()) {
        (Some(a), Some(b)) => fmt_duration(b - a),
        (Some(a), None) => ago(Some(a)),
        _ => "-".into(),
    };
    let step = v["steps"]
        .as_array()
        .and_then(|steps| steps.last())
        .map(|st| {
            format!(
                "{} {} ({}) {}",
                st["environment"].as_str().unwrap_or("build"),
                s(&st["kind"]),
                s(&st["plugin"]),
                st["outcome"].as_str().unwrap_or("running…")
            )
        })
        .unwrap_or_else(|| "starting".into());
    let waiting = match &v["waiting_approval"] {
        Value::Object(w) => format!(" — waiting for approval into {}", s(&w["environment"])),
        _ => String::new(),
    };
    format!(
        "deployment {} {} {}: {} [{elapsed}] {step}{waiting}",
        d["id"],
        s(&d["app"]),
        s(&d["version"]),
        s(&d["state"])
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

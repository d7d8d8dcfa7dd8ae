//! `slipway plugin test`: one step of one plugin, run on the author's
//! machine through the real runtime — the same sandbox, limits and host
//! imports a deployment uses — with grants from `--grant` flags instead of a
//! config, and a scratch release directory. It prints the plugin's log lines
//! and its result, so a plugin can be tried without a config or a deployment.
//!
//! Exit codes follow the rest of the CLI: 0 the step passed (healthy, ok),
//! 1 it did not (unhealthy, failed, trap, timeout) or the plugin would not
//! load, 2 the command line was wrong (kind, params, grants, file).

use crate::cli::CliError;
use crate::runtime::{
    DirGrant, Event, Grants, Health, HostPattern, Limits, LoadError, LogLine, Redactor, ReleaseRef,
    Runtime, RuntimeConfig, StepContext, StepError, StepInput, StepKind, StepLabels, StepOutcome,
    StepRequest, StepValue,
};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Wall time of a step when `--timeout` is not given: the agent's own
/// defaults for a step in a deployment.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
const DEFAULT_BUILD_TIMEOUT: Duration = Duration::from_secs(600);

/// The app, environment and releases a local step is told about.
const APP: &str = "plugin-test";
const ENVIRONMENT: &str = "local";
const RELEASE_VERSION: &str = "1.0.0";
const PREVIOUS_VERSION: &str = "0.9.0";

/// The grant kinds `--grant` takes, for error messages and `--help`.
pub const GRANT_FORMS: &str = "http=HOST:PORT, tcp=HOST:PORT, exec=PROGRAM, dir=PATH, dir-rw=PATH, env=VAR or env=VAR=VALUE, secret=NAME";

/// What `slipway plugin test` was asked for, as typed (its flags; the
/// field docs are the `--help` text).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TestOptions {
    /// A `.wasm` component (or a builtin plugin's name).
    pub plugin: String,
    /// The step kind to run; may be left out if the plugin implements
    /// only one.
    #[arg(long)]
    pub kind: Option<String>,
    /// The step's params, as JSON (default `{}`); checked against the
    /// plugin's schema.
    #[arg(long)]
    pub params: Option<String>,
    /// A capability, as in a config's grants: http=HOST:PORT,
    /// tcp=HOST:PORT, exec=PROGRAM, dir=PATH, dir-rw=PATH, env=VAR
    /// (its value from here) or env=VAR=VALUE, secret=NAME (its value
    /// from the environment variable NAME). Repeat for more.
    #[arg(long = "grant", value_name = "KIND=VALUE")]
    pub grants: Vec<String>,
    /// Wall-time limit of the step (default 60s; build 10m).
    #[arg(long)]
    pub timeout: Option<String>,
    /// The release directory (default: a scratch one, removed after).
    #[arg(long)]
    pub release: Option<PathBuf>,
    /// The previous release's directory, as a rollback sees it.
    #[arg(long)]
    pub previous_release: Option<PathBuf>,
    /// Keep compiled components in this directory (made private to
    /// you), so runs after the first skip the compile (seconds for a
    /// Python or JavaScript plugin).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Why the step did not run. Each names the flag or file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TestError {
    #[error("--kind `{0}` is not a step kind (kinds: {kinds})", kinds = kind_list(&StepKind::ALL))]
    UnknownKind(String),
    #[error("--params is not a JSON document: {0}")]
    ParamsNotJson(String),
    #[error("--grant `{grant}`: {reason} (forms: {GRANT_FORMS})")]
    BadGrant { grant: String, reason: String },
    #[error("--timeout `{0}`: {1}")]
    BadTimeout(String, String),
    #[error("{flag} {}: {reason}", .path.display())]
    BadDir {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{0}")]
    Load(Box<LoadError>),
    #[error("{plugin} implements {implemented}, not {kind}: pass --kind with one of those")]
    NotImplemented {
        plugin: String,
        kind: StepKind,
        implemented: String,
    },
    #[error("{plugin} implements {implemented}: pass --kind to say which step to run")]
    KindNeeded { plugin: String, implemented: String },
    #[error("--params do not match the params schema of {plugin}:\n  {}", .errors.join("\n  "))]
    ParamsRejected { plugin: String, errors: Vec<String> },
    #[error("{0}")]
    Setup(String),
}

impl From<TestError> for CliError {
    /// A wrong command line (or a file that is not there) exits 2; a plugin
    /// that will not load, or a host problem, exits 1.
    fn from(e: TestError) -> Self {
        let code = match &e {
            TestError::Load(e) if matches!(**e, LoadError::Read { .. }) => 2,
            TestError::Load(_) | TestError::Setup(_) => 1,
            _ => 2,
        };
        CliError {
            message: e.to_string(),
            code,
        }
    }
}

/// A step that ran: whether it passed, and the report to print.
#[derive(Debug, Clone)]
pub struct TestRun {
    /// Healthy (health-check) or ok (every other kind).
    pub passed: bool,
    /// One word: healthy, unhealthy, unknown, ok, failed, trap, timeout,
    /// limit or error.
    pub verdict: &'static str,
    /// The report: human lines, or a JSON document with `--json`.
    pub text: String,
}

fn kind_list(kinds: &[StepKind]) -> String {
    kinds
        .iter()
        .map(|k| k.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Parse `--grant` flags into the grants a config `grants` table would give,
/// plus the secret values they name (read from the environment).
fn parse_grants(flags: &[String]) -> Result<(Grants, BTreeMap<String, String>), TestError> {
    let mut grants = Grants::default();
    let mut secrets = BTreeMap::new();
    for flag in flags {
        let bad = |reason: String| TestError::BadGrant {
            grant: flag.clone(),
            reason,
        };
        let Some((key, value)) = flag.split_once('=').filter(|(_, v)| !v.is_empty()) else {
            return Err(bad("expected KIND=VALUE".into()));
        };
        match key {
            "http" | "tcp" => {
                let pattern = HostPattern::parse(value).map_err(bad)?;
                if key == "http" {
                    grants.http.push(pattern);
                } else {
                    grants.tcp.push(pattern);
                }
            }
            "exec" => grants.exec.push(value.to_string()),
            "dir" | "dir-rw" => {
                let path = std::fs::canonicalize(value)
                    .map_err(|e| bad(format!("cannot use `{value}`: {e}")))?;
                if !path.is_dir() {
                    return Err(bad(format!("`{value}` is not a directory")));
                }
                grants.dirs.push(DirGrant {
                    path,
                    write: key == "dir-rw",
                });
            }
            "env" => {
                let (name, val) = match value.split_once('=') {
                    Some((name, val)) => (name.to_string(), val.to_string()),
                    None => {
                        let val = std::env::var(value).map_err(|_| {
                            bad(format!(
                                "`{value}` is not set in this environment (or pass env={value}=VALUE)"
                            ))
                        })?;
                        (value.to_string(), val)
                    }
                };
                if name.is_empty() {
                    return Err(bad("the variable has no name".into()));
                }
                grants.env.insert(name, val);
            }
            "secret" => {
                let val = std::env::var(value).map_err(|_| {
                    bad(format!(
                        "the secret's value is read from the environment variable `{value}`, which is not set"
                    ))
                })?;
                grants.secrets.push(value.to_string());
                secrets.insert(value.to_string(), val);
            }
            other => return Err(bad(format!("unknown grant `{other}`"))),
        }
    }
    Ok((grants, secrets))
}

/// An existing directory given on the command line, made absolute.
fn existing_dir(flag: &'static str, path: &Path) -> Result<PathBuf, TestError> {
    let bad = |reason: String| TestError::BadDir {
        flag,
        path: path.to_path_buf(),
        reason,
    };
    let dir = std::fs::canonicalize(path).map_err(|e| bad(e.to_string()))?;
    if !dir.is_dir() {
        return Err(bad("not a directory".into()));
    }
    Ok(dir)
}

/// A release directory made for one run and removed after it.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> Result<Self, TestError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "slipway-plugin-test-{}-{nanos:x}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path)
            .and_then(|()| std::fs::canonicalize(&path))
            .map(ScratchDir)
            .map_err(|e| {
                TestError::Setup(format!(
                    "cannot make a scratch release dir {}: {e}",
                    path.display()
                ))
            })
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run one step of a plugin as `slipway plugin test` does.
pub async fn run(opts: &TestOptions) -> Result<TestRun, TestError> {
    let kind = match &opts.kind {
        Some(text) => {
            Some(StepKind::parse(text).ok_or_else(|| TestError::UnknownKind(text.clone()))?)
        }
        None => None,
    };
    let params: serde_json::Value = match &opts.params {
        Some(text) => {
            serde_json::from_str(text).map_err(|e| TestError::ParamsNotJson(e.to_string()))?
        }
        None => json!({}),
    };
    let (mut grants, secrets) = parse_grants(&opts.grants)?;
    let timeout = match &opts.timeout {
        Some(text) => {
            let t = crate::config::parse_duration(text)
                .map_err(|e| TestError::BadTimeout(text.clone(), e))?;
            if t.is_zero() {
                return Err(TestError::BadTimeout(
                    text.clone(),
                    "must be more than 0".into(),
                ));
            }
            Some(t)
        }
        None => None,
    };
    let release = match &opts.release {
        Some(path) => Some(existing_dir("--release", path)?),
        None => None,
    };
    let previous = match &opts.previous_release {
        Some(path) => Some(existing_dir("--previous-release", path)?),
        None => None,
    };

    // The cache holds compiled code that is loaded without checks, like the
    // agent's own `state_dir/cache`: keep it private to this user.
    if let Some(dir) = &opts.cache_dir {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| TestError::BadDir {
                flag: "--cache-dir",
                path: dir.clone(),
                reason: e.to_string(),
            })?;
    }
    let runtime = Runtime::new(&RuntimeConfig {
        cache_dir: opts.cache_dir.clone(),
        ..RuntimeConfig::default()
    })
    .map_err(TestError::Setup)?;
    let source = crate::cli::source_of(&opts.plugin);
    let plugin = runtime
        .load(&source, None)
        .await
        .map_err(|e| TestError::Load(Box::new(e)))?;
    let info = plugin.info();
    let named = format!("{} {} ({})", info.name, info.version, plugin.source);
    let kind = match kind {
        Some(kind) if !plugin.implements(kind) => {
            return Err(TestError::NotImplemented {
                plugin: named,
                kind,
                implemented: kind_list(&info.kinds),
            });
        }
        Some(kind) => kind,
        None if info.kinds.len() == 1 => info.kinds[0],
        None => {
            return Err(TestError::KindNeeded {
                plugin: named,
                implemented: kind_list(&info.kinds),
            });
        }
    };
    plugin
        .validate_params(&params)
        .map_err(|errors| TestError::ParamsRejected {
            plugin: named.clone(),
            errors,
        })?;

    // The release dir is granted as in a deployment: writable for a build,
    // read-only otherwise; a notify step has no release.
    let scratch = match (&release, kind) {
        (None, k) if k != StepKind::Notify => Some(ScratchDir::new()?),
        _ => None,
    };
    let release_dir = release.or_else(|| scratch.as_ref().map(|s| s.0.clone()));
    let input = match &release_dir {
        Some(dir) if kind != StepKind::Notify => {
            grants.dirs.push(DirGrant {
                path: dir.clone(),
                write: kind == StepKind::Build,
            });
            StepInput::Step(StepContext {
                app: APP.into(),
                environment: (kind != StepKind::Build).then(|| ENVIRONMENT.into()),
                release: ReleaseRef {
                    version: RELEASE_VERSION.into(),
                    id: format!("{RELEASE_VERSION}-local"),
                    dir: dir.clone(),
                },
                previous_release: previous.map(|dir| ReleaseRef {
                    version: PREVIOUS_VERSION.into(),
                    id: format!("{PREVIOUS_VERSION}-local"),
                    dir,
                }),
                params,
                attempt: 1,
            })
        }
        _ => StepInput::Notify {
            event: Event {
                app: APP.into(),
                environment: Some(ENVIRONMENT.into()),
                deployment_id: "local".into(),
                version: RELEASE_VERSION.into(),
                state: "succeeded".into(),
                message: "slipway plugin test".into(),
            },
            params,
        },
    };
    let default_timeout = if kind == StepKind::Build {
        DEFAULT_BUILD_TIMEOUT
    } else {
        DEFAULT_TIMEOUT
    };
    let request = StepRequest {
        kind,
        input,
        grants,
        limits: Limits {
            wall_time: timeout.unwrap_or(default_timeout),
            ..Limits::default()
        },
        redactor: Redactor::new(secrets.iter().map(|(k, v)| (k.clone(), v.clone()))),
        secrets,
        labels: StepLabels {
            plugin: info.name.clone(),
            kind: kind.to_string(),
            app: APP.into(),
            environment: ENVIRONMENT.into(),
            deployment: "local".into(),
        },
    };
    let outcome = plugin.run(&request).await;
    let (passed, verdict, message) = judge(&outcome);
    let release_note = match (&release_dir, &scratch) {
        (Some(dir), Some(_)) => format!("{} (scratch, removed afterwards)", dir.display()),
        (Some(dir), None) => dir.display().to_string(),
        (None, _) => "none (notify)".into(),
    };
    let text = if opts.json {
        let body = json!({
            "plugin": {
                "name": info.name,
                "version": info.version,
                "source": plugin.source.to_string(),
                "sha256": plugin.sha256,
                "api_version": info.api_version.to_string(),
            },
            "kind": kind,
            "release_dir": release_dir,
            "passed": passed,
            "result": verdict,
            "message": message,
            "value": outcome.result.as_ref().ok(),
            "duration_ms": outcome.duration.as_secs_f64() * 1000.0,
            "logs": outcome.logs,
        });
        format!("{}\n", serde_json::to_string_pretty(&body).expect("json"))
    } else {
        let mut out = format!("plugin    {named}\nstep      {kind}, release dir {release_note}\n");
        if outcome.logs.is_empty() {
            out.push_str("logs      (none)\n");
        } else {
            out.push_str("logs\n");
            for line in &outcome.logs {
                out.push_str(&format!("  {}\n", log_line(line)));
            }
        }
        if message.is_empty() {
            out.push_str(&format!("result    {verdict}\n"));
        } else {
            // A multi-line message (a program's output tail) stays in its column.
            let message = message.replace('\n', "\n          ");
            out.push_str(&format!("result    {verdict}: {message}\n"));
        }
        if let Ok(StepValue::Artifact { metadata, .. }) = &outcome.result {
            for (k, v) in metadata {
                out.push_str(&format!("  {k} = {v}\n"));
            }
        }
        out.push_str(&format!("duration  {}\n", millis(outcome.duration)));
        out
    };
    Ok(TestRun {
        passed,
        verdict,
        text,
    })
}

/// Passed or not, the verdict word, and the message that goes with it.
fn judge(outcome: &StepOutcome) -> (bool, &'static str, String) {
    match &outcome.result {
        Ok(StepValue::Health { status, message }) => match status {
            Health::Healthy => (true, "healthy", message.clone()),
            Health::Unhealthy => (false, "unhealthy", message.clone()),
            Health::Unknown => (false, "unknown", message.clone()),
        },
        Ok(StepValue::Passed { report }) => (true, "ok", report.clone()),
        Ok(StepValue::Done) => (true, "ok", String::new()),
        Ok(StepValue::Artifact { dir, .. }) => (true, "ok", format!("artifact {dir}")),
        Err(e @ StepError::Failed(_)) => (false, "failed", e.to_string()),
        Err(e @ StepError::Trap(_)) => (false, "trap", e.to_string()),
        Err(e @ StepError::Timeout(_)) => (false, "timeout", e.to_string()),
        Err(e @ StepError::ResourceLimit(_)) => (false, "limit", e.to_string()),
        Err(e @ (StepError::NotImplemented(_) | StepError::Setup(_))) => {
            (false, "error", e.to_string())
        }
    }
}

/// `info   plugin  message  key="value"`.
fn log_line(line: &LogLine) -> String {
    let level = serde_json::to_value(line.level).expect("json");
    let source = serde_json::to_value(line.source).expect("json");
    let mut text = format!(
        "{:<5}  {:<6}  {}",
        level.as_str().unwrap_or("?"),
        source.as_str().unwrap_or("?"),
        line.message
    );
    for (k, v) in &line.fields {
        text.push_str(&format!("  {k}={v:?}"));
    }
    text
}

fn millis(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse_each_form_and_say_what_is_wrong() {
        let dir = std::env::temp_dir();
        let flags: Vec<String> = [
            "http=127.0.0.1:8080".to_string(),
            "tcp=10.0.0.1:*".into(),
            "exec=sh".into(),
            format!("dir={}", dir.display()),
            format!("dir-rw={}", dir.display()),
            "env=GREETING=hello".into(),
        ]
        .into();
        let (g, secrets) = parse_grants(&flags).unwrap();
        assert!(g.http[0].matches("127.0.0.1", 8080) && !g.http[0].matches("127.0.0.1", 8081));
        assert!(g.tcp[0].matches("10.0.0.1", 1));
        assert_eq!(g.exec, ["sh"]);
        assert_eq!(g.dirs.len(), 2);
        assert!(!g.dirs[0].write && g.dirs[1].write);
        assert_eq!(g.env["GREETING"], "hello");
        assert!(secrets.is_empty());

        for (flag, says) in [
            ("http", "expected KIND=VALUE"),
            ("http=", "expected KIND=VALUE"),
            ("http=example.com", "host:port"),
            ("disk=/", "unknown grant `disk`"),
            ("dir=/no/such/dir", "cannot use `/no/such/dir`"),
            ("env=SLIPWAY_TEST_SURELY_UNSET", "is not set"),
            ("secret=SLIPWAY_TEST_SURELY_UNSET", "is not set"),
        ] {
            let err = parse_grants(&[flag.to_string()]).unwrap_err().to_string();
            assert!(err.contains(says) && err.contains(flag), "{flag}: {err}");
        }
    }

    #[test]
    fn command_line_mistakes_exit_2_and_broken_plugins_exit_1() {
        let usage: CliError = TestError::UnknownKind("healthcheck".into()).into();
        assert_eq!(usage.code, 2);
        assert!(usage.message.contains("health-check"), "{}", usage.message);
        let broken: CliError = TestError::Load(Box::new(LoadError::Compile {
            plugin: "x.wasm".into(),
            error: "bad magic".into(),
        }))
        .into();
        assert_eq!(broken.code, 1);
    }
}

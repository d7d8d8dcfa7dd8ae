//! `slipway init`: a commented starter config for one app (build with the
//! `command` plugin, staging then production, smoke and health checks with
//! `http-check`, automatic rollback), so a new install starts from a file
//! that passes `slipway validate` as written once the source directory
//! exists, not from a blank page. It writes one file and never replaces one
//! unless told to.

use crate::cli::CliError;
use std::path::{Path, PathBuf};

/// What `slipway init` was asked for (its flags; the field docs are the
/// `--help` text).
#[derive(Debug, Clone, clap::Args)]
pub struct InitOptions {
    /// The app's name.
    pub app: String,
    /// The app's source directory.
    #[arg(long, default_value = ".")]
    pub path: PathBuf,
    /// Production's port; staging gets the next one.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// The config file to write.
    #[arg(short, long, default_value = "slipway.toml")]
    pub config: PathBuf,
    /// The agent's state dir (default: `.slipway` beside the config).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Replace the config file if it exists.
    #[arg(long)]
    pub force: bool,
}

/// Why nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(
        "app name `{0}` is not usable: use letters, digits, `-` and `_` (it names the config table, the release directories and the program to run)"
    )]
    BadApp(String),
    #[error("--port {0}: production uses it and staging the next port, so it must be 1 to 65534")]
    BadPort(u16),
    #[error("{}: {what} contains a control character", .path.display())]
    BadPath { path: PathBuf, what: &'static str },
    #[error("{} already exists: pass --force to replace it (nothing was written)", .0.display())]
    Exists(PathBuf),
    #[error("writing {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<InitError> for CliError {
    /// Bad arguments and an existing file exit 2; a failed write 1.
    fn from(e: InitError) -> Self {
        let code = if matches!(e, InitError::Io { .. }) {
            1
        } else {
            2
        };
        CliError {
            message: e.to_string(),
            code,
        }
    }
}

/// Write the starter config; returns what to tell the operator.
pub fn init(opts: &InitOptions) -> Result<String, InitError> {
    let app = &opts.app;
    if app.is_empty()
        || !app
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(InitError::BadApp(app.clone()));
    }
    if opts.port == 0 || opts.port == u16::MAX {
        return Err(InitError::BadPort(opts.port));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| InitError::Io { path, source }
    };
    let config = std::path::absolute(&opts.config).map_err(io(&opts.config))?;
    let config_dir = config.parent().unwrap_or(Path::new("/")).to_path_buf();
    let source = std::path::absolute(&opts.path).map_err(io(&opts.path))?;
    let state_dir = match &opts.state_dir {
        Some(dir) => config_relative(&std::path::absolute(dir).map_err(io(dir))?, &config_dir),
        None => ".slipway".to_string(),
    };
    let source_text = config_relative(&source, &config_dir);
    for (text, what) in [
        (&source_text, "the source path"),
        (&state_dir, "the state dir"),
    ] {
        if text.chars().any(char::is_control) {
            return Err(InitError::BadPath {
                path: PathBuf::from(text),
                what,
            });
        }
    }
    let text = starter_config(app, &source_text, &state_dir, opts.port, &opts.config);
    std::fs::create_dir_all(&config_dir).map_err(io(&config_dir))?;
    write(&opts.config, &text, opts.force)?;

    let mut out = format!(
        "wrote {}: app `{app}`, staging on port {}, production on port {}\n",
        opts.config.display(),
        opts.port + 1,
        opts.port
    );
    if !source.is_dir() {
        out.push_str(&format!(
            "note: the source directory {} does not exist yet: create it (or edit `source`) before validating\n",
            source.display()
        ));
    }
    out.push_str(&format!(
        "next: edit the lines marked EDIT (build command, program to run), then `slipway validate -c {}`\n",
        opts.config.display()
    ));
    Ok(out)
}

/// Create `file` with `text`; without `force`, only if it does not exist
/// (checked by the create itself, so a file appearing meanwhile is kept).
fn write(file: &Path, text: &str, force: bool) -> Result<(), InitError> {
    use std::io::Write;
    let io = |source| InitError::Io {
        path: file.to_path_buf(),
        source,
    };
    if force {
        // Replaced whole: the agent watching it never reads half a file.
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        let tmp = file.with_file_name(format!(".{name}.init-{}", std::process::id()));
        std::fs::write(&tmp, text)
            .and_then(|()| std::fs::rename(&tmp, file))
            .map_err(|e| {
                let _ = std::fs::remove_file(&tmp);
                io(e)
            })?;
        return Ok(());
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(file)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => InitError::Exists(file.to_path_buf()),
            _ => io(e),
        })?;
    f.write_all(text.as_bytes()).map_err(io)
}

/// `path` as the config should say it: relative to the config's directory
/// when it is inside it (the pair can move together), absolute otherwise.
fn config_relative(path: &Path, config_dir: &Path) -> String {
    match path.strip_prefix(config_dir) {
        Ok(rel) if rel.as_os_str().is_empty() => ".".to_string(),
        Ok(rel) => rel.display().to_string(),
        Err(_) => path.display().to_string(),
    }
}

/// A TOML basic string holding `s`.
fn toml_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The starter config's text. `app` must be a bare TOML key (checked by
/// [`init`]); `source` and `state_dir` are written as given.
pub fn starter_config(app: &str, source: &str, state_dir: &str, port: u16, file: &Path) -> String {
    let staging = port + 1;
    let source = toml_str(source);
    let state_dir = toml_str(state_dir);
    let file = file.display();
    format!(
        r#"# Slipway config for `{app}`, written by `slipway init`.
#
# The agent watches this file: saving a new `version` below is a deploy.
# It builds the release once, runs it in staging, smoke-tests it, promotes
# the same build to production, watches its health, and rolls an
# environment back on its own when a gate fails. Check every edit with
#   slipway validate -c {file}
# Every key is documented in docs/config.md.

[agent]
# Journal, releases, app logs and compile cache (created with mode 0700).
state_dir = {state_dir}
# The HTTP API the CLI talks to (slipway status, history, rollback ...).
listen = "127.0.0.1:7171"
# How long an app gets between SIGTERM and SIGKILL when it is stopped.
stop_grace = "10s"

# Every plugin a step uses is declared here with what it may touch;
# nothing is granted by default.
[plugins.command]
source = "builtin:command"
timeout = "10m"
# EDIT: the programs your build runs (names found in PATH, or absolute paths).
grants = {{ exec = ["make"] }}

[plugins.http-check]
source = "builtin:http-check"
grants = {{ http = ["127.0.0.1:*"] }}

[apps.{app}]
# Semver. Changing it (or source, or a step's params) starts a deployment.
version = "0.1.0"
# Copied into a new release directory for each deployment.
source = {{ path = {source} }}
# Release directories kept; older ones are removed (never one in use).
keep_releases = 5
# EDIT: your build, run in the release directory. What it leaves there is
# what staging tests and production runs; production never rebuilds.
build = {{ plugin = "command", params = {{ run = ["make build"] }} }}

[apps.{app}.environments.staging]
# EDIT: the program your build produced, relative to the release directory.
# It gets PORT, plus SLIPWAY_APP, SLIPWAY_ENVIRONMENT, SLIPWAY_VERSION.
run = {{ command = "./{app}", env = {{ PORT = "{staging}" }} }}
# Once after starting: / must answer 200 (retried for ~10s while it starts).
smoke = {{ plugin = "http-check", params = {{ url = "http://127.0.0.1:{staging}/", retries = 20, retry_delay_ms = 500 }} }}
# Watched for `bake` before production is touched.
health = {{ plugin = "http-check", params = {{ url = "http://127.0.0.1:{staging}/" }}, interval = "2s", healthy_after = 2, bake = "10s" }}
on_failure = "rollback"

[apps.{app}.environments.production]
# Gets the release only after it passed every gate in staging.
promote_from = "staging"
run = {{ command = "./{app}", env = {{ PORT = "{port}" }} }}
smoke = {{ plugin = "http-check", params = {{ url = "http://127.0.0.1:{port}/", retries = 20, retry_delay_ms = 500 }} }}
# Watched for `bake`, then for as long as it runs: `unhealthy_after` failed
# checks in a row put production back on its last good release.
health = {{ plugin = "http-check", params = {{ url = "http://127.0.0.1:{port}/" }}, interval = "2s", healthy_after = 3, unhealthy_after = 2, bake = "30s" }}
on_failure = "rollback"
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, OnFailure};

    #[test]
    fn the_starter_config_parses_into_the_promised_shape() {
        // A source path TOML must escape, relative to the config's dir.
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("src dir/\"x\"");
        std::fs::create_dir_all(&source).unwrap();
        let file = dir.path().join("slipway.toml");
        let text = starter_config("my-app_2", "src dir/\"x\"", ".slipway", 9000, &file);
        let config = Config::parse(&file, &text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let app = &config.apps["my-app_2"];
        assert_eq!(app.source, crate::config::AppSource::Path(source));
        assert_eq!(app.build.as_ref().unwrap().plugin, "command");
        let envs: Vec<&str> = app.environments.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(envs, ["staging", "production"]);
        for env in &app.environments {
            assert_eq!(env.on_failure, OnFailure::Rollback);
            assert_eq!(env.smoke.as_ref().unwrap().plugin, "http-check");
            assert!(env.health.is_some() && env.run.is_some());
        }
        let port =
            |env: &str| app.environment(env).unwrap().run.as_ref().unwrap().env["PORT"].clone();
        assert_eq!(
            (port("staging"), port("production")),
            ("9001".into(), "9000".into())
        );
        assert_eq!(config.agent.state_dir, dir.path().join(".slipway"));
    }

    #[test]
    fn bad_names_ports_and_an_existing_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let opts = |app: &str, port: u16| InitOptions {
            app: app.into(),
            path: dir.path().into(),
            port,
            config: dir.path().join("slipway.toml"),
            state_dir: None,
            force: false,
        };
        for app in ["", "web.app", "web app", "wéb", "a/b"] {
            assert!(
                matches!(init(&opts(app, 8080)), Err(InitError::BadApp(_))),
                "{app:?}"
            );
        }
        for port in [0, 65535] {
            assert!(matches!(
                init(&opts("web", port)),
                Err(InitError::BadPort(_))
            ));
        }
        assert!(!dir.path().join("slipway.toml").exists(), "nothing written");
        let out = init(&opts("web", 8080)).unwrap();
        assert!(
            out.contains("staging on port 8081, production on port 8080"),
            "{out}"
        );
        let first = std::fs::read_to_string(dir.path().join("slipway.toml")).unwrap();
        assert!(first.contains("source = { path = \".\" }"), "{first}");
        let err = init(&opts("other", 9000)).unwrap_err();
        assert!(matches!(err, InitError::Exists(_)), "{err}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("slipway.toml")).unwrap(),
            first
        );
        init(&InitOptions {
            force: true,
            ..opts("other", 9000)
        })
        .unwrap();
        let second = std::fs::read_to_string(dir.path().join("slipway.toml")).unwrap();
        assert!(second.contains("[apps.other]"), "{second}");
    }
}

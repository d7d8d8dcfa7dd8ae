//! The config file: what should run where. Parsed from TOML into a typed
//! model, then checked as a whole; every problem is reported at once as
//! `FILE:LINE:COL: message`.
//!
//! It is not the state of the server: that is the journal. The config only
//! says what *should* be; the engine makes it so. Every key is documented in
//! `docs/config.md`.
//!
//! This crate is the pure part of the config: text to model, every check
//! that needs no plugin loaded, and the check of what a plugin's
//! `describe()` returns. It is not the plugin runtime (no wasmtime here):
//! the checks that need the plugins themselves (`slipway::config::check`)
//! and the agent's log redaction stay in the agent. Being pure is why it is
//! its own crate: `fuzz/` instruments all of it in seconds, which it could
//! not do with wasmtime in the build.

pub mod grants;
mod literal_secrets;
mod parse;
pub mod plugin;
pub mod redact;
mod secrets;
pub mod source_url;

pub use secrets::{Resolve, Secret, SecretConfig, SecretSource};

use grants::Grants;
use plugin::PluginSource;
use semver::Version;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A located problem in a config file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}:{line}:{col}: {message}", file.display())]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl ConfigError {
    /// A problem at a position kept from parsing (checks after the walk).
    pub fn at(file: &Path, at: Loc, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            line: at.line,
            col: at.col,
            message: message.into(),
        }
    }
}

/// A located finding that does not make the config invalid (a secret
/// written literally, a secret `validate` cannot read here): `validate`
/// prints it, the agent logs it, and the config is used all the same.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigWarning {
    pub file: PathBuf,
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl std::fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let Self {
            file,
            line,
            col,
            message,
        } = self;
        write!(f, "{}:{line}:{col}: warning: {message}", file.display())
    }
}

impl From<ConfigError> for ConfigWarning {
    fn from(e: ConfigError) -> Self {
        Self {
            file: e.file,
            line: e.line,
            col: e.col,
            message: e.message,
        }
    }
}

/// All the problems found in one file, in file order.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// A position in the config file (1-based), kept so later checks can point
/// at the key they are about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Loc {
    pub line: usize,
    pub col: usize,
}

/// The whole config.
#[derive(Debug, Clone)]
pub struct Config {
    pub file: PathBuf,
    pub agent: AgentConfig,
    pub plugins: BTreeMap<String, PluginConfig>,
    pub apps: BTreeMap<String, AppConfig>,
    /// `[secrets.NAME]`: sources, and values once resolved. Not part of
    /// any app's spec: a secret's value never reaches the journal.
    pub secrets: BTreeMap<String, SecretConfig>,
    /// Findings that do not make the config invalid, in file order.
    pub warnings: Vec<ConfigWarning>,
}

/// `[agent]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// Journal, releases, logs, compile cache. Relative to the config file.
    pub state_dir: PathBuf,
    /// API address (used by the API; loopback by default).
    pub listen: String,
    /// How long a stopped app gets between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// Allow a non-loopback `listen` (only behind a TLS proxy).
    pub allow_remote_api: bool,
    /// The most a release unpacked from a URL source may hold, in bytes
    /// (`max_release_mb`): a small archive must not fill the state dir's
    /// disk (a 404 KB tar.gz can hold 400 MB of zeros).
    pub max_release_bytes: u64,
}

/// `max_release_mb` when the config does not say: 4 GiB.
pub const DEFAULT_MAX_RELEASE_MB: u64 = 4096;

/// `[plugins.NAME]`.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConfig {
    pub name: String,
    pub source: PluginSource,
    pub sha256: Option<String>,
    pub grants: Grants,
    /// Default wall time of this plugin's steps.
    pub timeout: Option<Duration>,
    /// Memory limit of this plugin's steps, in bytes.
    pub memory: Option<usize>,
    /// Health checks reuse a warm instance per app and environment
    /// (`runtime::Plugin::run_warm`); `false`: a fresh instance every time.
    pub warm: bool,
    pub at: Loc,
}

/// `[apps.NAME]`.
#[derive(Debug, Clone, Serialize)]
pub struct AppConfig {
    pub name: String,
    pub version: Version,
    pub source: AppSource,
    pub build: Option<StepConfig>,
    pub keep_releases: usize,
    /// In promotion order: every environment comes after its `promote_from`.
    pub environments: Vec<EnvConfig>,
    /// Steps told of every state change of a deployment, in order. Who hears
    /// about a deployment is not what is deployed: not in the spec.
    #[serde(skip)]
    pub notify: Vec<StepConfig>,
}

/// Where an app's source comes from.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "lowercase")]
pub enum AppSource {
    /// A directory on this machine, copied into each release before build.
    Path(PathBuf),
    /// A file downloaded once (verified against `sha256`, lowercase hex) and
    /// unpacked into each release before build (`slipway::artifact`).
    Url { url: String, sha256: String },
}

/// One step: a plugin and its params.
#[derive(Debug, Clone, Serialize)]
pub struct StepConfig {
    pub plugin: String,
    pub params: serde_json::Value,
    #[serde(with = "opt_millis")]
    pub timeout: Option<Duration>,
    #[serde(skip)]
    pub at: Loc,
    #[serde(skip)]
    pub params_at: Loc,
}

/// The `health` step and how it gates.
#[derive(Debug, Clone, Serialize)]
pub struct HealthConfig {
    pub step: StepConfig,
    #[serde(with = "millis")]
    pub interval: Duration,
    /// Consecutive passes that make a release healthy.
    pub healthy_after: u32,
    /// Consecutive failures that make it unhealthy.
    pub unhealthy_after: u32,
    /// How long a new release is watched before the next environment.
    #[serde(with = "millis")]
    pub bake: Duration,
}

/// `run`: the app as a process the agent supervises.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RunConfig {
    pub command: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: Option<String>,
}

/// `traffic`: the traffic layer (`slipway proxy`) owns `listen`; each
/// release runs beside the one serving on a port of its own (`PORT`) and
/// gets requests only once it passed its gates.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TrafficConfig {
    /// The public address.
    pub listen: std::net::SocketAddr,
    pub mode: TrafficMode,
    /// How long a release switched away from may finish its requests and
    /// connections before it is stopped. Policy: not in the spec.
    #[serde(skip)]
    pub drain: Duration,
    /// How long a new release has to listen on its port.
    #[serde(skip)]
    pub start_timeout: Duration,
    /// How long the release switched away from keeps running, so that a
    /// rollback in that window is a switch back, not a start.
    #[serde(skip)]
    pub keep_previous: Duration,
    /// Judge a new release on a share of the live traffic before it takes
    /// all of it. Policy: not in the spec.
    #[serde(skip)]
    pub canary: Option<CanaryConfig>,
}

/// `traffic.canary`: a share of the requests for a while, judged on the
/// release's own figures against the stable release's.
#[derive(Debug, Clone, PartialEq)]
pub struct CanaryConfig {
    /// The share of requests, in thousandths (`"10%"` is 100).
    pub share_permille: u32,
    /// How long the canary takes its share.
    pub duration: Duration,
    /// The highest 5xx ratio (0..1) a canary may have.
    pub max_error_ratio: f64,
    /// The highest p99 a canary may have.
    pub max_p99: Option<Duration>,
    /// Fewer requests than this in the window: the canary is not judged.
    pub min_requests: u64,
}

/// `traffic.mode`.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TrafficMode {
    /// An HTTP/1.1 reverse proxy (per-request routing, RED figures).
    #[default]
    Http,
    /// Bytes both ways, for apps that do not speak HTTP.
    Tcp,
}

/// Defaults of `traffic`.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(30);
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_KEEP_PREVIOUS: Duration = Duration::from_secs(300);

/// What to do when a gate fails in an environment.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Return the environment to its last good release (the default).
    Rollback,
    /// Leave the failed release in place for a person to look at.
    Stop,
}

/// `[apps.NAME.environments.ENV]`.
#[derive(Debug, Clone, Serialize)]
pub struct EnvConfig {
    pub name: String,
    pub promote_from: Option<String>,
    pub run: Option<RunConfig>,
    /// Behind the traffic layer (needs `run`).
    pub traffic: Option<TrafficConfig>,
    pub deploy: Option<StepConfig>,
    pub smoke: Option<StepConfig>,
    pub health: Option<HealthConfig>,
    pub rollback: Option<StepConfig>,
    pub on_failure: OnFailure,
    /// Whether a deployment enters this environment on its own or waits for
    /// `slipway approve`. Gate policy, not what is deployed: not in the spec.
    #[serde(skip)]
    pub promote: Promote,
    /// How long a manual gate waits before the deployment is cancelled.
    #[serde(skip)]
    pub approval_timeout: Option<Duration>,
    /// Steps run before the release is activated (backup, migrations); a
    /// failure stops the deployment with this environment untouched.
    pub pre_deploy: Vec<StepConfig>,
    /// Steps run when this environment is rolled back (restore), after the
    /// failed release is stopped and before the last good one starts.
    pub on_rollback: Vec<StepConfig>,
}

/// `promote` of an environment.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Promote {
    #[default]
    Auto,
    Manual,
}

impl AppConfig {
    /// The canonical JSON of what, when changed, makes a new deployment.
    pub fn spec_json(&self) -> String {
        serde_json::to_string(self).expect("config serializes")
    }

    /// Short identity of the desired state: sha256 of [`Self::spec_json`].
    pub fn spec_hash(&self) -> String {
        use sha2::{Digest, Sha256};
        hex::encode(Sha256::digest(self.spec_json().as_bytes()))[..16].to_string()
    }

    pub fn environment(&self, name: &str) -> Option<&EnvConfig> {
        self.environments.iter().find(|e| e.name == name)
    }
}

impl Config {
    /// Read and parse a config file (syntax and shape; plugins are checked
    /// by `slipway::config::check`).
    pub fn load(file: &Path) -> Result<Self, ConfigErrors> {
        Self::parse(file, &read(file)?)
    }

    /// Parse config text; `file` names it in errors and anchors relative paths.
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigErrors> {
        match parse::parse(file, text) {
            (Some(config), errors) if errors.is_empty() => Ok(config),
            (_, errors) => Err(ConfigErrors(errors)),
        }
    }

    /// The directory relative paths in the config are taken from.
    pub fn base_dir(&self) -> PathBuf {
        base_dir(&self.file)
    }
}

/// Parse what can be parsed: the config without the parts in error (None
/// only for text that is not TOML), and every error in file order. The
/// agent checks such a partial config against the plugins too, so plugin and
/// params problems are reported in the same run as syntax ones.
pub fn parse_partial(file: &Path, text: &str) -> (Option<Config>, Vec<ConfigError>) {
    parse::parse(file, text)
}

/// The text of a config file; an unreadable file is a located error too.
pub fn read(file: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(file).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.to_path_buf(),
            line: 1,
            col: 1,
            message: format!("cannot read the config file: {e}"),
        }])
    })
}

fn base_dir(file: &Path) -> PathBuf {
    let parent = file.parent().unwrap_or(Path::new("."));
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf())
}

/// The longest duration the config takes (about 100 years): anything
/// longer is a typo, and sums of durations (`interval` × `healthy_after`)
/// must not overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Parse "500ms", "2s", "5m", "1h", "1m30s".
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}` is not a duration (examples: 500ms, 2s, 5m, 1h30m)");
    let too_long = || format!("`{text}` is longer than the longest duration, 100 years");
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| too_long())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let secs = |per: u64| n.checked_mul(per).map(Duration::from_secs);
        let unit = match &rest[..unit_len] {
            "ms" => Some(Duration::from_millis(n)),
            "s" => Some(Duration::from_secs(n)),
            "m" => secs(60),
            "h" => secs(3600),
            _ => return Err(bad()),
        };
        total = unit
            .and_then(|unit| total.checked_add(unit))
            .filter(|total| *total <= MAX_DURATION)
            .ok_or_else(too_long)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

mod millis {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

mod opt_millis {
    pub fn serialize<S: serde::Serializer>(
        d: &Option<std::time::Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        for bad in ["", "5", "s", "5 s", "1.5s", "5x", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    /// Found writing the config fuzz target (its binary panicked on it):
    /// `n * 3600` and the sum overflowed (a panic under overflow checks, a
    /// wrong duration without).
    #[test]
    fn huge_durations_are_errors_not_overflows() {
        for huge in [
            "18446744073709551615h",
            "18446744073709551615m",
            "18446744073709551615s18446744073709551615s",
            "99999999999999999999ms",
            "876001h",
        ] {
            let e = parse_duration(huge).unwrap_err();
            assert!(
                e.contains("longer than the longest duration"),
                "{huge}: {e}"
            );
        }
        assert_eq!(parse_duration("876000h").unwrap(), super::MAX_DURATION);
    }
}

#[cfg(test)]
mod parse_tests;

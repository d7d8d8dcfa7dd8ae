//! `[secrets.NAME]`: where each secret's value comes from, and reading it.
//!
//! Why it works this way: the config text is in git, in backups and in
//! `slipway validate` output, so a secret value never goes in it. The config
//! names a source instead (the agent's environment, a file only the agent's
//! user can read, or a systemd credential) and the agent reads the value each
//! time it loads the config. The value then lives only in memory: a
//! [`Secret`] prints as `<redacted>`, it is not part of an app's spec (so not
//! of its hash or the journal), a step gets only the secrets its plugin is
//! granted, and step logs and the agent's own log lines are redacted of every
//! value.
//!
//! It is not the capability that hands values to a plugin
//! (`slipway::runtime::caps::secret`), nor the scanner for secrets written
//! literally in the config (`literal_secrets`), nor the agent's own log
//! redaction: `slipway::config::resolve_secrets` wraps [`Config::read_secrets`]
//! and registers every value it read with the agent's log.

use super::*;
use crate::redact::Redactor;
use std::ffi::OsString;
use std::fmt;

/// A secret value. Its `Debug` prints `<redacted>`, so a stray `{:?}` of the
/// config leaks nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a value read from a source (or made by a test).
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself, for the few places that must hand it on (a step's
    /// granted secrets, the redactors).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a secret's value comes from: exactly one per `[secrets.NAME]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// `env = "VAR"`: a variable of the agent's own environment.
    Env(String),
    /// `file = "PATH"`: a file owned by the agent's user and not readable by
    /// group or others.
    File(PathBuf),
    /// `credential = "NAME"`: a systemd credential,
    /// `$CREDENTIALS_DIRECTORY/NAME` (`LoadCredential=` in the unit).
    Credential(String),
}

/// `[secrets.NAME]`.
#[derive(Debug, Clone)]
pub struct SecretConfig {
    pub name: String,
    pub source: SecretSource,
    /// Where the source is written; resolution problems point here.
    pub at: Loc,
    /// The value, once [`Config::read_secrets`] has read it.
    pub value: Option<Secret>,
}

/// How strict [`Config::read_secrets`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolve {
    /// The agent: every secret must resolve, or the config is refused.
    Agent,
    /// `slipway validate`, which an operator may run outside the systemd
    /// unit: a `credential` without `$CREDENTIALS_DIRECTORY` is a warning.
    Validate,
}

/// Why a source gave no value.
enum Unresolved {
    /// A `credential` source with no `$CREDENTIALS_DIRECTORY`.
    NoCredentialsDirectory,
    Failed(String),
}

impl Config {
    /// Read every secret's value from its source. Problems are located at
    /// the source key; warnings (a value too short to redact, a credential
    /// `validate` cannot see) are added to [`Config::warnings`].
    ///
    /// The agent calls it through `slipway::config::resolve_secrets`, which
    /// also hides every value from the agent's own log: hence the different
    /// name, so no caller there skips that by accident.
    pub fn read_secrets(&mut self, mode: Resolve) -> Result<(), ConfigErrors> {
        self.resolve_secrets_from(mode, &|var| std::env::var_os(var))
    }

    /// [`Self::read_secrets`] with `env` as the agent's environment.
    fn resolve_secrets_from(
        &mut self,
        mode: Resolve,
        env: &dyn Fn(&str) -> Option<OsString>,
    ) -> Result<(), ConfigErrors> {
        let credentials = env("CREDENTIALS_DIRECTORY")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);
        let Config {
            file,
            secrets,
            warnings,
            ..
        } = self;
        let mut errors = Vec::new();
        for secret in secrets.values_mut() {
            let at = |message: String| {
                ConfigError::at(
                    file,
                    secret.at,
                    format!("[secrets.{}] {message}", secret.name),
                )
            };
            match read(&secret.source, credentials.as_deref(), env) {
                Ok(value) => {
                    if value.len() < Redactor::MIN_LEN {
                        warnings.push(at(format!(
                            "is shorter than {} characters: too short to be redacted from logs",
                            Redactor::MIN_LEN
                        )).into());
                    }
                    secret.value = Some(Secret::new(value));
                }
                Err(Unresolved::NoCredentialsDirectory) if mode == Resolve::Validate => {
                    warnings.push(at(format!(
                        "not read: $CREDENTIALS_DIRECTORY is not set here (validate runs outside the systemd unit); the agent reads it at start from the unit's `LoadCredential={}:…`",
                        credential_name(&secret.source)
                    )).into());
                }
                Err(Unresolved::NoCredentialsDirectory) => errors.push(at(format!(
                    "`credential`: $CREDENTIALS_DIRECTORY is not set: systemd sets it for a unit with `LoadCredential={0}:/etc/slipway/{0}`; run the agent under such a unit, or use `file` or `env`",
                    credential_name(&secret.source)
                ))),
                Err(Unresolved::Failed(message)) => errors.push(at(message)),
            }
        }
        self.warnings.sort_by_key(|w| (w.line, w.col));
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// The values of the secrets `names` (a plugin's grant) for one step.
    /// A name without a value (never resolved) is left out: the plugin's
    /// `secret()` call then fails as for any secret it does not have.
    pub fn step_secrets(&self, names: &[String]) -> BTreeMap<String, String> {
        names
            .iter()
            .filter_map(|name| {
                let value = self.secrets.get(name)?.value.as_ref()?;
                Some((name.clone(), value.expose().to_string()))
            })
            .collect()
    }

    /// Redacts every resolved secret, not only a step's own: one plugin
    /// cannot leak another's secret through its logs either.
    pub fn redactor(&self) -> Redactor {
        Redactor::new(self.secrets.values().filter_map(|s| {
            let value = s.value.as_ref()?;
            Some((s.name.clone(), value.expose().to_string()))
        }))
    }
}

fn credential_name(source: &SecretSource) -> &str {
    match source {
        SecretSource::Credential(name) => name,
        _ => "NAME",
    }
}

/// The value of one source, trailing newlines of files trimmed; empty is an
/// error.
fn read(
    source: &SecretSource,
    credentials: Option<&Path>,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<String, Unresolved> {
    let failed = Unresolved::Failed;
    let value = match source {
        SecretSource::Env(var) => {
            let value = env(var).ok_or_else(|| {
                failed(format!(
                    "`env`: the variable `{var}` is not set in the agent's environment (set it in the unit's Environment=/EnvironmentFile=, or use `file` or `credential`)"
                ))
            })?;
            value
                .into_string()
                .map_err(|_| failed(format!("`env`: the variable `{var}` is not valid UTF-8")))?
        }
        SecretSource::File(path) => read_private_file(path).map_err(failed)?,
        SecretSource::Credential(name) => {
            let dir = credentials.ok_or(Unresolved::NoCredentialsDirectory)?;
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path).map_err(|e| {
                failed(format!(
                    "`credential`: cannot read {}: {e} (the unit needs `LoadCredential={name}:/path/to/file` or `SetCredential=`)",
                    path.display()
                ))
            })?;
            trim_newlines(text)
        }
    };
    if value.is_empty() {
        let what = match source {
            SecretSource::Env(var) => format!("the variable `{var}`"),
            SecretSource::File(path) => path.display().to_string(),
            SecretSource::Credential(name) => format!("the credential `{name}`"),
        };
        return Err(failed(format!("is empty: {what} holds no value")));
    }
    Ok(value)
}

/// A secret file must be the agent's user's own and unreadable by anyone
/// else: a secret every local user can read is not a secret.
fn read_private_file(path: &Path) -> Result<String, String> {
    use std::os::unix::fs::MetadataExt;
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("`file`: cannot read {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("`file`: {shown} is not a regular file"));
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if meta.uid() != uid {
        return Err(format!(
            "`file`: {shown} is owned by uid {}, not by the agent's user (uid {uid}): run `chown {uid} {shown}`",
            meta.uid()
        ));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "`file`: {shown} can be read by group or others (mode {mode:04o}): run `chmod 600 {shown}`"
        ));
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("`file`: cannot read {shown}: {e}"))?;
    Ok(trim_newlines(text))
}

/// `echo secret > file` leaves a newline the secret does not contain.
fn trim_newlines(mut text: String) -> String {
    let len = text.trim_end_matches(['\n', '\r']).len();
    text.truncate(len);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A config in a fresh directory (with an `app/`) whose `[secrets]`
    /// section is `secrets`.
    fn config(secrets: &str) -> (tempfile::TempDir, Config) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("app")).unwrap();
        let text = format!(
            "{secrets}\n[apps.web]\nversion = \"1.0.0\"\nsource = {{ path = \"app\" }}\n[apps.web.environments.prod]\nrun = {{ command = \"./web\" }}\n"
        );
        let config = Config::parse(&dir.path().join("slipway.toml"), &text).unwrap();
        (dir, config)
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            vars.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    fn write(path: &Path, text: &str, mode: u32) {
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn error_lines(result: Result<(), ConfigErrors>) -> Vec<String> {
        result
            .unwrap_err()
            .0
            .iter()
            .map(|e| format!("{}:{}: {}", e.line, e.col, e.message))
            .collect()
    }

    #[test]
    fn reads_each_source_and_keeps_values_out_of_debug() {
        let (dir, mut c) = config(
            "[secrets.db]\nfile = \"db-password\"\n[secrets.token]\nenv = \"DEPLOY_TOKEN\"\n[secrets.api]\ncredential = \"api-key\"\n",
        );
        write(&dir.path().join("db-password"), "file-secret-1\n", 0o600);
        let creds = dir.path().join("creds");
        std::fs::create_dir(&creds).unwrap();
        write(&creds.join("api-key"), "credential-secret-2\r\n", 0o400);
        let creds = creds.to_str().unwrap().to_string();
        c.resolve_secrets_from(
            Resolve::Agent,
            &env(&[
                ("DEPLOY_TOKEN", "env-secret-3"),
                ("CREDENTIALS_DIRECTORY", &creds),
            ]),
        )
        .unwrap();
        let values: Vec<(&str, &str)> = c
            .secrets
            .values()
            .map(|s| (s.name.as_str(), s.value.as_ref().unwrap().expose()))
            .collect();
        assert_eq!(
            values,
            [
                ("api", "credential-secret-2"),
                ("db", "file-secret-1"),
                ("token", "env-secret-3"),
            ]
        );
        let debug = format!("{c:?}");
        for value in ["file-secret-1", "credential-secret-2", "env-secret-3"] {
            assert!(!debug.contains(value), "{debug}");
        }
        assert!(debug.contains("<redacted>"));
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);

        // A step gets only its grant; the redactor knows every value.
        let granted = c.step_secrets(&["db".to_string()]);
        assert_eq!(granted.len(), 1);
        assert_eq!(granted["db"], "file-secret-1");
        assert_eq!(
            c.redactor().redact("a env-secret-3 b file-secret-1"),
            "a [REDACTED:token] b [REDACTED:db]"
        );
    }

    #[test]
    fn a_file_others_can_read_is_refused_with_the_fix() {
        let (dir, mut c) = config("[secrets.db]\nfile = \"db-password\"\n");
        let path = dir.path().join("db-password");
        for mode in [0o644, 0o640, 0o604] {
            write(&path, "hunter2hunter2", mode);
            let errors = error_lines(c.resolve_secrets_from(Resolve::Agent, &env(&[])));
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(
                errors[0].starts_with("2:8: [secrets.db] `file`: ")
                    && errors[0]
                        .contains(&format!("can be read by group or others (mode {mode:04o})"))
                    && errors[0].contains(&format!("chmod 600 {}", path.display())),
                "{errors:?}"
            );
        }
        write(&path, "hunter2hunter2", 0o600);
        c.resolve_secrets_from(Resolve::Agent, &env(&[])).unwrap();
    }

    #[test]
    fn missing_and_empty_values_are_located_errors() {
        let (dir, mut c) = config(
            "[secrets.token]\nenv = \"DEPLOY_TOKEN\"\n[secrets.db]\nfile = \"/nonexistent/db-password\"\n[secrets.blank]\nfile = \"blank\"\n",
        );
        write(&dir.path().join("blank"), "\n", 0o600);
        let errors = error_lines(c.resolve_secrets_from(Resolve::Agent, &env(&[])));
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(
            errors.iter().any(|e| e
                .starts_with("2:7: [secrets.token] `env`: the variable `DEPLOY_TOKEN` is not set")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e
                    .starts_with("4:8: [secrets.db] `file`: cannot read /nonexistent/db-password")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("6:8: [secrets.blank] is empty")),
            "{errors:?}"
        );
        let errors = errors_of_env_value("");
        assert!(errors[0].contains("is empty"), "{errors:?}");
    }

    fn errors_of_env_value(value: &str) -> Vec<String> {
        let (_dir, mut c) = config("[secrets.token]\nenv = \"DEPLOY_TOKEN\"\n");
        error_lines(c.resolve_secrets_from(Resolve::Agent, &env(&[("DEPLOY_TOKEN", value)])))
    }

    #[test]
    fn declarations_need_one_source_and_grants_a_declared_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("app")).unwrap();
        let text = r#"[secrets.none]
[secrets.two]
env = "A"
file = "b"
[secrets.literal]
value = "hunter2hunter2"
[secrets.path]
credential = "../etc/shadow"

[plugins.c]
source = "builtin:command"
grants = { exec = ["sh"], secrets = ["two", "db-pasword"] }

[apps.web]
version = "1.0.0"
source = { path = "app" }
[apps.web.environments.prod]
run = { command = "./web" }
"#;
        let errors: Vec<String> = Config::parse(&dir.path().join("slipway.toml"), text)
            .unwrap_err()
            .0
            .iter()
            .map(|e| format!("{}:{}: {}", e.line, e.col, e.message))
            .collect();
        let expected = [
            "1:1: [secrets.none] needs one source: `env`, `file` or `credential`",
            "4:8: [secrets.two] has more than one source (`env`, `file`): keep one",
            "6:9: [secrets.literal] `value`: a secret's value never goes in the config",
            "8:14: [secrets.path] `credential` must be a credential name",
            "12:45: `secrets`: no secret `db-pasword` is declared: add [secrets.db-pasword]",
        ];
        assert_eq!(errors.len(), expected.len(), "{errors:#?}");
        for (error, expected) in errors.iter().zip(expected) {
            assert!(error.starts_with(expected), "{error}\nexpected: {expected}");
        }
        assert!(!errors.iter().any(|e| e.contains("hunter2")), "{errors:#?}");
    }

    #[test]
    fn credentials_need_the_systemd_directory_except_in_validate() {
        let (_dir, mut c) = config("[secrets.api]\ncredential = \"api-key\"\n");
        let errors = error_lines(c.resolve_secrets_from(Resolve::Agent, &env(&[])));
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0]
                .starts_with("2:14: [secrets.api] `credential`: $CREDENTIALS_DIRECTORY is not set")
                && errors[0].contains("LoadCredential=api-key:"),
            "{errors:?}"
        );
        c.resolve_secrets_from(Resolve::Validate, &env(&[]))
            .unwrap();
        assert_eq!(c.warnings.len(), 1);
        let warning = c.warnings[0].to_string();
        assert!(
            warning.contains(
                ":2:14: warning: [secrets.api] not read: $CREDENTIALS_DIRECTORY is not set"
            ),
            "{warning}"
        );
        assert!(c.secrets["api"].value.is_none());

        // With the directory set but no such credential: an error even for
        // validate, naming the file and the unit setting.
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().to_str().unwrap().to_string();
        let errors = error_lines(c.resolve_secrets_from(
            Resolve::Validate,
            &env(&[("CREDENTIALS_DIRECTORY", &creds)]),
        ));
        assert!(
            errors[0].contains(&format!("cannot read {creds}/api-key"))
                && errors[0].contains("LoadCredential=api-key:"),
            "{errors:?}"
        );
    }
}

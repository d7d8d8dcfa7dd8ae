//! Secrets, for real: the `slipway` binary reads them from a file and the
//! environment, hands each step only what its plugin is granted (the
//! `command` plugin passes them to a shell as environment variables), and
//! the values never reach the journal or the agent's log. `validate` refuses
//! a secret file others can read and warns of a password written in the
//! config.

use crate::support;

use serde_json::json;
use slipway::store::DeploymentState;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use support::quickstart::{
    Agent, AgentBuilder, App, Env, PluginDef, StepConfig, TestConfig, assert_succeeded, wait_for,
};

const DB_PASSWORD: &str = "pg-Secret-7f3a9c";
const API_TOKEN: &str = "tok-Secret-5b1e2d";
const TOKEN_VAR: &str = "SLIPWAY_E2E_API_TOKEN";

/// A config in a temp dir: `migrate` is granted the database password and
/// echoes it from the build; `release` is granted the API token and echoes
/// it from the deploy, and also prints the password file it was not granted.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("app")).unwrap();
        std::fs::write(dir.path().join("app/README"), "an app\n").unwrap();
        let s = Self { dir };
        std::fs::write(s.secret_file(), format!("{DB_PASSWORD}\n")).unwrap();
        s.chmod(0o600);
        s.save("1.0.0");
        s
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("slipway.toml")
    }

    fn secret_file(&self) -> PathBuf {
        self.dir.path().join("db-password")
    }

    fn chmod(&self, mode: u32) {
        std::fs::set_permissions(self.secret_file(), std::fs::Permissions::from_mode(mode))
            .unwrap();
    }

    fn text(&self, version: &str) -> String {
        let mut config = TestConfig::new();
        config.stop_grace = Some("2s".into());
        config.secrets = vec![
            ("db-password".into(), json!({ "file": "db-password" })),
            ("api-token".into(), json!({ "env": TOKEN_VAR })),
        ];
        config.plugins = vec![
            PluginDef::new(
                "migrate",
                "builtin:command",
                json!({ "exec": ["sh"], "secrets": ["db-password"] }),
            ),
            PluginDef::new(
                "release",
                "builtin:command",
                json!({ "exec": ["sh"], "secrets": ["api-token"] }),
            ),
        ];
        let build = StepConfig::new(
            "migrate",
            json!({
                "run": [["sh", "-c", r#"echo "connecting with $PGPASSWORD""#]],
                "secret_env": { "PGPASSWORD": "db-password" },
            }),
        );
        let deploy = format!(
            r#"echo "token $API_TOKEN"; echo "db $(cat {})"; test -z "$PGPASSWORD""#,
            self.secret_file().display()
        );
        let mut prod = Env::new("prod");
        prod.deploy = Some(StepConfig::new(
            "release",
            json!({ "run": [["sh", "-c", deploy]], "secret_env": { "API_TOKEN": "api-token" } }),
        ));
        config.apps.push(App {
            environments: vec![prod],
            ..App::new("web", version, build)
        });
        config.render()
    }

    fn save(&self, version: &str) {
        let tmp = self.dir.path().join(".slipway.toml.swp");
        std::fs::write(&tmp, self.text(version)).unwrap();
        std::fs::rename(&tmp, self.config()).unwrap();
    }

    fn start_agent(&self) -> Agent {
        AgentBuilder::new(&self.config())
            .env(TOKEN_VAR, API_TOKEN)
            .spawn()
    }

    fn validate(&self) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
            .args(["validate", "-c"])
            .arg(self.config())
            .env(TOKEN_VAR, API_TOKEN)
            .output()
            .expect("running slipway validate");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn journal_file(&self) -> PathBuf {
        self.dir.path().join("state/journal.db")
    }
}

/// Every value of every row of `table`, as text.
fn rows(db: &rusqlite::Connection, table: &str) -> Vec<String> {
    let mut stmt = db.prepare(&format!("SELECT * FROM {table}")).unwrap();
    let columns = stmt.column_count();
    stmt.query_map([], |row| {
        let mut values = Vec::new();
        for i in 0..columns {
            values.push(match row.get_ref(i)? {
                rusqlite::types::ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned(),
                rusqlite::types::ValueRef::Blob(b) => String::from_utf8_lossy(b).into_owned(),
                other => format!("{other:?}"),
            });
        }
        Ok(values.join(" | "))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// The bytes of the journal and its write-ahead log, as text.
fn journal_bytes(journal: &Path) -> String {
    let mut text = String::new();
    for suffix in ["", "-wal"] {
        let file = PathBuf::from(format!("{}{suffix}", journal.display()));
        if let Ok(bytes) = std::fs::read(&file) {
            text.push_str(&String::from_utf8_lossy(&bytes));
        }
    }
    text
}

#[test]
fn granted_secrets_reach_the_commands_and_never_the_journal_or_the_log() {
    let s = Setup::new();
    let agent = s.start_agent();
    let journal = s.journal_file();
    let mut ended = None;
    wait_for(
        "the deployment to end",
        &agent,
        Duration::from_secs(60),
        || {
            ended = slipway::store::Journal::open(&journal)
                .ok()
                .and_then(|j| j.deployments(Some("web"), 1).ok())
                .and_then(|d| d.into_iter().next())
                .filter(|d| d.state != DeploymentState::Running);
            ended.is_some()
        },
    );
    let deployment = ended.unwrap();
    assert_succeeded(&deployment, &agent);

    // Each step saw its secret: the commands printed them, and the journal
    // has the redacted marker where the value was. The deploy step read the
    // password file it was not granted; that is redacted too.
    let db = rusqlite::Connection::open(&journal).unwrap();
    let logs = rows(&db, "step_logs").join("\n");
    for marker in [
        "connecting with [REDACTED:db-password]",
        "token [REDACTED:api-token]",
        "db [REDACTED:db-password]",
    ] {
        assert!(
            logs.contains(marker),
            "no `{marker}` in the step logs:\n{logs}"
        );
    }
    let mut everything = logs;
    for table in ["steps", "deployments"] {
        everything.push_str(&rows(&db, table).join("\n"));
    }
    assert!(
        everything.contains("secret_env"),
        "the spec names the secrets"
    );
    drop(db);
    for value in [DB_PASSWORD, API_TOKEN] {
        assert!(
            !everything.contains(value),
            "{value} in the journal:\n{everything}"
        );
        assert!(
            !journal_bytes(&journal).contains(value),
            "{value} in the journal file's bytes"
        );
    }

    // A secret that stops resolving refuses the edit, located; the last
    // good config stays and nothing is deployed.
    s.chmod(0o644);
    s.save("1.0.1");
    wait_for(
        "the edit to be rejected",
        &agent,
        Duration::from_secs(15),
        || agent.log().contains("config change rejected"),
    );
    let log = agent.log();
    assert!(
        log.contains("slipway.toml:7:8: [secrets.db-password] `file`: ")
            && log.contains("can be read by group or others (mode 0644): run `chmod 600"),
        "{log}"
    );
    let latest = slipway::store::Journal::open(&journal)
        .unwrap()
        .deployments(Some("web"), 1)
        .unwrap();
    assert_eq!(latest[0].version, "1.0.0");

    let log_file = agent.log.clone();
    agent.terminate();
    let log = std::fs::read_to_string(log_file).unwrap();
    assert!(
        log.contains("[REDACTED:db-password]") && log.contains("[REDACTED:api-token]"),
        "{log}"
    );
    for value in [DB_PASSWORD, API_TOKEN] {
        assert!(!log.contains(value), "{value} in the agent's log:\n{log}");
    }
}

#[test]
fn validate_refuses_a_secret_file_others_can_read() {
    let s = Setup::new();
    let (code, out, err) = s.validate();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(": ok (1 apps, 2 plugins)"), "{out}");
    assert!(!err.contains("warning"), "no false alarm: {err}");

    s.chmod(0o640);
    let (code, _, err) = s.validate();
    assert_eq!(code, 2, "{err}");
    let expected = format!(
        "{}:7:8: [secrets.db-password] `file`: {} can be read by group or others (mode 0640): run `chmod 600 {}`",
        s.config().display(),
        s.secret_file().display(),
        s.secret_file().display()
    );
    assert!(err.contains(&expected), "expected {expected}\nin {err}");
    assert!(!err.contains(DB_PASSWORD), "{err}");

    // Without the variable, the env source is the problem, located.
    s.chmod(0o600);
    let out = Command::new(env!("CARGO_BIN_EXE_slipway"))
        .args(["validate", "-c"])
        .arg(s.config())
        .env_remove(TOKEN_VAR)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(
            ":10:7: [secrets.api-token] `env`: the variable `SLIPWAY_E2E_API_TOKEN` is not set"
        ),
        "{err}"
    );
}

#[test]
fn validate_warns_of_a_literal_password_and_still_passes() {
    let s = Setup::new();
    let noop = support::fixture("noop");
    let text = s.text("1.0.0").replace(
        "test -z \"$PGPASSWORD\"']], secret_env = { API_TOKEN = \"api-token\" } } }\n",
        &format!(
            "test -z \"$PGPASSWORD\"']], secret_env = {{ API_TOKEN = \"api-token\" }} }} }}\nhealth = {{ plugin = \"noop\", params = {{ user = \"app\", password = \"hunter2hunter2\" }} }}\n\n[plugins.noop]\nsource = \"{}\"\n",
            noop.display()
        ),
    );
    assert!(
        text.contains("hunter2hunter2"),
        "the test config was edited"
    );
    std::fs::write(s.config(), &text).unwrap();
    let (code, out, err) = s.validate();
    assert_eq!(code, 0, "a warning does not fail validation: {out}{err}");
    let line = text
        .lines()
        .position(|l| l.contains("hunter2hunter2"))
        .unwrap()
        + 1;
    let col = text
        .lines()
        .nth(line - 1)
        .unwrap()
        .find("\"hunter2")
        .unwrap()
        + 1;
    let expected = format!(
        "{}:{line}:{col}: warning: `apps.web.environments.prod.health.params.password` is a literal secret in the config",
        s.config().display()
    );
    assert!(err.contains(&expected), "expected {expected}\nin {err}");
    assert_eq!(err.matches("warning:").count(), 1, "{err}");
    assert!(
        !err.contains("hunter2hunter2"),
        "the warning repeats the value: {err}"
    );
}

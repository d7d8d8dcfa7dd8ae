//! TOML text to the typed model. Walks the parsed document by hand, rather
//! than through serde, so that every problem in the file is collected with
//! its line and column instead of stopping at the first one.

use super::*;
use crate::grants::{DirGrant, HostPattern};
use crate::plugin::{BUILTINS, MAX_MEMORY_BYTES};
use std::ops::Range;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

type Value<'i> = Spanned<DeValue<'i>>;

struct Doc<'a> {
    file: &'a Path,
    text: &'a str,
    base: PathBuf,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigWarning>,
    /// The names under `[secrets]`, for checking `grants.secrets`.
    secret_names: Vec<String>,
}

impl<'a> Doc<'a> {
    fn loc(&self, offset: usize) -> Loc {
        let before = &self.text[..offset.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Loc { line, col }
    }

    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        let Loc { line, col } = self.loc(span.start);
        self.errors.push(ConfigError {
            file: self.file.to_path_buf(),
            line,
            col,
            message: message.into(),
        });
    }

    fn warn(&mut self, span: Range<usize>, message: impl Into<String>) {
        let at = self.loc(span.start);
        self.warnings
            .push(ConfigError::at(self.file, at, message).into());
    }

    /// Report keys of `table` not in `known`; `what` names the table.
    fn known_keys(&mut self, table: &DeTable<'_>, what: &str, known: &[&str]) {
        for key in table.keys() {
            if !known.contains(&key.get_ref().as_ref()) {
                self.error(
                    key.span(),
                    format!(
                        "unknown key `{}` in {what} (expected one of: {})",
                        key.get_ref(),
                        known.join(", ")
                    ),
                );
            }
        }
    }

    fn table<'v, 'i>(&mut self, v: &'v Value<'i>, what: &str) -> Option<&'v DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            other => {
                self.error(
                    v.span(),
                    format!("{what} must be a table, not {}", other.type_str()),
                );
                None
            }
        }
    }

    fn string(&mut self, v: &Value<'_>, what: &str) -> Option<String> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            other => {
                self.error(
                    v.span(),
                    format!("{what} must be a string, not {}", other.type_str()),
                );
                None
            }
        }
    }

    fn integer(&mut self, v: &Value<'_>, what: &str, min: i64) -> Option<i64> {
        let n = match v.get_ref() {
            DeValue::Integer(i) => {
                i64::from_str_radix(&i.as_str().replace('_', ""), i.radix()).ok()
            }
            _ => None,
        };
        match n {
            Some(n) if n >= min => Some(n),
            Some(n) => {
                self.error(v.span(), format!("{what} must be at least {min}, not {n}"));
                None
            }
            None => {
                self.error(v.span(), format!("{what} must be an integer"));
                None
            }
        }
    }

    /// A count of checks (at least 1; it is kept as a `u32`).
    fn count(&mut self, v: &Value<'_>, what: &str) -> Option<u32> {
        let n = self.integer(v, what, 1)?;
        match u32::try_from(n) {
            Ok(n) => Some(n),
            Err(_) => {
                self.error(
                    v.span(),
                    format!("{what} may be at most {}, not {n}", u32::MAX),
                );
                None
            }
        }
    }

    fn strings(&mut self, v: &Value<'_>, what: &str) -> Option<Vec<String>> {
        let DeValue::Array(items) = v.get_ref() else {
            self.error(v.span(), format!("{what} must be an array of strings"));
            return None;
        };
        let mut out = Vec::new();
        for item in items {
            out.push(self.string(item, &format!("each item of {what}"))?);
        }
        Some(out)
    }

    fn string_map(&mut self, v: &Value<'_>, what: &str) -> Option<BTreeMap<String, String>> {
        let table = self.table(v, what)?;
        let mut out = BTreeMap::new();
        for (k, val) in table {
            let s = self.string(val, &format!("{what}.{}", k.get_ref()))?;
            out.insert(k.get_ref().to_string(), s);
        }
        Some(out)
    }

    fn boolean(&mut self, v: &Value<'_>, what: &str) -> Option<bool> {
        match v.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            other => {
                self.error(
                    v.span(),
                    format!("{what} must be true or false, not {}", other.type_str()),
                );
                None
            }
        }
    }

    fn duration(&mut self, v: &Value<'_>, what: &str) -> Option<Duration> {
        let text = self.string(v, what)?;
        match parse_duration(&text) {
            Ok(d) if d > Duration::ZERO => Some(d),
            Ok(_) => {
                self.error(v.span(), format!("{what} must be longer than zero"));
                None
            }
            Err(e) => {
                self.error(v.span(), format!("{what}: {e}"));
                None
            }
        }
    }

    fn path(&self, text: &str) -> PathBuf {
        let p = Path::new(text);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }
}

/// A required key: its value, or an error at the table's position.
fn required<'v, 'i>(
    doc: &mut Doc<'_>,
    table: &'v DeTable<'i>,
    key: &str,
    what: &str,
    at: Range<usize>,
) -> Option<&'v Value<'i>> {
    let v = table.get(key);
    if v.is_none() {
        doc.error(at, format!("{what} needs `{key}`"));
    }
    v
}

/// Parse what can be parsed: the config without the parts in error, and
/// every error. The caller checks the partial config too, so plugin and
/// params problems are reported in the same run as syntax ones.
pub(super) fn parse(file: &Path, text: &str) -> (Option<Config>, Vec<ConfigError>) {
    let mut doc = Doc {
        file,
        text,
        base: base_dir(file),
        errors: Vec::new(),
        warnings: Vec::new(),
        secret_names: Vec::new(),
    };
    let root = match DeTable::parse(text) {
        Ok(root) => root,
        Err(e) => {
            doc.error(
                e.span().unwrap_or(0..0),
                format!("invalid TOML: {}", e.message()),
            );
            return (None, doc.errors);
        }
    };
    let root_span = root.span();
    let root = root.get_ref();
    doc.known_keys(root, "the config", &["agent", "secrets", "plugins", "apps"]);

    let agent = match root.get("agent") {
        Some(v) => agent(&mut doc, v),
        None => Some(default_agent(&doc)),
    };
    // Before the plugins, whose grants name them.
    let mut secrets = BTreeMap::new();
    if let Some(table) = root.get("secrets").and_then(|v| doc.table(v, "`secrets`")) {
        doc.secret_names = table.keys().map(|k| k.get_ref().to_string()).collect();
        for (name, value) in table {
            if let Some(s) = secret(&mut doc, name.get_ref(), value) {
                secrets.insert(name.get_ref().to_string(), s);
            }
        }
    }
    let mut plugins = BTreeMap::new();
    if let Some(table) = root.get("plugins").and_then(|v| doc.table(v, "`plugins`")) {
        for (name, value) in table {
            if let Some(p) = plugin(&mut doc, name.get_ref(), value) {
                plugins.insert(name.get_ref().to_string(), p);
            }
        }
    }
    let mut apps = BTreeMap::new();
    match root.get("apps") {
        Some(v) => {
            if let Some(table) = doc.table(v, "`apps`") {
                for (name, value) in table {
                    if let Some(a) = app(&mut doc, name.get_ref(), name.span(), value) {
                        apps.insert(name.get_ref().to_string(), a);
                    }
                }
            }
        }
        None => doc.error(
            root_span.start..root_span.start,
            "the config has no `[apps.NAME]`: nothing to deploy",
        ),
    }

    for (span, message) in literal_secrets::scan(root, &doc.secret_names) {
        doc.warn(span, message);
    }

    let agent = agent.unwrap_or_else(|| default_agent(&doc));
    doc.errors.sort_by_key(|e| (e.line, e.col));
    doc.warnings.sort_by_key(|w| (w.line, w.col));
    let config = Config {
        file: file.to_path_buf(),
        agent,
        plugins,
        apps,
        secrets,
        warnings: doc.warnings,
    };
    (Some(config), doc.errors)
}

fn default_agent(doc: &Doc<'_>) -> AgentConfig {
    AgentConfig {
        state_dir: doc.path(".slipway"),
        listen: "127.0.0.1:7171".into(),
        allow_remote_api: false,
        stop_grace: Duration::from_secs(10),
    }
}

fn agent(doc: &mut Doc<'_>, v: &Value<'_>) -> Option<AgentConfig> {
    let table = doc.table(v, "`[agent]`")?;
    doc.known_keys(
        table,
        "[agent]",
        &["state_dir", "listen", "stop_grace", "allow_remote_api"],
    );
    let mut agent = default_agent(doc);
    if let Some(v) = table.get("state_dir") {
        let dir = doc.string(v, "`state_dir`")?;
        agent.state_dir = doc.path(&dir);
    }
    if let Some(v) = table.get("listen") {
        let listen = doc.string(v, "`listen`")?;
        if listen.parse::<std::net::SocketAddr>().is_err() {
            doc.error(
                v.span(),
                format!("`listen` must be an address like 127.0.0.1:7171, not `{listen}`"),
            );
        }
        agent.listen = listen;
    }
    if let Some(v) = table.get("stop_grace") {
        agent.stop_grace = doc.duration(v, "`stop_grace`")?;
    }
    if let Some(v) = table.get("allow_remote_api") {
        agent.allow_remote_api = doc.boolean(v, "`allow_remote_api`")?;
    }
    if let (Ok(addr), Some(v)) = (
        agent.listen.parse::<std::net::SocketAddr>(),
        table.get("listen"),
    ) && !addr.ip().is_loopback()
        && !agent.allow_remote_api
    {
        doc.error(
            v.span(),
            format!(
                "`listen` = \"{}\" is not a loopback address: the API would take bearer tokens in clear text over the network. Put a TLS proxy in front and set `allow_remote_api = true` in [agent], or listen on 127.0.0.1",
                agent.listen
            ),
        );
    }
    Some(agent)
}

fn plugin(doc: &mut Doc<'_>, name: &str, v: &Value<'_>) -> Option<PluginConfig> {
    let what = format!("[plugins.{name}]");
    let table = doc.table(v, &what)?;
    doc.known_keys(
        table,
        &what,
        &["source", "sha256", "grants", "timeout", "memory_mb", "warm"],
    );
    let at = doc.loc(v.span().start);
    let source_v = required(doc, table, "source", &what, v.span())?;
    let source_text = doc.string(source_v, "`source`")?;
    let source = match source_text.strip_prefix("builtin:") {
        Some(b) if !BUILTINS.contains(&b) => {
            doc.error(
                source_v.span(),
                format!(
                    "unknown builtin plugin `{b}` (builtins: {})",
                    BUILTINS.join(", ")
                ),
            );
            return None;
        }
        Some(b) => PluginSource::Builtin(b.to_string()),
        None => PluginSource::File(doc.path(&source_text)),
    };
    let sha256 = match table.get("sha256") {
        Some(v) => {
            let s = doc.string(v, "`sha256`")?;
            if s.len() != 64 || !s.chars().all(|c| c.is_ascii_hexdigit()) {
                doc.error(v.span(), "`sha256` must be 64 hex digits");
            }
            Some(s.to_ascii_lowercase())
        }
        None => None,
    };
    let grants = match table.get("grants") {
        Some(v) => grants(doc, v, &format!("{what} grants"))?,
        None => Grants::default(),
    };
    let timeout = match table.get("timeout") {
        Some(v) => Some(doc.duration(v, "`timeout`")?),
        None => None,
    };
    let memory = match table.get("memory_mb") {
        Some(v) => {
            let mb = doc.integer(v, "`memory_mb`", 1)? as usize;
            if mb > MAX_MEMORY_BYTES >> 20 {
                doc.error(
                    v.span(),
                    format!("`memory_mb` may be at most {}", MAX_MEMORY_BYTES >> 20),
                );
            }
            Some(mb << 20)
        }
        None => None,
    };
    let warm = match table.get("warm") {
        Some(v) => doc.boolean(v, "`warm`")?,
        None => true,
    };
    Some(PluginConfig {
        name: name.to_string(),
        source,
        sha256,
        grants,
        timeout,
        memory,
        warm,
        at,
    })
}

fn grants(doc: &mut Doc<'_>, v: &Value<'_>, what: &str) -> Option<Grants> {
    let table = doc.table(v, what)?;
    doc.known_keys(
        table,
        what,
        &["dirs", "dirs_rw", "http", "tcp", "exec", "env", "secrets"],
    );
    let mut g = Grants::default();
    for (key, write) in [("dirs", false), ("dirs_rw", true)] {
        if let Some(v) = table.get(key) {
            for dir in doc.strings(v, &format!("`{key}`"))? {
                g.dirs.push(DirGrant {
                    path: doc.path(&dir),
                    write,
                });
            }
        }
    }
    for key in ["http", "tcp"] {
        let Some(v) = table.get(key) else { continue };
        let DeValue::Array(items) = v.get_ref() else {
            doc.error(
                v.span(),
                format!("`{key}` must be an array of \"host:port\" strings"),
            );
            continue;
        };
        let mut patterns = Vec::new();
        for item in items {
            let Some(text) = doc.string(item, &format!("each item of `{key}`")) else {
                continue;
            };
            match HostPattern::parse(&text) {
                Ok(p) => patterns.push(p),
                Err(e) => doc.error(item.span(), format!("`{key}`: {e}")),
            }
        }
        if key == "http" {
            g.http = patterns
        } else {
            g.tcp = patterns
        }
    }
    if let Some(v) = table.get("exec") {
        g.exec = doc.strings(v, "`exec`")?;
    }
    if let Some(v) = table.get("env") {
        g.env = doc.string_map(v, "`env`")?;
    }
    if let Some(v) = table.get("secrets") {
        g.secrets = doc.strings(v, "`secrets`")?;
        if let DeValue::Array(items) = v.get_ref() {
            for (name, item) in g.secrets.iter().zip(items) {
                if !doc.secret_names.contains(name) {
                    doc.error(
                        item.span(),
                        format!(
                            "`secrets`: no secret `{name}` is declared: add [secrets.{name}] with its source (`env`, `file` or `credential`)"
                        ),
                    );
                }
            }
        }
    }
    Some(g)
}

/// `[secrets.NAME]`: exactly one source. The value is read later
/// ([`Config::read_secrets`]), never taken from the config text.
fn secret(doc: &mut Doc<'_>, name: &str, v: &Value<'_>) -> Option<SecretConfig> {
    let what = format!("[secrets.{name}]");
    let table = doc.table(v, &what)?;
    if let Some(literal) = table.get("value") {
        doc.error(
            literal.span(),
            format!(
                "{what} `value`: a secret's value never goes in the config; name where to read it: `env = \"VAR\"`, `file = \"PATH\"` or `credential = \"NAME\"` (systemd)"
            ),
        );
        return None;
    }
    doc.known_keys(table, &what, &["env", "file", "credential"]);
    let given: Vec<(&str, &Value<'_>)> = ["env", "file", "credential"]
        .into_iter()
        .filter_map(|key| Some((key, table.get(key)?)))
        .collect();
    let (key, source_v) = match given.as_slice() {
        [one] => *one,
        [] => {
            doc.error(
                v.span(),
                format!("{what} needs one source: `env`, `file` or `credential`"),
            );
            return None;
        }
        [_, second, ..] => {
            let keys: Vec<String> = given.iter().map(|(k, _)| format!("`{k}`")).collect();
            doc.error(
                second.1.span(),
                format!(
                    "{what} has more than one source ({}): keep one",
                    keys.join(", ")
                ),
            );
            return None;
        }
    };
    let text = doc.string(source_v, &format!("{what} `{key}`"))?;
    let bad = |why: &str| format!("{what} `{key}` {why}");
    let source = match key {
        "env" if text.is_empty() || text.contains('=') || text.contains('\0') => {
            doc.error(source_v.span(), bad("must be an environment variable name"));
            return None;
        }
        "env" => SecretSource::Env(text),
        "file" if text.is_empty() => {
            doc.error(source_v.span(), bad("must be a path"));
            return None;
        }
        "file" => SecretSource::File(doc.path(&text)),
        _ if text.is_empty() || text.contains('/') || text == "." || text == ".." => {
            doc.error(
                source_v.span(),
                bad("must be a credential name (as in `LoadCredential=NAME:…`), not a path"),
            );
            return None;
        }
        _ => SecretSource::Credential(text),
    };
    Some(SecretConfig {
        name: name.to_string(),
        source,
        at: doc.loc(source_v.span().start),
        value: None,
    })
}

fn app(doc: &mut Doc<'_>, name: &str, name_span: Range<usize>, v: &Value<'_>) -> Option<AppConfig> {
    let what = format!("[apps.{name}]");
    let table = doc.table(v, &what)?;
    doc.known_keys(
        table,
        &what,
        &[
            "version",
            "source",
            "build",
            "keep_releases",
            "environments",
            "notify",
        ],
    );
    let version = required(doc, table, "version", &what, name_span.clone()).and_then(|v| {
        let text = doc.string(v, "`version`")?;
        match Version::parse(&text) {
            Ok(version) => Some(version),
            Err(e) => {
                doc.error(
                    v.span(),
                    format!("`version` `{text}` is not semver (like 1.4.2): {e}"),
                );
                // Keep going with a placeholder so the steps are checked too.
                Some(Version::new(0, 0, 0))
            }
        }
    });
    let source =
        required(doc, table, "source", &what, name_span.clone()).and_then(|v| app_source(doc, v));
    let build = table.get("build").and_then(|v| step(doc, v, "`build`"));
    let keep_releases = match table.get("keep_releases") {
        Some(v) => doc.integer(v, "`keep_releases`", 1).map(|n| n as usize),
        None => Some(5),
    };
    let mut environments = Vec::new();
    match table.get("environments") {
        Some(v) => {
            if let Some(envs) = doc.table(v, "`environments`") {
                if envs.is_empty() {
                    doc.error(
                        v.span(),
                        format!("{what} has no `[apps.{name}.environments.ENV]`"),
                    );
                }
                for (env_name, env_v) in envs {
                    if let Some(e) = environment(doc, name, env_name.get_ref(), env_v) {
                        environments.push((e, env_name.span()));
                    }
                }
            }
        }
        None => doc.error(
            name_span.clone(),
            format!("{what} has no `[apps.{name}.environments.ENV]`"),
        ),
    }
    let notify = table
        .get("notify")
        .map(|v| steps(doc, v, "`notify`"))
        .unwrap_or_default();
    let environments = promotion_order(doc, name, environments)?;
    Some(AppConfig {
        name: name.to_string(),
        version: version?,
        source: source?,
        build,
        keep_releases: keep_releases?,
        environments,
        notify,
    })
}

/// `source`: `{ path = "dir" }` or `{ url = "https://…", sha256 = "…" }`.
fn app_source(doc: &mut Doc<'_>, v: &Value<'_>) -> Option<AppSource> {
    let t = doc.table(v, "`source`")?;
    doc.known_keys(t, "`source`", &["path", "url", "sha256"]);
    match (t.get("path"), t.get("url")) {
        (Some(_), Some(u)) => {
            doc.error(u.span(), "`source` has both `path` and `url`: keep one");
            None
        }
        (None, None) => {
            doc.error(
                v.span(),
                "`source` needs `path` (a directory) or `url` (with `sha256`)",
            );
            None
        }
        (Some(p), None) => {
            if let Some(s) = t.get("sha256") {
                doc.error(
                    s.span(),
                    "`source.sha256` goes with `url`; a `path` source is not pinned",
                );
            }
            let path = doc.string(p, "`source.path`")?;
            let path = doc.path(&path);
            if !path.is_dir() {
                doc.error(
                    p.span(),
                    format!("`source.path` {} is not a directory", path.display()),
                );
            }
            Some(AppSource::Path(path))
        }
        (None, Some(u)) => {
            let url = doc.string(u, "`source.url`")?;
            if let Err(e) = crate::source_url::check_url(&url) {
                doc.error(u.span(), format!("`source.url`: {e}"));
            }
            let Some(s) = t.get("sha256") else {
                doc.error(
                    v.span(),
                    "`source` with `url` needs `sha256` (64 hex digits: `sha256sum FILE`)",
                );
                return None;
            };
            let sha256 = doc.string(s, "`source.sha256`")?;
            if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                doc.error(
                    s.span(),
                    format!("`source.sha256` must be 64 hex digits, not `{sha256}`"),
                );
            }
            Some(AppSource::Url {
                url,
                sha256: sha256.to_ascii_lowercase(),
            })
        }
    }
}

/// Order environments so each follows its `promote_from`; report unknown
/// references and cycles.
fn promotion_order(
    doc: &mut Doc<'_>,
    app: &str,
    envs: Vec<(EnvConfig, Range<usize>)>,
) -> Option<Vec<EnvConfig>> {
    let names: Vec<String> = envs.iter().map(|(e, _)| e.name.clone()).collect();
    let mut ok = true;
    for (e, span) in &envs {
        if let Some(from) = e.promote_from.as_ref().filter(|f| !names.contains(f)) {
            doc.error(
                span.clone(),
                format!(
                    "[apps.{app}.environments.{}] promote_from `{from}`: no such environment",
                    e.name
                ),
            );
            ok = false;
        }
    }
    if !ok {
        // Keep the file order so the steps are still checked.
        return Some(envs.into_iter().map(|(e, _)| e).collect());
    }
    let mut ordered: Vec<EnvConfig> = Vec::new();
    let mut pending = envs;
    while !pending.is_empty() {
        let before = pending.len();
        let (ready, rest): (Vec<_>, Vec<_>) =
            pending
                .into_iter()
                .partition(|(e, _)| match &e.promote_from {
                    None => true,
                    Some(from) => ordered.iter().any(|o| &o.name == from),
                });
        ordered.extend(ready.into_iter().map(|(e, _)| e));
        pending = rest;
        if pending.len() == before {
            let cycle: Vec<&str> = pending.iter().map(|(e, _)| e.name.as_str()).collect();
            doc.error(
                pending[0].1.clone(),
                format!(
                    "[apps.{app}] environments promote from each other in a cycle: {}",
                    cycle.join(" -> ")
                ),
            );
            return None;
        }
    }
    Some(ordered)
}

fn environment(doc: &mut Doc<'_>, app: &str, name: &str, v: &Value<'_>) -> Option<EnvConfig> {
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

/// An array of steps (`pre_deploy = [ { plugin = .., params = .. }, .. ]`),
/// run in order; a bad item is reported and left out.
fn steps(doc: &mut Doc<'_>, v: &Value<'_>, what: &str) -> Vec<StepConfig> {
    let DeValue::Array(items) = v.get_ref() else {
        doc.error(
            v.span(),
            format!("{what} must be an array of steps, like [{{ plugin = \"command\", params = {{ .. }} }}]"),
        );
        return Vec::new();
    };
    items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| step(doc, item, &format!("{what}[{i}]")))
        .collect()
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

fn step(doc: &mut Doc<'_>, v: &Value<'_>, what: &str) -> Option<StepConfig> {
    let table = doc.table(v, what)?;
    doc.known_keys(table, what, &["plugin", "params", "timeout"]);
    step_fields(doc, v, table, what)
}

fn step_fields(
    doc: &mut Doc<'_>,
    v: &Value<'_>,
    table: &DeTable<'_>,
    what: &str,
) -> Option<StepConfig> {
    let plugin = required(doc, table, "plugin", what, v.span())?;
    let plugin = doc.string(plugin, "`plugin`")?;
    let (params, params_at) = match table.get("params") {
        Some(p) => (to_json(p.get_ref()), doc.loc(p.span().start)),
        None => (serde_json::json!({}), doc.loc(v.span().start)),
    };
    let timeout = match table.get("timeout") {
        Some(t) => Some(doc.duration(t, "`timeout`")?),
        None => None,
    };
    Some(StepConfig {
        plugin,
        params,
        timeout,
        at: doc.loc(v.span().start),
        params_at,
    })
}

fn health(doc: &mut Doc<'_>, v: &Value<'_>) -> Option<HealthConfig> {
    let table = doc.table(v, "`health`")?;
    doc.known_keys(
        table,
        "`health`",
        &[
            "plugin",
            "params",
            "timeout",
            "interval",
            "healthy_after",
            "unhealthy_after",
            "bake",
        ],
    );
    let step = step_fields(doc, v, table, "`health`")?;
    let interval = match table.get("interval") {
        Some(v) => doc.duration(v, "`interval`")?,
        None => Duration::from_secs(2),
    };
    let healthy_after = match table.get("healthy_after") {
        Some(v) => doc.count(v, "`healthy_after`")?,
        None => 1,
    };
    let unhealthy_after = match table.get("unhealthy_after") {
        Some(v) => doc.count(v, "`unhealthy_after`")?,
        None => 2,
    };
    let Some(passing) = interval
        .checked_mul(healthy_after)
        .filter(|d| *d <= MAX_DURATION)
    else {
        doc.error(
            v.span(),
            "`interval` × `healthy_after` is longer than 100 years: the release would never pass",
        );
        return None;
    };
    let bake = match table.get("bake") {
        Some(v) => doc.duration(v, "`bake`")?,
        None => passing,
    };
    if bake < passing {
        doc.error(
            v.span(),
            format!(
                "`bake` ({} ms) is shorter than `interval` × `healthy_after` ({} ms): the release could never pass",
                bake.as_millis(),
                passing.as_millis()
            ),
        );
    }
    Some(HealthConfig {
        step,
        interval,
        healthy_after,
        unhealthy_after,
        bake,
    })
}

/// TOML params to the JSON a plugin receives.
fn to_json(v: &DeValue<'_>) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        DeValue::String(s) => J::String(s.to_string()),
        DeValue::Integer(i) => i64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
            .map(J::from)
            .unwrap_or(J::Null),
        DeValue::Float(f) => f
            .as_str()
            .replace('_', "")
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(J::Number)
            .unwrap_or(J::Null),
        DeValue::Boolean(b) => J::Bool(*b),
        DeValue::Datetime(d) => J::String(d.to_string()),
        DeValue::Array(a) => J::Array(a.iter().map(|x| to_json(x.get_ref())).collect()),
        DeValue::Table(t) => J::Object(
            t.iter()
                .map(|(k, x)| (k.get_ref().to_string(), to_json(x.get_ref())))
                .collect(),
        ),
    }
}

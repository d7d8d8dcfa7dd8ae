//! TOML text to the typed model. Walks the parsed document by hand, rather
//! than through serde, so that every problem in the file is collected with
//! its line and column instead of stopping at the first one.

mod apps;
mod doc;
mod environments;
mod plugins;
mod secret;
mod steps;

use super::*;
use apps::app;
use doc::{Doc, Value};
use plugins::plugin;
use secret::secret;
use toml::de::DeTable;

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
        listens: Vec::new(),
        state_dir: None,
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
    doc.state_dir = agent.as_ref().map(|a| a.state_dir.clone());
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
        max_release_bytes: DEFAULT_MAX_RELEASE_MB << 20,
    }
}

fn agent(doc: &mut Doc<'_>, v: &Value<'_>) -> Option<AgentConfig> {
    let table = doc.table(v, "`[agent]`")?;
    doc.known_keys(
        table,
        "[agent]",
        &[
            "state_dir",
            "listen",
            "stop_grace",
            "allow_remote_api",
            "max_release_mb",
        ],
    );
    let mut agent = default_agent(doc);
    if let Some(v) = table.get("max_release_mb") {
        let mb = doc.integer(v, "`max_release_mb`", 1)? as u64;
        agent.max_release_bytes = mb.saturating_mul(1 << 20);
    }
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

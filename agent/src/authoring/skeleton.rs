//! `slipway plugin new`: a working plugin skeleton for one step kind, in
//! Rust, Python or JavaScript — source with `describe()` and a params
//! schema, a `build.sh` that produces `NAME.wasm`, and a README with the
//! build and test commands.
//!
//! Everything a skeleton needs is in this binary: the templates
//! (`templates/`), the `wit/` package (written into Python and JavaScript
//! skeletons, whose toolchains generate bindings from it), the pinned
//! toolchain lock files of the example plugins (`examples/plugins/`) and the
//! workspace's `rust-toolchain.toml`. The one thing it cannot carry is the
//! Rust SDK, which is not on crates.io: a Rust skeleton points at a
//! `plugin-sdk` directory by path (`--sdk`, by default the one this binary
//! was built from, if it is still there).

use crate::cli::CliError;
use crate::runtime::{StepKind, version};
use std::path::{Path, PathBuf};

/// The `wit/` package, as the host implements it.
const WIT_FILES: &[(&str, &str)] = &[
    ("host.wit", include_str!("../../../wit/host.wit")),
    ("steps.wit", include_str!("../../../wit/steps.wit")),
    ("types.wit", include_str!("../../../wit/types.wit")),
    ("worlds.wit", include_str!("../../../wit/worlds.wit")),
    (
        "deps/cli/package.wit",
        include_str!("../../../wit/deps/cli/package.wit"),
    ),
    (
        "deps/clocks/package.wit",
        include_str!("../../../wit/deps/clocks/package.wit"),
    ),
    (
        "deps/filesystem/package.wit",
        include_str!("../../../wit/deps/filesystem/package.wit"),
    ),
    (
        "deps/http/package.wit",
        include_str!("../../../wit/deps/http/package.wit"),
    ),
    (
        "deps/io/package.wit",
        include_str!("../../../wit/deps/io/package.wit"),
    ),
    (
        "deps/random/package.wit",
        include_str!("../../../wit/deps/random/package.wit"),
    ),
    (
        "deps/sockets/package.wit",
        include_str!("../../../wit/deps/sockets/package.wit"),
    ),
];

/// The workspace's toolchain pin (with the `wasm32-wasip2` target), so a
/// Rust skeleton builds with the toolchain the SDK is tested with.
const RUST_TOOLCHAIN: &str = include_str!("../../../rust-toolchain.toml");

/// The example plugins' pinned toolchains: one source of truth for the
/// componentize-py and componentize-js versions a skeleton builds with.
const PY_REQUIREMENTS: &str =
    include_str!("../../../examples/plugins/python-smoke/requirements.txt");
const JS_PACKAGE: &str = include_str!("../../../examples/plugins/js-health/package.json");
const JS_LOCK: &str = include_str!("../../../examples/plugins/js-health/package-lock.json");
/// The root package name in the example's `package.json` and lock file; a
/// skeleton's carries its own name instead.
const JS_EXAMPLE_NAME: &str = "\"name\": \"slipway-example-js-health\"";
const JS_EXAMPLE_DESCRIPTION: &str =
    "\"description\": \"A Slipway health-check plugin in JavaScript (see README.md).\"";

/// Where the SDK was when this binary was built.
const BUILT_SDK: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../plugin-sdk");

/// The languages a skeleton can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Rust,
    Python,
    Js,
}

impl Lang {
    pub const ALL: [Lang; 3] = [Lang::Rust, Lang::Python, Lang::Js];

    pub fn as_str(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "javascript" => Some(Lang::Js),
            _ => Self::ALL.into_iter().find(|l| l.as_str() == text),
        }
    }
}

/// What `slipway plugin new` was asked for, as typed (its flags; the field
/// docs are the `--help` text). The name is also the `describe()` name, the
/// crate or package name, and the name of the `.wasm` file.
#[derive(Debug, Clone, clap::Args)]
pub struct NewOptions {
    /// The plugin's name (lowercase letters, digits, `-`, `_`).
    pub name: String,
    /// The step kind: build, deploy, smoke-test, health-check,
    /// rollback or notify.
    #[arg(long)]
    pub kind: String,
    /// rust, python or js.
    #[arg(long)]
    pub lang: String,
    /// Where to write it (default: ./NAME); must not exist.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Rust only: the plugin-sdk directory of a Slipway checkout (the
    /// SDK is not on crates.io). Default: the one this binary was built
    /// from.
    #[arg(long)]
    pub sdk: Option<PathBuf>,
}

/// Why nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum NewError {
    #[error(
        "plugin name `{0}` is not usable: start with a lowercase letter, then lowercase letters, digits, `-` or `_` (at most 64)"
    )]
    BadName(String),
    #[error(
        "--kind `{0}` is not a step kind (kinds: build, deploy, smoke-test, health-check, rollback, notify)"
    )]
    BadKind(String),
    #[error("--lang `{0}` is not one of: rust, python, js")]
    BadLang(String),
    #[error("{} already exists: choose another --dir (nothing was written)", .0.display())]
    Exists(PathBuf),
    #[error(
        "the Rust SDK is not on crates.io and this binary's copy ({}) is gone: pass --sdk PATH to the plugin-sdk directory of a Slipway checkout",
        .0.display()
    )]
    NoSdk(PathBuf),
    #[error("--sdk {}: {reason}", .path.display())]
    BadSdk { path: PathBuf, reason: String },
    #[error("writing {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<NewError> for CliError {
    /// Bad arguments and an existing directory exit 2; a failed write 1.
    fn from(e: NewError) -> Self {
        let code = if matches!(e, NewError::Io { .. }) {
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

/// One kind's example use, shared by the three languages: what it does,
/// how to try it, how to configure it, and its params.
struct KindDoc {
    what: &'static str,
    try_params: &'static str,
    try_grants: &'static str,
    config: &'static str,
    params: &'static str,
}

const PROBE_PARAMS: &str = "| param | default | meaning |\n| --- | --- | --- |\n| `url` | required | `http://` or `https://` URL to GET; its host and port must be in the plugin's `grants.http` |\n| `expect_status` | `200` | the status that passes |\n| `timeout_ms` | `2000` | connect, first byte and between bytes |";
const RUN_PARAMS: &str = "| param | default | meaning |\n| --- | --- | --- |\n| `program` | required | the program to run (a bare name from `PATH`, or an absolute path); it must be in the plugin's `grants.exec` |\n| `args` | `[]` | its arguments |";

fn kind_doc(kind: StepKind) -> KindDoc {
    match kind {
        StepKind::HealthCheck => KindDoc {
            what: "Healthy while `GET url` answers `expect_status`.",
            try_params: r#"{"url": "http://127.0.0.1:8080/"}"#,
            try_grants: "--grant http=127.0.0.1:8080",
            config: "[plugins.{{name}}]\nsource = \"path/to/{{name}}.wasm\"\ngrants = { http = [\"127.0.0.1:8080\"] }\n\n[apps.web.environments.production]\nhealth = { plugin = \"{{name}}\", params = { url = \"http://127.0.0.1:8080/\" }, interval = \"2s\", healthy_after = 3 }",
            params: PROBE_PARAMS,
        },
        StepKind::SmokeTest => KindDoc {
            what: "Passes when `GET url` answers `expect_status` and, if set, the body contains `expect_body`.",
            try_params: r#"{"url": "http://127.0.0.1:8081/", "expect_body": "ok"}"#,
            try_grants: "--grant http=127.0.0.1:8081",
            config: "[plugins.{{name}}]\nsource = \"path/to/{{name}}.wasm\"\ngrants = { http = [\"127.0.0.1:8081\"] }\n\n[apps.web.environments.staging]\nsmoke = { plugin = \"{{name}}\", params = { url = \"http://127.0.0.1:8081/\", expect_body = \"ok\" } }",
            params: "| param | default | meaning |\n| --- | --- | --- |\n| `url` | required | `http://` or `https://` URL to GET; its host and port must be in the plugin's `grants.http` |\n| `expect_status` | `200` | the status that passes |\n| `expect_body` | none | a substring the body must contain |\n| `timeout_ms` | `2000` | connect, first byte and between bytes |",
        },
        StepKind::Notify => KindDoc {
            what: "POSTs every deployment event (app, environment, deployment_id, version, state, message) as JSON to `url`.",
            try_params: r#"{"url": "http://127.0.0.1:9000/hook"}"#,
            try_grants: "--grant http=127.0.0.1:9000",
            config: "[plugins.{{name}}]\nsource = \"path/to/{{name}}.wasm\"\ngrants = { http = [\"127.0.0.1:9000\"] }\n\n[apps.web]\nnotify = [{ plugin = \"{{name}}\", params = { url = \"http://127.0.0.1:9000/hook\" } }]",
            params: "| param | default | meaning |\n| --- | --- | --- |\n| `url` | required | `http://` or `https://` URL to POST to; its host and port must be in the plugin's `grants.http` |\n| `timeout_ms` | `5000` | connect, first byte and between bytes |",
        },
        StepKind::Build => KindDoc {
            what: "Runs `program` with `args` in the release directory; the directory is the artifact.",
            try_params: r#"{"program": "sh", "args": ["-c", "echo built > built.txt"]}"#,
            try_grants: "--grant exec=sh",
            config: "[plugins.{{name}}]\nsource = \"path/to/{{name}}.wasm\"\ngrants = { exec = [\"make\"] }\n\n[apps.web]\nbuild = { plugin = \"{{name}}\", params = { program = \"make\", args = [\"release\"] } }",
            params: RUN_PARAMS,
        },
        StepKind::Deploy => KindDoc {
            what: "Runs `program` with `args` in the release directory to activate it, with `SLIPWAY_VERSION`, `SLIPWAY_RELEASE_DIR` and `SLIPWAY_ENVIRONMENT` set.",
            try_params: r#"{"program": "sh", "args": ["-c", "echo activating $SLIPWAY_VERSION"]}"#,
            try_grants: "--grant exec=sh",
            config: "[plugins.{{name}}]\nsource = \"path/to/{{name}}.wasm\"\ngrants = { exec = [\"systemctl\"] }\n\n[apps.web.environments.production]\ndeploy = { plugin = \"{{name}}\", params = { program = \"systemctl\", args = [\"restart\", \"web\"] } }",
            params: RUN_PARAMS,
        },
        StepKind::Rollback => KindDoc {
            what: "Runs `program` with `args` to return an environment to its previous release, with `SLIPWAY_PREVIOUS_VERSION` and `SLIPWAY_PREVIOUS_RELEASE_DIR` set.",
            try_params: r#"{"program": "sh", "args": ["-c", "echo back to $SLIPWAY_PREVIOUS_VERSION"]}"#,
            try_grants: "--grant exec=sh --previous-release /tmp",
            config: "[plugins.{{name}}]\nsource = \"path/to/{{name}}.wasm\"\ngrants = { exec = [\"systemctl\"] }\n\n[apps.web.environments.production]\nrollback = { plugin = \"{{name}}\", params = { program = \"systemctl\", args = [\"restart\", \"web\"] } }",
            params: RUN_PARAMS,
        },
    }
}

/// The source template of one kind in one language, and the helper code
/// it needs (outgoing HTTP for checks and notify, `exec` for the others).
fn source_template(lang: Lang, kind: StepKind) -> (&'static str, &'static str) {
    let http = matches!(
        kind,
        StepKind::HealthCheck | StepKind::SmokeTest | StepKind::Notify
    );
    match lang {
        Lang::Rust => (
            match kind {
                StepKind::HealthCheck => include_str!("templates/rust/health-check.rs"),
                StepKind::SmokeTest => include_str!("templates/rust/smoke-test.rs"),
                StepKind::Notify => include_str!("templates/rust/notify.rs"),
                StepKind::Build => include_str!("templates/rust/build.rs"),
                StepKind::Deploy => include_str!("templates/rust/deploy.rs"),
                StepKind::Rollback => include_str!("templates/rust/rollback.rs"),
            },
            "",
        ),
        Lang::Python => (
            match kind {
                StepKind::HealthCheck => include_str!("templates/python/health-check.py"),
                StepKind::SmokeTest => include_str!("templates/python/smoke-test.py"),
                StepKind::Notify => include_str!("templates/python/notify.py"),
                StepKind::Build => include_str!("templates/python/build.py"),
                StepKind::Deploy => include_str!("templates/python/deploy.py"),
                StepKind::Rollback => include_str!("templates/python/rollback.py"),
            },
            if http {
                include_str!("templates/python/http.py")
            } else {
                include_str!("templates/python/exec.py")
            },
        ),
        Lang::Js => (
            match kind {
                StepKind::HealthCheck => include_str!("templates/js/health-check.js"),
                StepKind::SmokeTest => include_str!("templates/js/smoke-test.js"),
                StepKind::Notify => include_str!("templates/js/notify.js"),
                StepKind::Build => include_str!("templates/js/build.js"),
                StepKind::Deploy => include_str!("templates/js/deploy.js"),
                StepKind::Rollback => include_str!("templates/js/rollback.js"),
            },
            if http {
                include_str!("templates/js/http.js")
            } else {
                include_str!("templates/js/exec.js")
            },
        ),
    }
}

/// Fill `{{key}}` placeholders.
fn render(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (key, value) in vars {
        out = out.replace(&format!("{{{{{key}}}}}"), value);
    }
    out
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// `my-check` -> `MyCheck`, the Rust type of the plugin.
fn type_name(name: &str) -> String {
    name.split(['-', '_'])
        .filter(|part| !part.is_empty())
        .map(|part| {
            let mut chars = part.chars();
            let first = chars.next().expect("non-empty").to_ascii_uppercase();
            std::iter::once(first).chain(chars).collect::<String>()
        })
        .collect()
}

/// The version of the WASI packages in `wit/deps` (`wasi:http@0.2.12`):
/// JavaScript imports name it.
fn wasi_version() -> &'static str {
    let http = WIT_FILES
        .iter()
        .find(|(path, _)| *path == "deps/http/package.wit")
        .expect("wasi:http is in wit/deps")
        .1;
    http.lines()
        .find_map(|l| l.trim().strip_prefix("package wasi:http@"))
        .and_then(|v| v.strip_suffix(';'))
        .expect("wit/deps/http names its version")
}

/// The SDK directory a Rust skeleton points at, checked and absolute.
fn sdk_dir(given: Option<&Path>) -> Result<PathBuf, NewError> {
    let Some(path) = given else {
        let built = Path::new(BUILT_SDK);
        return std::fs::canonicalize(built)
            .ok()
            .filter(|p| p.join("Cargo.toml").is_file())
            .ok_or_else(|| NewError::NoSdk(built.to_path_buf()));
    };
    let bad = |reason: String| NewError::BadSdk {
        path: path.to_path_buf(),
        reason,
    };
    let dir = std::fs::canonicalize(path).map_err(|e| bad(e.to_string()))?;
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml"))
        .map_err(|e| bad(format!("no Cargo.toml: {e}")))?;
    if !manifest.contains("name = \"slipway-plugin-sdk\"") {
        return Err(bad(
            "its Cargo.toml is not the slipway-plugin-sdk crate's".into()
        ));
    }
    Ok(dir)
}

/// The files of a skeleton: (path inside the plugin dir, contents,
/// executable).
fn files(
    name: &str,
    kind: StepKind,
    lang: Lang,
    sdk: Option<&Path>,
) -> Vec<(String, String, bool)> {
    let api = version::HOST_API.to_string();
    let doc = kind_doc(kind);
    let wasm = format!("{name}.wasm");
    let try_cmd = format!(
        "./build.sh\nslipway plugin test ./{wasm} --kind {kind} \\\n    --params '{}' \\\n    {}",
        doc.try_params, doc.try_grants
    );
    let sdk_text = sdk.map(|p| p.display().to_string()).unwrap_or_default();
    let sdk_toml = toml::Value::String(sdk_text.clone()).to_string();
    let crate_name = name.replace('-', "_");
    let type_name = type_name(name);
    let config = render(doc.config, &[("name", name)]);
    let vars: Vec<(&str, &str)> = vec![
        ("name", name),
        ("kind", kind.as_str()),
        ("api", &api),
        ("wasi", wasi_version()),
        ("what", doc.what),
        ("try", &try_cmd),
        ("config", &config),
        ("params", doc.params),
        ("sdk", &sdk_toml),
        ("sdk_text", &sdk_text),
        ("crate", &crate_name),
        ("type", &type_name),
    ];
    let (source, helpers) = source_template(lang, kind);
    let source = render(&source.replace("{{helpers}}", helpers), &vars);
    let file = |path: &str, template: &str| (path.to_string(), render(template, &vars), false);
    let mut out = match lang {
        Lang::Rust => vec![
            file("Cargo.toml", include_str!("templates/rust/Cargo.toml")),
            ("rust-toolchain.toml".into(), RUST_TOOLCHAIN.into(), false),
            ("src/lib.rs".into(), source, false),
            file("README.md", include_str!("templates/rust/README.md")),
            file(".gitignore", include_str!("templates/rust/gitignore")),
            (
                "build.sh".into(),
                render(include_str!("templates/rust/build.sh"), &vars),
                true,
            ),
        ],
        Lang::Python => vec![
            ("app.py".into(), source, false),
            ("requirements.txt".into(), PY_REQUIREMENTS.into(), false),
            file("README.md", include_str!("templates/python/README.md")),
            file(".gitignore", include_str!("templates/python/gitignore")),
            (
                "build.sh".into(),
                render(include_str!("templates/python/build.sh"), &vars),
                true,
            ),
        ],
        Lang::Js => {
            let own_name = format!("\"name\": \"{name}\"");
            vec![
                ("plugin.js".into(), source, false),
                (
                    "package.json".into(),
                    JS_PACKAGE.replace(JS_EXAMPLE_NAME, &own_name).replace(
                        JS_EXAMPLE_DESCRIPTION,
                        &format!(
                            "\"description\": \"A Slipway {kind} plugin in JavaScript (see README.md).\""
                        ),
                    ),
                    false,
                ),
                (
                    "package-lock.json".into(),
                    JS_LOCK.replace(JS_EXAMPLE_NAME, &own_name),
                    false,
                ),
                file("build.mjs", include_str!("templates/js/build.mjs")),
                file("README.md", include_str!("templates/js/README.md")),
                file(".gitignore", include_str!("templates/js/gitignore")),
                (
                    "build.sh".into(),
                    render(include_str!("templates/js/build.sh"), &vars),
                    true,
                ),
            ]
        }
    };
    if lang != Lang::Rust {
        for (path, text) in WIT_FILES {
            out.push((format!("wit/{path}"), (*text).to_string(), false));
        }
    }
    out
}

/// Write the skeleton; returns what to tell the author.
pub fn new_plugin(opts: &NewOptions) -> Result<String, NewError> {
    if !valid_name(&opts.name) {
        return Err(NewError::BadName(opts.name.clone()));
    }
    let kind = StepKind::parse(&opts.kind).ok_or_else(|| NewError::BadKind(opts.kind.clone()))?;
    let lang = Lang::parse(&opts.lang).ok_or_else(|| NewError::BadLang(opts.lang.clone()))?;
    let dir = opts
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&opts.name));
    if dir.exists() || dir.is_symlink() {
        return Err(NewError::Exists(dir));
    }
    let sdk = match lang {
        Lang::Rust => Some(sdk_dir(opts.sdk.as_deref())?),
        _ => None,
    };

    // Write into a hidden sibling and rename it into place, so a failure
    // leaves no half-written skeleton behind.
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| NewError::Io { path, source }
    };
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(io(&parent))?;
    let staging = parent.join(format!(
        ".{}.slipway-new-{}",
        dir.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let written = (|| {
        for (path, contents, executable) in files(&opts.name, kind, lang, sdk.as_deref()) {
            let target = staging.join(&path);
            if let Some(p) = target.parent() {
                std::fs::create_dir_all(p).map_err(io(p))?;
            }
            std::fs::write(&target, contents).map_err(io(&target))?;
            if executable {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))
                    .map_err(io(&target))?;
            }
        }
        if dir.exists() {
            return Err(NewError::Exists(dir.clone()));
        }
        std::fs::rename(&staging, &dir).map_err(io(&dir))
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }

    let doc = kind_doc(kind);
    let shown = dir.display();
    let mut out = format!(
        "wrote {shown}: a {kind} plugin in {lang}\n",
        lang = lang.as_str()
    );
    if let Some(sdk) = &sdk {
        out.push_str(&format!("  sdk:    {}\n", sdk.display()));
    }
    out.push_str(&format!(
        "  build:  {shown}/build.sh\n  check:  slipway plugins inspect {shown}/{name}.wasm\n  try:    slipway plugin test {shown}/{name}.wasm --kind {kind} --params '{params}' {grants}\n",
        name = opts.name,
        params = doc.try_params,
        grants = doc.try_grants,
    ));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_skeleton_fills_every_placeholder() {
        let sdk = Path::new("/opt/slipway/plugin-sdk");
        for lang in Lang::ALL {
            for kind in StepKind::ALL {
                for (path, text, _) in files("my-plugin", kind, lang, Some(sdk)) {
                    assert!(
                        !text.contains("{{"),
                        "{} {kind} {path}: {}",
                        lang.as_str(),
                        &text[text.find("{{").unwrap()..]
                            [..40.min(text.len() - text.find("{{").unwrap())]
                    );
                }
            }
        }
        let rust = files("my-plugin", StepKind::Build, Lang::Rust, Some(sdk));
        let manifest = &rust.iter().find(|f| f.0 == "Cargo.toml").unwrap().1;
        assert!(
            manifest.contains("path = \"/opt/slipway/plugin-sdk\""),
            "{manifest}"
        );
        assert!(manifest.contains("\n[workspace]\n"), "{manifest}");
        let lib = &rust.iter().find(|f| f.0 == "src/lib.rs").unwrap().1;
        assert!(lib.contains("export!(MyPlugin: build)"), "{lib}");
    }

    #[test]
    fn toolchain_pins_match_the_build_scripts_and_the_lock_matches_its_package() {
        // build.sh installs into a directory named after these versions.
        assert!(PY_REQUIREMENTS.contains("componentize-py==0.25.1"));
        let js = files("my-plugin", StepKind::HealthCheck, Lang::Js, None);
        let json = |name: &str| -> serde_json::Value {
            serde_json::from_str(&js.iter().find(|f| f.0 == name).unwrap().1).unwrap()
        };
        let (package, lock) = (json("package.json"), json("package-lock.json"));
        let deps = &package["devDependencies"];
        assert_eq!(deps["@bytecodealliance/componentize-js"], "0.23.0");
        // `npm ci` needs the lock to agree with package.json.
        assert_eq!(&lock["packages"][""]["devDependencies"], deps);
        assert_eq!(lock["name"], package["name"]);
        assert_eq!(lock["packages"][""]["name"], package["name"]);
        assert_eq!(package["name"], "my-plugin", "{package}");
        let source = &js.iter().find(|f| f.0 == "plugin.js").unwrap().1;
        assert!(source.contains("'wasi:http/types@0.2."), "{source}");
    }

    #[test]
    fn the_embedded_wit_is_all_of_wit() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit");
        let mut on_disk = Vec::new();
        let mut stack = vec![root.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "wit") {
                    on_disk.push(path.strip_prefix(&root).unwrap().display().to_string());
                }
            }
        }
        on_disk.sort();
        let mut embedded: Vec<String> = WIT_FILES.iter().map(|(p, _)| p.to_string()).collect();
        embedded.sort();
        assert_eq!(embedded, on_disk, "add new wit/ files to WIT_FILES");
    }

    #[test]
    fn names_make_rust_types_and_bad_names_are_refused() {
        assert_eq!(type_name("my-check"), "MyCheck");
        assert_eq!(type_name("db_backup2"), "DbBackup2");
        for bad in ["", "My", "1st", "-x", "a b", "a/b", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert!(valid_name("my-check_2"));
    }
}

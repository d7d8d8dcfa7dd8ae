//! The plugin runtime: loads WebAssembly component plugins and runs one step
//! of one plugin in a fresh, limited sandbox.
//!
//! Why it is built this way:
//! - One `Engine` with the pooling allocator and epoch interruption; one
//!   `Linker` with WASI p2, `wasi:http` and the `slipway:plugin/host`
//!   imports, built once.
//! - Each plugin is compiled once (or loaded from the on-disk cache) and kept
//!   as an `InstancePre`; every step gets a fresh `Store` and instance, so no
//!   state leaks from one step, app or environment to another.
//! - A step gets exactly its grants (directories, hosts, programs, env,
//!   secrets) and its limits (wall time, memory, output and log size).
//!   Whatever the plugin does, only its own step fails.
//!
//! It is not the engine: it knows nothing of apps, environments or the
//! journal. The caller composes grants and limits and decides what a result
//! means.

pub mod builtin;
pub mod cache;
pub mod caps;
pub mod grants;
pub mod limits;
pub mod redact;
mod state;
pub mod version;

pub use cache::CacheOutcome;
pub use caps::log::{Level, LogLine, Source, StepLabels};
pub use grants::{DirGrant, Grants, HostPattern};
pub use limits::Limits;
pub use redact::Redactor;

use cache::CompileCache;
use caps::exec::Exec;
use caps::http::HttpPolicy;
use caps::keepalive::ConnectionPool;
use caps::log::StepLog;
use caps::secret::Secrets;
use semver::Version;
use serde::Serialize;
use state::bindings::exports::slipway::plugin as exports;
use state::bindings::slipway::plugin::types as wit;
use state::{HostCtx, HostImports, Limiter, StepState};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use wasmtime::component::{InstancePre, Linker, ResourceTable, ResourceTableError};
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline,
};
use wasmtime_wasi_http::{WasiHttp, WasiHttpCtx, WasiHttpView};

/// How often the epoch advances; a runaway plugin overshoots its wall-time
/// limit by at most about this much.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Limits for `describe()` at load time: it must be cheap and pure.
fn describe_limits() -> Limits {
    Limits {
        wall_time: Duration::from_secs(5),
        memory_bytes: 256 * 1024 * 1024,
        ..Limits::default()
    }
}

/// Errors loading a plugin. Each names the plugin source and what to do.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{plugin}: cannot read plugin file: {error}")]
    Read {
        plugin: String,
        error: std::io::Error,
    },
    #[error("{plugin}: unknown builtin plugin (builtins: {known})")]
    UnknownBuiltin { plugin: String, known: String },
    #[error(
        "{plugin}: sha256 mismatch: the file is {actual}, the config pins {expected}; rebuild it or update the pin"
    )]
    Sha256Mismatch {
        plugin: String,
        expected: String,
        actual: String,
    },
    #[error("{plugin}: not a valid WebAssembly component: {error}")]
    Compile { plugin: String, error: String },
    #[error("{plugin}: {error}")]
    NotAPlugin { plugin: String, error: String },
    #[error(
        "{plugin}: built for plugin API {plugin_api}, but this agent supports {host_api} (compatible: {host_api_range}); rebuild the plugin against slipway:plugin@{host_api}"
    )]
    IncompatibleApi {
        plugin: String,
        plugin_api: Version,
        host_api: Version,
        host_api_range: String,
    },
    #[error("{plugin}: imports something this agent does not provide: {error}")]
    Link { plugin: String, error: String },
    #[error("{plugin}: describe() failed: {error}")]
    Describe { plugin: String, error: String },
}

pub use slipway_config::plugin::{PluginInfo, PluginSource, StepKind};

/// The WIT `step-kind` as the host's [`StepKind`].
fn kind_from_wit(kind: wit::StepKind) -> StepKind {
    match kind {
        wit::StepKind::Build => StepKind::Build,
        wit::StepKind::Deploy => StepKind::Deploy,
        wit::StepKind::SmokeTest => StepKind::SmokeTest,
        wit::StepKind::HealthCheck => StepKind::HealthCheck,
        wit::StepKind::Rollback => StepKind::Rollback,
        wit::StepKind::Notify => StepKind::Notify,
    }
}

/// Runtime-wide settings.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Compile cache root (`state_dir/cache`); `None` disables it.
    pub cache_dir: Option<PathBuf>,
    /// Concurrent plugin instances (pool slots). Half may be warm: 1024
    /// keeps every environment of 200 apps × 2 warm: with 128 warm (a fresh
    /// instance per check for the rest) the load test took 21% of a core
    /// instead of 14.5%. A slot costs address space, not memory, until used.
    pub max_instances: u32,
    /// Compile plugins in a child process running this program (the
    /// `slipway` binary: `slipway compile-component`, see
    /// [`compile_component_stdio`]) instead of in this process. The agent
    /// does: a compiler's code and working memory then never become part
    /// of a long-running process (7.5 MB of RSS for the builtin plugins),
    /// and a component that crashes the compiler cannot take the agent
    /// with it. `None` (tests, short-lived commands) compiles in-process.
    pub compiler: Option<PathBuf>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            cache_dir: None,
            max_instances: 1024,
            compiler: None,
        }
    }
}

/// The engine settings every compile uses: the runtime's engine adds only
/// its instance allocator, which compiled code does not depend on.
fn engine_config() -> Config {
    let mut wasm = Config::new();
    wasm.wasm_component_model(true).epoch_interruption(true);
    wasm
}

/// `slipway compile-component`: read a component on stdin, write its
/// compiled form (`Engine::precompile_component`, with the runtime's
/// settings) on stdout. Errors go to stderr, exit code 1. Run by a
/// [`Runtime`] whose [`RuntimeConfig::compiler`] names this binary.
pub fn compile_component_stdio() -> i32 {
    use std::io::{Read, Write};
    let mut bytes = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut bytes) {
        eprintln!("reading the component from stdin: {e}");
        return 1;
    }
    let compiled = Engine::new(&engine_config()).and_then(|e| e.precompile_component(&bytes));
    match compiled {
        Ok(compiled) => match std::io::stdout().lock().write_all(&compiled) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("writing the compiled component to stdout: {e}");
                1
            }
        },
        Err(e) => {
            eprintln!("{e:#}");
            1
        }
    }
}

/// The wasmtime engine, linker and compile cache shared by all plugins.
pub struct Runtime {
    engine: Engine,
    linker: Linker<StepState>,
    cache: CompileCache,
    ticker_stop: Arc<AtomicBool>,
    slots: Arc<Slots>,
    http: Arc<ConnectionPool>,
}

/// The instance pool's slots, counted so that a step waits for a free one
/// instead of failing ("maximum concurrent limit reached") when many apps
/// deploy at once, and so that warm instances, which hold a slot between
/// checks, can never take them all: at most half are warm.
struct Slots {
    any: Arc<tokio::sync::Semaphore>,
    warm: Arc<tokio::sync::Semaphore>,
}

impl Slots {
    fn new(max_instances: u32) -> Self {
        let n = max_instances as usize;
        Self {
            any: Arc::new(tokio::sync::Semaphore::new(n)),
            warm: Arc::new(tokio::sync::Semaphore::new(n / 2)),
        }
    }

    /// A slot for one instance; waits while every slot is taken.
    async fn acquire(&self) -> tokio::sync::OwnedSemaphorePermit {
        self.any
            .clone()
            .acquire_owned()
            .await
            .expect("the slot semaphore is never closed")
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

impl Runtime {
    pub fn new(config: &RuntimeConfig) -> Result<Self, String> {
        let mut pool = PoolingAllocationConfig::new();
        let n = config.max_instances;
        pool.total_component_instances(n)
            .total_core_instances(n * 4)
            .total_memories(n * 2)
            .total_tables(n * 4)
            .max_memories_per_component(4)
            .max_tables_per_component(16)
            .max_core_instances_per_component(64)
            .max_memory_size(limits::MAX_MEMORY_BYTES)
            .table_elements(200_000)
            .max_component_instance_size(4 << 20)
            .max_core_instance_size(4 << 20)
            // Reset a slot by rewriting only the pages a step dirtied (found
            // with PAGEMAP_SCAN on Linux 6.7+) instead of unmapping them: the
            // next step pays neither the madvise nor the page faults. Halved
            // the cost of a no-op step (37 -> 18 µs).
            .pagemap_scan(wasmtime::Enabled::Auto)
            .linear_memory_keep_resident(2 << 20)
            .table_keep_resident(64 << 10)
            .async_stack_keep_resident(64 << 10)
            // Slots a step used keep those pages (above) for the next step;
            // bound how many idle slots do so after a burst (200 apps
            // deploying at once), instead of wasmtime's default of 100.
            .max_unused_warm_slots(16);
        let mut wasm = engine_config();
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wasm).map_err(|e| format!("starting wasmtime: {e:#}"))?;

        let mut linker: Linker<StepState> = Linker::new(&engine);
        let link =
            |r: wasmtime::Result<()>, what: &str| r.map_err(|e| format!("linking {what}: {e:#}"));
        link(wasmtime_wasi::p2::add_to_linker_async(&mut linker), "wasi")?;
        link(
            wasmtime_wasi_http::p2::bindings::http::types::add_to_linker::<_, WasiHttp>(
                &mut linker,
                &Default::default(),
                StepState::http,
            ),
            "wasi:http/types",
        )?;
        link(
            state::link_outgoing_handler(&mut linker),
            "wasi:http/outgoing-handler",
        )?;
        link(
            state::bindings::slipway::plugin::host::add_to_linker::<_, HostImports>(
                &mut linker,
                |s| &mut s.host,
            ),
            "slipway:plugin/host",
        )?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (e, stop) = (engine.clone(), ticker_stop.clone());
        std::thread::Builder::new()
            .name("slipway-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    e.increment_epoch();
                }
            })
            .map_err(|e| format!("starting epoch ticker: {e}"))?;

        let cache = CompileCache::new(
            &engine,
            &engine_config(),
            config.cache_dir.as_deref(),
            config.compiler.clone(),
        );
        Ok(Self {
            engine,
            linker,
            cache,
            ticker_stop,
            slots: Arc::new(Slots::new(config.max_instances)),
            http: Arc::default(),
        })
    }

    /// The wasmtime engine (benchmarks compile with it directly).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The compile cache (tests and `plugins inspect` look at it).
    pub fn cache(&self) -> &CompileCache {
        &self.cache
    }

    /// Load, verify and describe a plugin. `sha256` is the config's pin.
    pub async fn load(
        &self,
        source: &PluginSource,
        sha256: Option<&str>,
    ) -> Result<Plugin, LoadError> {
        let src = source.to_string();
        let bytes: std::borrow::Cow<'static, [u8]> = match source {
            PluginSource::Builtin(name) => builtin::get(name)
                .ok_or_else(|| LoadError::UnknownBuiltin {
                    plugin: src.clone(),
                    known: builtin::names().join(", "),
                })?
                .into(),
            PluginSource::File(path) => std::fs::read(path)
                .map_err(|error| LoadError::Read {
                    plugin: src.clone(),
                    error,
                })?
                .into(),
        };
        let actual = cache::sha256_hex(&bytes);
        if let Some(expected) = sha256.filter(|e| !e.eq_ignore_ascii_case(&actual)) {
            return Err(LoadError::Sha256Mismatch {
                plugin: src,
                expected: expected.to_string(),
                actual,
            });
        }

        // Compiling a big component takes seconds of CPU: keep it off the
        // async workers.
        let (engine, cache, sha) = (self.engine.clone(), self.cache.clone(), actual.clone());
        let (component, cache_outcome) =
            tokio::task::spawn_blocking(move || cache.load(&engine, &bytes, &sha))
                .await
                .map_err(|e| LoadError::Compile {
                    plugin: src.clone(),
                    error: e.to_string(),
                })?
                .map_err(|e| LoadError::Compile {
                    plugin: src.clone(),
                    error: format!("{e:#}"),
                })?;

        crate::metrics::metrics()
            .plugin_loads
            .get_or_create(&crate::metrics::CacheLabels {
                outcome: cache_outcome.label().into(),
            })
            .inc();
        let api = version::component_api(&self.engine, &component).map_err(|error| {
            LoadError::NotAPlugin {
                plugin: src.clone(),
                error,
            }
        })?;
        if !version::compatible(&api) {
            return Err(LoadError::IncompatibleApi {
                plugin: src,
                plugin_api: api,
                host_api: version::HOST_API,
                host_api_range: format!("^{}", version::HOST_API),
            });
        }

        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::Link {
                plugin: src.clone(),
                error: format!("{e:#}"),
            })?;
        let exports = Exports::find(&pre).map_err(|error| LoadError::NotAPlugin {
            plugin: src.clone(),
            error,
        })?;

        let mut plugin = Plugin {
            source: source.clone(),
            sha256: actual,
            api_version: api,
            cache: cache_outcome,
            engine: self.engine.clone(),
            pre,
            exports,
            info: None,
            slots: self.slots.clone(),
            http: self.http.clone(),
        };
        let raw = plugin
            .describe()
            .await
            .map_err(|error| LoadError::Describe {
                plugin: src.clone(),
                error,
            })?;
        let exported = plugin.exports.kinds();
        let (info, validator) = PluginInfo::check(
            raw.name,
            raw.version,
            raw.api_version,
            raw.kinds.into_iter().map(kind_from_wit).collect(),
            raw.params_schema,
            raw.description,
            &exported,
        )
        .map_err(|error| LoadError::Describe {
            plugin: src.clone(),
            error,
        })?;
        if !version::compatible(&info.api_version) {
            return Err(LoadError::IncompatibleApi {
                plugin: src,
                plugin_api: info.api_version,
                host_api: version::HOST_API,
                host_api_range: format!("^{}", version::HOST_API),
            });
        }
        plugin.info = Some((info, Arc::new(validator)));
        Ok(plugin)
    }
}

/// The export indices of the step kinds a component implements.
#[derive(Clone)]
struct Exports {
    plugin: exports::plugin::GuestIndices,
    build: Option<exports::build_step::GuestIndices>,
    deploy: Option<exports::deploy_step::GuestIndices>,
    smoke_test: Option<exports::smoke_test_step::GuestIndices>,
    health_check: Option<exports::health_check_step::GuestIndices>,
    rollback: Option<exports::rollback_step::GuestIndices>,
    notify: Option<exports::notify_step::GuestIndices>,
}

impl Exports {
    fn find(pre: &InstancePre<StepState>) -> Result<Self, String> {
        let plugin = exports::plugin::GuestIndices::new(pre)
            .map_err(|e| format!("does not export slipway:plugin/plugin (describe): {e:#}"))?;
        Ok(Self {
            plugin,
            build: exports::build_step::GuestIndices::new(pre).ok(),
            deploy: exports::deploy_step::GuestIndices::new(pre).ok(),
            smoke_test: exports::smoke_test_step::GuestIndices::new(pre).ok(),
            health_check: exports::health_check_step::GuestIndices::new(pre).ok(),
            rollback: exports::rollback_step::GuestIndices::new(pre).ok(),
            notify: exports::notify_step::GuestIndices::new(pre).ok(),
        })
    }

    fn kinds(&self) -> Vec<StepKind> {
        let present = [
            self.build.is_some(),
            self.deploy.is_some(),
            self.smoke_test.is_some(),
            self.health_check.is_some(),
            self.rollback.is_some(),
            self.notify.is_some(),
        ];
        StepKind::ALL
            .into_iter()
            .zip(present)
            .filter_map(|(k, p)| p.then_some(k))
            .collect()
    }
}

/// A release as a step sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ReleaseRef {
    pub version: String,
    pub id: String,
    pub dir: PathBuf,
}

/// What a step is about (the WIT `step-context`, host side).
#[derive(Debug, Clone)]
pub struct StepContext {
    pub app: String,
    pub environment: Option<String>,
    pub release: ReleaseRef,
    pub previous_release: Option<ReleaseRef>,
    pub params: serde_json::Value,
    pub attempt: u32,
}

/// A deployment state change (the WIT `event`), for `notify` steps.
#[derive(Debug, Clone)]
pub struct Event {
    pub app: String,
    pub environment: Option<String>,
    pub deployment_id: String,
    pub version: String,
    pub state: String,
    pub message: String,
}

/// The input of one step call.
#[derive(Debug, Clone)]
pub enum StepInput {
    Step(StepContext),
    Notify {
        event: Event,
        params: serde_json::Value,
    },
}

/// One step to run: the call, and the sandbox it runs in. Its `Debug`
/// names the secrets but never shows their values.
#[derive(Clone)]
pub struct StepRequest {
    pub kind: StepKind,
    pub input: StepInput,
    /// Effective grants (the plugin's, plus what the engine adds, such as
    /// the release directory).
    pub grants: Grants,
    pub limits: Limits,
    /// Values of the secrets this plugin is granted.
    pub secrets: BTreeMap<String, String>,
    /// Redacts every known secret, granted or not.
    pub redactor: Redactor,
    pub labels: StepLabels,
}

impl std::fmt::Debug for StepRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepRequest")
            .field("kind", &self.kind)
            .field("input", &self.input)
            .field("grants", &self.grants)
            .field("limits", &self.limits)
            .field("secrets", &self.secrets.keys().collect::<Vec<_>>())
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

/// Health as a check reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy,
    Unhealthy,
    Unknown,
}

/// What a step returned when it completed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum StepValue {
    Artifact {
        dir: String,
        metadata: Vec<(String, String)>,
    },
    Done,
    Passed {
        report: String,
    },
    Health {
        status: Health,
        message: String,
    },
}

/// Why a step failed. The plugin's own verdict (`Failed`) is distinct from
/// the sandbox stopping it.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize)]
#[serde(tag = "type", content = "message", rename_all = "kebab-case")]
pub enum StepError {
    #[error("{0}")]
    Failed(String),
    #[error("stopped: wall-time limit of {0} ms exceeded")]
    Timeout(u64),
    #[error("stopped: {0}")]
    ResourceLimit(String),
    #[error("plugin crashed: {0}")]
    Trap(String),
    #[error("plugin does not implement `{0}`")]
    NotImplemented(StepKind),
    #[error("could not start the step: {0}")]
    Setup(String),
}

/// The result of one step, with its logs.
#[derive(Debug, Clone)]
pub struct StepOutcome {
    pub result: Result<StepValue, StepError>,
    pub logs: Vec<LogLine>,
    pub duration: Duration,
}

/// A loaded plugin: compiled, checked and described; ready to run steps.
pub struct Plugin {
    pub source: PluginSource,
    pub sha256: String,
    /// API version read from the component's interface names.
    pub api_version: Version,
    /// Whether this load hit the compile cache.
    pub cache: CacheOutcome,
    engine: Engine,
    pre: InstancePre<StepState>,
    exports: Exports,
    info: Option<(PluginInfo, Arc<jsonschema::Validator>)>,
    slots: Arc<Slots>,
    http: Arc<ConnectionPool>,
}

impl Plugin {
    pub fn info(&self) -> &PluginInfo {
        &self.info.as_ref().expect("plugin described at load").0
    }

    /// Check step params against the plugin's schema; one message per
    /// violation, each naming the offending path.
    pub fn validate_params(&self, params: &serde_json::Value) -> Result<(), Vec<String>> {
        let validator = &self.info.as_ref().expect("plugin described at load").1;
        let errors: Vec<String> = validator
            .iter_errors(params)
            .map(|e| {
                let path = e.instance_path().to_string();
                if path.is_empty() {
                    e.to_string()
                } else {
                    format!("{path}: {e}")
                }
            })
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    pub fn implements(&self, kind: StepKind) -> bool {
        self.exports.kinds().contains(&kind)
    }

    async fn describe(&self) -> Result<wit::PluginInfo, String> {
        let request = StepRequest {
            kind: StepKind::Notify,
            input: StepInput::Notify {
                event: Event {
                    app: String::new(),
                    environment: None,
                    deployment_id: String::new(),
                    version: String::new(),
                    state: String::new(),
                    message: String::new(),
                },
                params: serde_json::Value::Null,
            },
            grants: Grants::default(),
            limits: describe_limits(),
            secrets: BTreeMap::new(),
            redactor: Redactor::default(),
            labels: StepLabels {
                plugin: self.source.to_string(),
                kind: "describe".into(),
                ..Default::default()
            },
        };
        let _slot = self.slots.acquire().await;
        let mut sandbox =
            Sandbox::new(&self.engine, &self.http, &request).map_err(|e| e.to_string())?;
        let indices = self.exports.plugin.clone();
        let pre = self.pre.clone();
        let result = sandbox
            .run(&request.limits, async |store| {
                let instance = pre.instantiate_async(&mut *store).await?;
                indices
                    .load(&mut *store, &instance)?
                    .call_describe(&mut *store)
                    .await
            })
            .await;
        result.map_err(|e| e.to_string())
    }

    /// Run one step in a fresh instance. Never panics and never hangs past
    /// the step's wall time; every failure is a `StepError`.
    pub async fn run(&self, request: &StepRequest) -> StepOutcome {
        let started = Instant::now();
        let _slot = self.slots.acquire().await;
        let mut sandbox = match Sandbox::new(&self.engine, &self.http, request) {
            Ok(s) => s,
            Err(e) => {
                return StepOutcome {
                    result: Err(e),
                    logs: Vec::new(),
                    duration: started.elapsed(),
                };
            }
        };
        crate::metrics::metrics()
            .plugin_instantiations
            .get_or_create(&crate::metrics::PluginLabels {
                plugin: request.labels.plugin.clone(),
            })
            .inc();
        let result = self.call(&mut sandbox, request, None).await;
        StepOutcome {
            result: finish_result(request, result),
            logs: sandbox.finish(),
            duration: started.elapsed(),
        }
    }

    /// Run one step in the warm instance kept in `slot`, made on first use.
    ///
    /// For steps called again and again with the same sandbox — health
    /// checks: an interpreted plugin (Python, JavaScript) pays its
    /// instantiation once instead of every second. Isolation policy: an
    /// instance is reused only while everything that shapes its sandbox is
    /// the same (plugin, grants, limits, secrets, app, environment, release,
    /// deployment: the `key`); any error (failure, trap, timeout, limit)
    /// drops it, and so does reaching [`WARM_MAX_CALLS`] calls or half its
    /// output capture; the caller keeps one slot per app and environment,
    /// never shared between apps. The guest's memory does persist between
    /// calls of one slot (its caches, its globals): that is the point.
    /// Warm instances hold at most half the instance pool; when that many
    /// are kept, the step runs in a fresh instance instead (so 400 guarded
    /// environments neither exhaust the pool nor keep 400 memories).
    pub async fn run_warm(&self, slot: &mut Option<Warm>, request: &StepRequest) -> StepOutcome {
        let started = Instant::now();
        if slot
            .as_ref()
            .is_some_and(|w| !w.key.matches(&self.sha256, request))
        {
            *slot = None;
        }
        let mut warm = match slot.take() {
            Some(warm) => warm,
            None => {
                let Ok(warm_slot) = self.slots.warm.clone().try_acquire_owned() else {
                    return self.run(request).await;
                };
                let pool_slot = self.slots.acquire().await;
                let mut sandbox = match Sandbox::new(&self.engine, &self.http, request) {
                    Ok(s) => s,
                    Err(e) => {
                        return StepOutcome {
                            result: Err(e),
                            logs: Vec::new(),
                            duration: started.elapsed(),
                        };
                    }
                };
                let pre = self.pre.clone();
                let instance = sandbox
                    .run(&request.limits, async |store| {
                        pre.instantiate_async(&mut *store).await
                    })
                    .await;
                match instance {
                    Ok(instance) => Warm {
                        key: WarmKey::of(&self.sha256, request),
                        sandbox,
                        instance,
                        calls: 0,
                        seen: (0, 0),
                        _slots: (pool_slot, warm_slot),
                    },
                    Err(e) => {
                        return StepOutcome {
                            result: Err(e),
                            logs: sandbox.finish(),
                            duration: started.elapsed(),
                        };
                    }
                }
            }
        };
        if warm.calls == 0 {
            crate::metrics::metrics()
                .plugin_instantiations
                .get_or_create(&crate::metrics::PluginLabels {
                    plugin: request.labels.plugin.clone(),
                })
                .inc();
        }
        warm.sandbox.rearm(&request.limits);
        let result = self
            .call(&mut warm.sandbox, request, Some(warm.instance))
            .await;
        warm.calls += 1;
        let logs = warm.sandbox.take_logs(&mut warm.seen);
        let keep = result.is_ok()
            && warm.calls < WARM_MAX_CALLS
            && warm.seen.0.max(warm.seen.1) < request.limits.max_log_bytes / 2;
        if keep {
            *slot = Some(warm);
        }
        StepOutcome {
            result: finish_result(request, result),
            logs,
            duration: started.elapsed(),
        }
    }
}

/// A warm instance is recycled after this many calls, whatever happens.
pub const WARM_MAX_CALLS: u32 = 10_000;

/// An instance kept between calls by [`Plugin::run_warm`].
pub struct Warm {
    key: WarmKey,
    sandbox: Sandbox,
    instance: wasmtime::component::Instance,
    calls: u32,
    /// Guest stdout/stderr bytes already taken into earlier calls' logs.
    seen: (usize, usize),
    /// Its pool slot and warm slot, given back after the instance (fields
    /// drop in order).
    _slots: (
        tokio::sync::OwnedSemaphorePermit,
        tokio::sync::OwnedSemaphorePermit,
    ),
}

/// Everything that shapes a step's sandbox; a warm instance serves only
/// requests that match it. Compared field by field on every call: hashing
/// a rendering of the request instead cost 5% of the agent's CPU at 400
/// health checks a second.
#[derive(Debug)]
struct WarmKey {
    plugin_sha256: String,
    kind: StepKind,
    grants: Grants,
    limits: Limits,
    secrets: BTreeMap<String, String>,
    /// The sandbox's log redacts with it: a new secret needs a new sandbox.
    redactor: Redactor,
    /// (release dir, app, environment) of a step; `None` for `notify`.
    context: Option<(PathBuf, String, Option<String>)>,
    labels: StepLabels,
}

impl WarmKey {
    fn of(plugin_sha256: &str, r: &StepRequest) -> Self {
        Self {
            plugin_sha256: plugin_sha256.to_string(),
            kind: r.kind,
            grants: r.grants.clone(),
            limits: r.limits.clone(),
            secrets: r.secrets.clone(),
            redactor: r.redactor.clone(),
            context: Self::context(r),
            labels: r.labels.clone(),
        }
    }

    fn context(r: &StepRequest) -> Option<(PathBuf, String, Option<String>)> {
        match &r.input {
            StepInput::Step(ctx) => Some((
                ctx.release.dir.clone(),
                ctx.app.clone(),
                ctx.environment.clone(),
            )),
            StepInput::Notify { .. } => None,
        }
    }

    fn matches(&self, plugin_sha256: &str, r: &StepRequest) -> bool {
        let context = match (&self.context, &r.input) {
            (Some((dir, app, env)), StepInput::Step(ctx)) => {
                *dir == ctx.release.dir && *app == ctx.app && *env == ctx.environment
            }
            (None, StepInput::Notify { .. }) => true,
            _ => false,
        };
        context
            && self.plugin_sha256 == plugin_sha256
            && self.kind == r.kind
            && self.grants == r.grants
            && self.limits == r.limits
            && self.secrets == r.secrets
            && self.redactor == r.redactor
            && self.labels == r.labels
    }
}

/// A step's result as the caller sees it: strings redacted and capped.
fn finish_result(
    request: &StepRequest,
    result: Result<StepValue, StepError>,
) -> Result<StepValue, StepError> {
    let max = request.limits.max_output_bytes;
    let redact = |s: String| limits::truncate(request.redactor.redact(&s), max);
    match result {
        Ok(StepValue::Passed { report }) => Ok(StepValue::Passed {
            report: redact(report),
        }),
        Ok(StepValue::Health { status, message }) => Ok(StepValue::Health {
            status,
            message: redact(message),
        }),
        Ok(StepValue::Artifact { dir, metadata }) => Ok(StepValue::Artifact {
            dir: redact(dir),
            metadata: metadata
                .into_iter()
                .map(|(k, v)| (redact(k), redact(v)))
                .collect(),
        }),
        Ok(StepValue::Done) => Ok(StepValue::Done),
        Err(StepError::Failed(m)) => Err(StepError::Failed(redact(m))),
        Err(StepError::Trap(m)) => Err(StepError::Trap(redact(m))),
        Err(other) => Err(other),
    }
}

impl Plugin {
    async fn call(
        &self,
        sandbox: &mut Sandbox,
        request: &StepRequest,
        warm: Option<wasmtime::component::Instance>,
    ) -> Result<StepValue, StepError> {
        if !self.implements(request.kind) {
            return Err(StepError::NotImplemented(request.kind));
        }
        let pre = self.pre.clone();
        let ex = self.exports.clone();
        let kind = request.kind;
        let (ctx, notify) = match &request.input {
            StepInput::Step(ctx) => (Some(to_wit_context(ctx)), None),
            StepInput::Notify { event, params } => {
                (None, Some((to_wit_event(event), params.to_string())))
            }
        };
        let missing = || StepError::Setup(format!("a {kind} step needs a step context"));
        if kind == StepKind::Notify && notify.is_none() || kind != StepKind::Notify && ctx.is_none()
        {
            return Err(missing());
        }
        sandbox
            .run(&request.limits, async |store| {
                let instance = match warm {
                    Some(instance) => instance,
                    None => pre.instantiate_async(&mut *store).await?,
                };
                let s = &mut *store;
                let value = match kind {
                    StepKind::Build => {
                        let g = ex
                            .build
                            .as_ref()
                            .expect("checked")
                            .load(&mut *s, &instance)?;
                        g.call_build(&mut *s, ctx.as_ref().expect("checked"))
                            .await?
                            .map(|a| StepValue::Artifact {
                                dir: a.dir,
                                metadata: a.metadata,
                            })
                    }
                    StepKind::Deploy => {
                        let g = ex
                            .deploy
                            .as_ref()
                            .expect("checked")
                            .load(&mut *s, &instance)?;
                        g.call_deploy(&mut *s, ctx.as_ref().expect("checked"))
                            .await?
                            .map(|()| StepValue::Done)
                    }
                    StepKind::SmokeTest => {
                        let g = ex
                            .smoke_test
                            .as_ref()
                            .expect("checked")
                            .load(&mut *s, &instance)?;
                        g.call_smoke_test(&mut *s, ctx.as_ref().expect("checked"))
                            .await?
                            .map(|report| StepValue::Passed { report })
                    }
                    StepKind::HealthCheck => {
                        let g = ex
                            .health_check
                            .as_ref()
                            .expect("checked")
                            .load(&mut *s, &instance)?;
                        let r = g
                            .call_check(&mut *s, ctx.as_ref().expect("checked"))
                            .await?;
                        let status = match r.status {
                            wit::HealthStatus::Healthy => Health::Healthy,
                            wit::HealthStatus::Unhealthy => Health::Unhealthy,
                            wit::HealthStatus::Unknown => Health::Unknown,
                        };
                        Ok(StepValue::Health {
                            status,
                            message: r.message,
                        })
                    }
                    StepKind::Rollback => {
                        let g = ex
                            .rollback
                            .as_ref()
                            .expect("checked")
                            .load(&mut *s, &instance)?;
                        g.call_rollback(&mut *s, ctx.as_ref().expect("checked"))
                            .await?
                            .map(|()| StepValue::Done)
                    }
                    StepKind::Notify => {
                        let g = ex
                            .notify
                            .as_ref()
                            .expect("checked")
                            .load(&mut *s, &instance)?;
                        let (event, params) = notify.as_ref().expect("checked");
                        g.call_notify(&mut *s, event, params)
                            .await?
                            .map(|()| StepValue::Done)
                    }
                };
                Ok(value)
            })
            .await?
            .map_err(StepError::Failed)
    }
}

fn to_wit_release(r: &ReleaseRef) -> wit::Release {
    wit::Release {
        version: r.version.clone(),
        id: r.id.clone(),
        dir: r.dir.to_string_lossy().into_owned(),
    }
}

fn to_wit_context(ctx: &StepContext) -> wit::StepContext {
    wit::StepContext {
        app: ctx.app.clone(),
        environment: ctx.environment.clone(),
        release: to_wit_release(&ctx.release),
        previous_release: ctx.previous_release.as_ref().map(to_wit_release),
        params: ctx.params.to_string(),
        attempt: ctx.attempt,
    }
}

fn to_wit_event(e: &Event) -> wit::Event {
    wit::Event {
        app: e.app.clone(),
        environment: e.environment.clone(),
        deployment_id: e.deployment_id.clone(),
        version: e.version.clone(),
        state: e.state.clone(),
        message: e.message.clone(),
    }
}

/// One step's store and captured stdio.
struct Sandbox {
    store: Store<StepState>,
    stdio: caps::wasi::Stdio,
    log: StepLog,
    timed_out: Arc<AtomicBool>,
    /// When the current call must end; moved forward per call of a warm
    /// instance.
    deadline: Arc<std::sync::Mutex<Instant>>,
}

impl Sandbox {
    fn new(
        engine: &Engine,
        pool: &Arc<ConnectionPool>,
        request: &StepRequest,
    ) -> Result<Self, StepError> {
        let limits = &request.limits;
        if limits.memory_bytes > limits::MAX_MEMORY_BYTES {
            return Err(StepError::Setup(format!(
                "memory limit {} MiB is over the agent's maximum of {} MiB",
                limits.memory_bytes >> 20,
                limits::MAX_MEMORY_BYTES >> 20
            )));
        }
        let log = StepLog::new(
            request.labels.clone(),
            request.redactor.clone(),
            limits.max_log_bytes,
        );
        let (wasi, stdio) =
            caps::wasi::build(&request.grants, limits.max_log_bytes).map_err(StepError::Setup)?;
        let deadline = Instant::now() + limits.wall_time;
        let default_cwd = match &request.input {
            StepInput::Step(ctx) => Some(ctx.release.dir.clone()),
            StepInput::Notify { .. } => None,
        };
        let grants = Arc::new(request.grants.clone());
        let state = StepState {
            wasi,
            http: WasiHttpCtx::new(),
            http_policy: HttpPolicy {
                allowed: Arc::new(request.grants.http.clone()),
                log: log.clone(),
                pool: pool.clone(),
            },
            table: {
                let mut table = ResourceTable::new();
                table.set_max_capacity(limits.max_resources);
                table
            },
            limiter: Limiter {
                memory_bytes: limits.memory_bytes,
                table_elements: 200_000,
                hit: None,
            },
            host: HostCtx {
                log: log.clone(),
                exec: Exec {
                    grants,
                    default_cwd,
                    deadline,
                    max_output_bytes: limits.max_exec_output_bytes,
                    log: log.clone(),
                },
                secrets: Secrets::new(request.secrets.clone()),
            },
        };
        let mut store = Store::new(engine, state);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(1);
        let timed_out = Arc::new(AtomicBool::new(false));
        let flag = timed_out.clone();
        let shared_deadline = Arc::new(std::sync::Mutex::new(deadline));
        let current = shared_deadline.clone();
        store.epoch_deadline_callback(move |_| {
            let deadline = *current.lock().expect("deadline poisoned");
            if Instant::now() >= deadline {
                flag.store(true, Ordering::Relaxed);
                wasmtime::bail!("wall-time limit exceeded");
            }
            // Yield so one busy plugin cannot hog an executor thread.
            Ok(UpdateDeadline::Yield(1))
        });
        Ok(Self {
            store,
            stdio,
            log,
            timed_out,
            deadline: shared_deadline,
        })
    }

    /// Ready a warm instance's sandbox for its next call: a new wall-time
    /// deadline (for the guest and for `exec`).
    fn rearm(&mut self, limits: &Limits) {
        let deadline = Instant::now() + limits.wall_time;
        *self.deadline.lock().expect("deadline poisoned") = deadline;
        self.store.data_mut().host.exec.deadline = deadline;
        self.timed_out.store(false, Ordering::Relaxed);
    }

    /// This call's log lines: what the guest logged, then what it printed
    /// since the last call (`seen` tracks stdout and stderr offsets).
    fn take_logs(&mut self, seen: &mut (usize, usize)) -> Vec<LogLine> {
        let out = self.stdio.stdout.contents();
        let err = self.stdio.stderr.contents();
        self.log
            .push_output(Source::Stdout, out.get(seen.0..).unwrap_or_default());
        self.log
            .push_output(Source::Stderr, err.get(seen.1..).unwrap_or_default());
        *seen = (out.len(), err.len());
        self.log.take_lines()
    }

    /// Run `body` under the step's wall time; classify how it ended.
    async fn run<T>(
        &mut self,
        limits: &Limits,
        body: impl AsyncFnOnce(&mut Store<StepState>) -> wasmtime::Result<T>,
    ) -> Result<T, StepError> {
        // Host calls (exec, http) are not interrupted by epochs; the outer
        // timeout covers them. A little grace lets the epoch trap first.
        let outer = limits.wall_time + Duration::from_millis(200);
        let timeout_ms = limits.wall_time.as_millis() as u64;
        let result = tokio::time::timeout(outer, body(&mut self.store)).await;
        match result {
            Err(_) => Err(StepError::Timeout(timeout_ms)),
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => {
                if self.timed_out.load(Ordering::Relaxed) {
                    return Err(StepError::Timeout(timeout_ms));
                }
                if let Some(hit) = self.store.data().limiter.hit.clone() {
                    return Err(StepError::ResourceLimit(hit));
                }
                if error.chain().any(|e| {
                    matches!(
                        e.downcast_ref::<ResourceTableError>(),
                        Some(ResourceTableError::Full)
                    )
                }) {
                    return Err(StepError::ResourceLimit(format!(
                        "resource limit exceeded: the plugin holds {} host resources (open files, streams, HTTP requests...) at once, the most a step may",
                        limits.max_resources
                    )));
                }
                Err(StepError::Trap(self.describe_trap(&error)))
            }
        }
    }

    /// A trap in words: the root cause, plus what the plugin printed to
    /// stderr last (a Rust panic message lands there).
    fn describe_trap(&self, error: &wasmtime::Error) -> String {
        let root = error.root_cause().to_string();
        let cause = if let Some(trap) = error.downcast_ref::<wasmtime::Trap>() {
            format!("{trap}")
        } else {
            root
        };
        let stderr = String::from_utf8_lossy(&self.stdio.stderr.contents()).into_owned();
        let tail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = tail[tail.len().saturating_sub(3)..].join(" | ");
        if tail.is_empty() {
            cause
        } else {
            format!("{cause}; stderr: {tail}")
        }
    }

    /// The step's log lines, with the guest's stdout/stderr appended.
    fn finish(self) -> Vec<LogLine> {
        self.log
            .push_output(Source::Stdout, &self.stdio.stdout.contents());
        self.log
            .push_output(Source::Stderr, &self.stdio.stderr.contents());
        self.log.lines()
    }
}

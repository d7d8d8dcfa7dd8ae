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
pub mod limits;
mod load;
mod plugin;
mod sandbox;
mod state;
mod step;
pub mod version;
mod warm;
mod wit;

pub use cache::CacheOutcome;
pub use caps::log::{Level, LogLine, Source, StepLabels};
pub use limits::Limits;
pub use load::LoadError;
pub use plugin::Plugin;
pub use slipway_config::grants::{DirGrant, Grants, HostPattern};
pub use slipway_config::plugin::{PluginInfo, PluginSource, StepKind};
pub use slipway_config::redact::Redactor;
pub use step::{
    Event, Health, ReleaseRef, StepContext, StepError, StepInput, StepOutcome, StepRequest,
    StepValue,
};
pub use warm::{WARM_MAX_CALLS, Warm};

use cache::CompileCache;
use caps::keepalive::ConnectionPool;
use state::StepState;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use wasmtime::component::Linker;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch advances; a runaway plugin overshoots its wall-time
/// limit by at most about this much.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Runtime-wide settings.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Compile cache root (`state_dir/cache`); `None` disables it.
    pub cache_dir: Option<PathBuf>,
    /// Concurrent plugin instances (pool slots). Half may be warm: 1024
    /// keeps every environment of 200 apps × 2 warm (what fewer cost:
    /// BENCHMARKS.md, "Where the load goes"). A slot costs address space,
    /// not memory, until used.
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
            .table_elements(limits::TABLE_ELEMENTS)
            .max_component_instance_size(4 << 20)
            .max_core_instance_size(4 << 20)
            // Reset a slot by rewriting only the pages a step dirtied (found
            // with PAGEMAP_SCAN on Linux 6.7+) instead of unmapping them: the
            // next step pays neither the madvise nor the page faults
            // (BENCHMARKS.md, "Where the load goes").
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
        state::link(&mut linker)?;

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
}

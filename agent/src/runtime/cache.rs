//! On-disk compile cache: a restarted agent loads a known plugin without
//! compiling it again.
//!
//! Files are keyed by the component's sha256 under a directory named after
//! the engine (wasmtime version + `Engine::precompile_compatibility_hash`),
//! so a new agent binary or engine setting never reads an old file.
//! Loading uses `Component::deserialize_file` (mmap), which is `unsafe`:
//! it trusts the file. Only files this agent wrote into its own state dir
//! (mode 0700 by the agent) are ever loaded.

use sha2::{Digest, Sha256};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use wasmtime::component::Component;
use wasmtime::{Config, Engine};

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CacheOutcome {
    /// Loaded from the cache; nothing was compiled.
    Hit,
    /// Compiled, and written to the cache.
    Compiled,
    /// Compiled; the cache is disabled or could not be written.
    CompiledUncached,
}

impl CacheOutcome {
    /// The metric label: `hit`, `compiled`, `compiled_uncached`.
    pub fn label(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Compiled => "compiled",
            Self::CompiledUncached => "compiled_uncached",
        }
    }
}

/// The compile cache of one engine.
#[derive(Clone)]
pub struct CompileCache {
    dir: Option<PathBuf>,
    /// The engine's settings, for an engine that compiles one component
    /// and is dropped: cranelift keeps its working memory (5 MB after the
    /// builtin plugins) in the engine that compiled, for good otherwise.
    compiler: Config,
    /// The program that compiles in a child process (see
    /// `RuntimeConfig::compiler`); `None` compiles in this process.
    child: Option<PathBuf>,
}

impl std::fmt::Debug for CompileCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompileCache")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl CompileCache {
    /// A cache under `root` for `engine`, made from `config`; `None`
    /// disables caching. `child` compiles in a child process.
    pub fn new(
        engine: &Engine,
        config: &Config,
        root: Option<&Path>,
        child: Option<PathBuf>,
    ) -> Self {
        let dir = root.map(|root| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            engine.precompile_compatibility_hash().hash(&mut h);
            root.join(format!(
                "wasmtime-{}-{:016x}",
                wasmtime_version(),
                h.finish()
            ))
        });
        let mut compiler = config.clone();
        compiler.allocation_strategy(wasmtime::InstanceAllocationStrategy::OnDemand);
        Self {
            dir,
            compiler,
            child,
        }
    }

    /// This cache's settings under another root (`None`: no cache), for
    /// the same engine.
    pub fn rooted(&self, engine: &Engine, root: Option<&Path>) -> Self {
        Self::new(engine, &self.compiler, root, self.child.clone())
    }

    /// Where the compiled form of a component with this sha256 lives.
    pub fn path_for(&self, sha256: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(format!("{sha256}.cwasm")))
    }

    /// Load from the cache, or compile (and store).
    pub fn load(
        &self,
        engine: &Engine,
        bytes: &[u8],
        sha256: &str,
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        if let Some(path) = self.path_for(sha256).filter(|p| p.exists()) {
            // SAFETY: the file was written by `store` below, into the agent's
            // own state dir, under a key that includes the engine
            // compatibility hash. It is mmapped: it is only ever replaced by
            // rename, never rewritten in place.
            match unsafe { Component::deserialize_file(engine, &path) } {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "discarding unusable compile cache entry");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        let compile_here = || self.install(engine, &self.compile_here(bytes)?, sha256);
        let Some(program) = &self.child else {
            return compile_here();
        };
        let instead = |why: &str, error: String| {
            tracing::warn!(program = %program.display(), error, "{why}; compiling in-process");
            compile_here()
        };
        let child = match Command::new(program)
            .arg(COMPILE_COMMAND)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
        {
            Ok(child) => child,
            // The binary is gone from its path (a package upgrade unlinks
            // the running one: /proc/self/exe reads "... (deleted)"). A new
            // plugin must still load: compile it here.
            Err(e) => {
                return instead(
                    "cannot start the plugin compiler process (was the binary moved or replaced?)",
                    e.to_string(),
                );
            }
        };
        let compiled = compile_in_child(program, child, bytes)?;
        match self.install(engine, &compiled, sha256) {
            Ok(loaded) => Ok(loaded),
            // The binary on disk is not the one running (upgraded in place,
            // the agent not yet restarted): its compiled code does not fit
            // this engine. Compile here rather than fail every new plugin.
            Err(e) => instead(
                "the compiler process's output does not load in this agent (was the binary replaced?)",
                format!("{e:#}"),
            ),
        }
    }

    fn compile_here(&self, bytes: &[u8]) -> wasmtime::Result<Vec<u8>> {
        Engine::new(&self.compiler)?.precompile_component(bytes)
    }

    /// Store `compiled` in the cache (if there is one) and load it.
    fn install(
        &self,
        engine: &Engine,
        compiled: &[u8],
        sha256: &str,
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        if let Some(path) = self.path_for(sha256) {
            match store(compiled, &path) {
                // SAFETY: as above; the file was written just now.
                Ok(()) => match unsafe { Component::deserialize_file(engine, &path) } {
                    Ok(component) => return Ok((component, CacheOutcome::Compiled)),
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "could not load the compile cache entry just written");
                        let _ = std::fs::remove_file(&path);
                    }
                },
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "could not write compile cache entry");
                }
            }
        }
        // SAFETY: compiled just now by an engine with this engine's settings
        // (checked by `deserialize`), by this agent or the child it ran.
        let component = unsafe { Component::deserialize(engine, compiled)? };
        Ok((component, CacheOutcome::CompiledUncached))
    }
}

/// Compile `bytes` with `child`, a `program compile-component` just
/// started with piped stdio (stdin → stdout).
fn compile_in_child(program: &Path, mut child: Child, bytes: &[u8]) -> wasmtime::Result<Vec<u8>> {
    use std::io::Write;
    let mut stdin = child.stdin.take().expect("stdin is piped");
    // The child reads all of stdin before it writes: feed it from another
    // thread anyway, so a child that answers early cannot deadlock us.
    // (A child that dies early breaks the pipe: its exit status says why.)
    let output = std::thread::scope(|scope| {
        scope.spawn(move || stdin.write_all(bytes));
        child.wait_with_output()
    })
    .map_err(|e| wasmtime::format_err!("waiting for the plugin compiler: {e}"))?;
    if output.status.success() {
        return Ok(output.stdout);
    }
    let said = String::from_utf8_lossy(&output.stderr);
    let said = said.trim();
    Err(match output.status.code() {
        Some(_) if !said.is_empty() => wasmtime::format_err!("{said}"),
        _ => wasmtime::format_err!(
            "the plugin compiler `{} {COMPILE_COMMAND}` ended with {}{}",
            program.display(),
            output.status,
            if said.is_empty() {
                String::new()
            } else {
                format!(": {said}")
            }
        ),
    })
}

/// The `slipway` subcommand a child compiler runs.
pub const COMPILE_COMMAND: &str = "compile-component";

/// Write atomically: a crash mid-write leaves a temp file, never a torn entry.
fn store(bytes: &[u8], path: &Path) -> wasmtime::Result<()> {
    let dir = path.parent().expect("cache path has a parent");
    std::fs::create_dir_all(dir)?;
    // A name of its own per write: plugins compile in parallel, the same
    // one maybe twice at once, and a file another load has mmapped must
    // never be truncated under it (SIGBUS) — only replaced by rename.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().expect("cache path has a file name");
    let tmp = dir.join(format!(
        ".{}.{}.{n}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn wasmtime_version() -> &'static str {
    // Cargo.toml pins wasmtime exactly; keep this in step with it.
    "48.0.8"
}

/// Hex sha256 of plugin bytes: the identity of a plugin everywhere.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

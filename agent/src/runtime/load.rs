//! Loading a plugin: read it (a file or a builtin), check its pinned
//! sha256, compile it (or take it from the cache), check its API version and
//! its imports, and ask it to describe itself. `LoadError` says which of
//! those failed, for which plugin, and what to do.

use super::wit::Exports;
use super::{Plugin, PluginInfo, PluginSource, Runtime, builtin, cache, version};
use semver::Version;
use std::sync::Arc;

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

impl Runtime {
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
            raw.kinds,
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

//! The checks that need the plugins themselves: every plugin loads (sha256,
//! API version, describe), every step names a declared plugin that
//! implements its kind, and every step's params pass the plugin's schema.
//! A typo fails `slipway validate`, not a production deploy.

use super::*;
use crate::runtime::{Plugin, Runtime, StepKind};
use std::sync::Arc;

/// The loaded plugins of a config, by name.
pub type Plugins = BTreeMap<String, Arc<Plugin>>;

/// Load every plugin and check every step against it.
pub async fn check(config: &Config, runtime: &Runtime) -> Result<Plugins, ConfigErrors> {
    let mut errors = Vec::new();
    let error = |errors: &mut Vec<ConfigError>, at: Loc, message: String| {
        errors.push(ConfigError {
            file: config.file.clone(),
            line: at.line,
            col: at.col,
            message,
        })
    };
    let mut plugins = Plugins::new();
    for (name, p) in &config.plugins {
        match runtime.load(&p.source, p.sha256.as_deref()).await {
            Ok(plugin) => {
                plugins.insert(name.clone(), Arc::new(plugin));
            }
            Err(e) => error(&mut errors, p.at, format!("[plugins.{name}]: {e}")),
        }
    }
    for app in config.apps.values() {
        let mut steps: Vec<(String, StepKind, &StepConfig)> = Vec::new();
        if let Some(b) = &app.build {
            steps.push((format!("[apps.{}] build", app.name), StepKind::Build, b));
        }
        for (i, s) in app.notify.iter().enumerate() {
            let what = format!("[apps.{}] notify[{i}]", app.name);
            steps.push((what, StepKind::Notify, s));
        }
        for env in &app.environments {
            let at = |s: &str| format!("[apps.{}.environments.{}] {s}", app.name, env.name);
            let kinds = [
                (&env.deploy, StepKind::Deploy, "deploy"),
                (&env.smoke, StepKind::SmokeTest, "smoke"),
                (&env.rollback, StepKind::Rollback, "rollback"),
            ];
            for (step, kind, key) in kinds {
                if let Some(s) = step {
                    steps.push((at(key), kind, s));
                }
            }
            if let Some(h) = &env.health {
                steps.push((at("health"), StepKind::HealthCheck, &h.step));
            }
            for (i, s) in env.pre_deploy.iter().enumerate() {
                steps.push((at(&format!("pre_deploy[{i}]")), StepKind::Deploy, s));
            }
            for (i, s) in env.on_rollback.iter().enumerate() {
                steps.push((at(&format!("on_rollback[{i}]")), StepKind::Rollback, s));
            }
        }
        for (what, kind, step) in steps {
            let Some(plugin) = plugins.get(&step.plugin) else {
                if !config.plugins.contains_key(&step.plugin) {
                    let hint = if crate::runtime::builtin::get(&step.plugin).is_some() {
                        format!(
                            " (it is a builtin: declare it with `[plugins.{0}] source = \"builtin:{0}\"` and its grants)",
                            step.plugin
                        )
                    } else {
                        String::new()
                    };
                    error(
                        &mut errors,
                        step.at,
                        format!("{what}: no plugin `{}` in [plugins]{hint}", step.plugin),
                    );
                }
                continue;
            };
            if !plugin.implements(kind) {
                let kinds: Vec<&str> = plugin.info().kinds.iter().map(|k| k.as_str()).collect();
                error(
                    &mut errors,
                    step.at,
                    format!(
                        "{what}: plugin `{}` does not implement {kind} (it implements: {})",
                        step.plugin,
                        kinds.join(", ")
                    ),
                );
                continue;
            }
            if let Err(problems) = plugin.validate_params(&step.params) {
                for problem in problems {
                    error(
                        &mut errors,
                        step.params_at,
                        format!("{what}: params for `{}`: {problem}", step.plugin),
                    );
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(plugins)
    } else {
        errors.sort_by_key(|e| (e.line, e.col));
        Err(ConfigErrors(errors))
    }
}

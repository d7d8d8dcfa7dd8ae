//! Prometheus metrics, served as text at `GET /metrics`.
//!
//! One registry per process ([`metrics()`]): the runtime, the engine and the
//! config watcher count into it wherever the event happens, without threading
//! a handle through every call. Names and labels are documented in
//! `docs/api.md`; they are part of the interface operators build alerts on.

use crate::vocab::{EnvOutcome, Verdict};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::LazyLock;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeploymentLabels {
    pub app: String,
    /// The environment, or `build` for a deployment that failed before any.
    pub env: String,
    /// An [`EnvOutcome`]: started, succeeded, failed, rolled-back, cancelled.
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StepMetricLabels {
    /// A `StepRole`: build, pre-deploy, deploy, smoke-test, health-check, ...
    pub kind: String,
    pub plugin: String,
    /// A [`Verdict`]: ok, healthy, unhealthy, unknown, failed, timeout, ...
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealthLabels {
    pub app: String,
    pub env: String,
    /// A [`Verdict`].
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HealthSkipLabels {
    pub app: String,
    pub env: String,
    /// overrun, not_settled, journal, release_unknown, release_dir_missing.
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    pub plugin: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// hit, compiled, compiled_uncached.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// accepted or rejected.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotifyLabels {
    pub app: String,
    pub plugin: String,
}

fn step_histogram() -> Histogram {
    // 0.5 ms (a warm wasm health check) to 10 min (a long build).
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0, 300.0, 600.0,
    ])
}

/// Every metric the agent exports.
pub struct Metrics {
    registry: Registry,
    pub deployments: Family<DeploymentLabels, Counter>,
    pub step_duration: Family<StepMetricLabels, Histogram, fn() -> Histogram>,
    pub health_checks: Family<HealthLabels, Counter>,
    pub health_checks_skipped: Family<HealthSkipLabels, Counter>,
    pub plugin_instantiations: Family<PluginLabels, Counter>,
    pub plugin_loads: Family<CacheLabels, Counter>,
    pub config_reloads: Family<ResultLabels, Counter>,
    pub notifications_failed: Family<NotifyLabels, Counter>,
    pub api_requests_unauthorized: Counter,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("slipway");
        let m = Self {
            deployments: Family::default(),
            step_duration: Family::new_with_constructor(step_histogram as fn() -> Histogram),
            health_checks: Family::default(),
            health_checks_skipped: Family::default(),
            plugin_instantiations: Family::default(),
            plugin_loads: Family::default(),
            config_reloads: Family::default(),
            notifications_failed: Family::default(),
            api_requests_unauthorized: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "deployments",
            "Deployment transitions per app and environment (started, succeeded, failed, rolled-back, cancelled)",
            m.deployments.clone(),
        );
        registry.register(
            "step_duration_seconds",
            "Wall time of plugin steps by kind, plugin and result",
            m.step_duration.clone(),
        );
        registry.register(
            "health_checks",
            "Health check results per app and environment (during bakes and after)",
            m.health_checks.clone(),
        );
        registry.register(
            "health_checks_skipped",
            "Health checks the guard did not make when due, per app, environment and reason",
            m.health_checks_skipped.clone(),
        );
        registry.register(
            "plugin_instantiations",
            "Plugin instances created (one per step)",
            m.plugin_instantiations.clone(),
        );
        registry.register(
            "plugin_loads",
            "Plugin loads by compile-cache outcome (hit: no compilation)",
            m.plugin_loads.clone(),
        );
        registry.register(
            "config_reloads",
            "Config changes seen by the watcher, accepted or rejected",
            m.config_reloads.clone(),
        );
        registry.register(
            "notifications_failed",
            "Notify steps that failed (they never fail a deployment)",
            m.notifications_failed.clone(),
        );
        registry.register(
            "api_requests_unauthorized",
            "API requests refused for a missing or wrong token",
            m.api_requests_unauthorized.clone(),
        );
        Self { registry, ..m }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// What happened to `env` in a deployment of `app` (`env` is `build`
    /// for a deployment that failed before any environment).
    pub fn deployment(&self, app: &str, env: &str, state: EnvOutcome) {
        self.deployments
            .get_or_create(&DeploymentLabels {
                app: app.into(),
                env: env.into(),
                state: state.as_str().into(),
            })
            .inc();
    }

    pub fn step(&self, kind: &str, plugin: &str, result: Verdict, took: Duration) {
        self.step_metric(kind, plugin, result)
            .observe(took.as_secs_f64());
    }

    /// The duration histogram of (kind, plugin, result), to keep for
    /// steps run again and again (the health guard's).
    pub fn step_metric(&self, kind: &str, plugin: &str, result: Verdict) -> Histogram {
        self.step_duration
            .get_or_create(&StepMetricLabels {
                kind: kind.into(),
                plugin: plugin.into(),
                result: result.as_str().into(),
            })
            .clone()
    }

    pub fn health(&self, app: &str, env: &str, result: Verdict) {
        self.health_metric(app, env, result).inc();
    }

    /// The check counter of (app, env, result), to keep.
    pub fn health_metric(&self, app: &str, env: &str, result: Verdict) -> Counter {
        self.health_checks
            .get_or_create(&HealthLabels {
                app: app.into(),
                env: env.into(),
                result: result.as_str().into(),
            })
            .clone()
    }

    /// `n` checks of (app, env) that were due and not made, and why.
    pub fn health_skipped(&self, app: &str, env: &str, reason: &str, n: u64) {
        self.health_checks_skipped
            .get_or_create(&HealthSkipLabels {
                app: app.into(),
                env: env.into(),
                reason: reason.into(),
            })
            .inc_by(n);
    }

    pub fn reload(&self, accepted: bool) {
        let result = if accepted { "accepted" } else { "rejected" };
        self.config_reloads
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }

    pub fn notification_failed(&self, app: &str, plugin: &str) {
        self.notifications_failed
            .get_or_create(&NotifyLabels {
                app: app.into(),
                plugin: plugin.into(),
            })
            .inc();
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_counters_and_histograms_with_labels() {
        let m = Metrics::new();
        m.deployment("web", "staging", EnvOutcome::Started);
        m.deployment("web", "production", EnvOutcome::RolledBack);
        m.step(
            "health-check",
            "http-check",
            Verdict::Healthy,
            Duration::from_millis(3),
        );
        m.reload(false);
        let text = m.encode();
        assert!(
            text.contains(
                r#"slipway_deployments_total{app="web",env="staging",state="started"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"slipway_deployments_total{app="web",env="production",state="rolled-back"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"slipway_step_duration_seconds_bucket{le="0.005",kind="health-check",plugin="http-check",result="healthy"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"slipway_config_reloads_total{result="rejected"} 1"#),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}

//! Warm instances: a plugin instance kept between calls of the same step
//! (health checks), reused only while everything that shapes its sandbox
//! is the same, and dropped on any error.

use super::plugin::finish_result;
use super::sandbox::Sandbox;
use super::{
    Grants, Limits, Plugin, Redactor, StepInput, StepKind, StepLabels, StepOutcome, StepRequest,
};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

impl Plugin {
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
                    Err(e) => return StepOutcome::not_run(e, started.elapsed()),
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
/// requests that match it. Compared field by field on every call, which is
/// cheaper than hashing a rendering of the request (BENCHMARKS.md, "Where
/// the load goes").
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

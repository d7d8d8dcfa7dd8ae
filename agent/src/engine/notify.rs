//! Deployment notifications: every state change of a deployment (started,
//! promoted, waiting-approval, succeeded, failed, rolled-back, cancelled) is
//! told to the app's `notify` steps.
//!
//! Why it is built this way:
//! - Telling someone must never hold up or fail a deployment. Events go into
//!   a per-app queue, and one background task per app delivers them in the
//!   order they happened. A receiver that hangs delays only that app's later
//!   notifications, never a deploy step.
//! - Each delivery is a plugin step like any other: the plugin's grants,
//!   secrets and limits (no release directory: a notification has nothing to
//!   read on disk), journaled as a `notify` step of the deployment, so the
//!   history shows who was told and whether it worked.
//! - A failed delivery is logged and counted
//!   (`slipway_notifications_failed_total`) and that is all: retrying is the
//!   plugin's business (the `webhook` plugin retries on its own).
//! - An event is delivered with the config in force when it happened, so a
//!   config edit cannot change what an already queued event does.
//!
//! It is not the journal: the deployment's record is written by the
//! pipeline before its event is queued here.

use super::Desired;
use super::pipeline::{finish_step, log_outcome};
use crate::config::StepConfig;
use crate::runtime::{
    Event, Limits, StepError, StepInput, StepKind, StepLabels, StepOutcome, StepRequest,
};
use crate::store::Journal;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Default wall time of a notify step: room for the webhook plugin's
/// default three attempts of 5 s each, with their delays.
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(60);

/// Events waiting per app. Far more than a deployment makes; when a
/// receiver is so slow that it fills up, newer events are dropped (and
/// logged) rather than held in memory or allowed to block the deployment.
const QUEUE_LENGTH: usize = 256;

/// A deployment state change, as `notify` steps see it (`event.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// A deployment of a new version started (before its build).
    Started,
    /// An environment passed its gates and runs the new release.
    Promoted,
    /// The deployment waits at an environment's manual gate.
    WaitingApproval,
    /// Every environment runs the new release.
    Succeeded,
    /// The deployment failed; nothing was rolled back.
    Failed,
    /// An environment was put back on its last good release (a failed gate,
    /// the health guard, or an operator).
    RolledBack,
    /// A manual gate was not passed (timeout, or a newer config).
    Cancelled,
}

impl State {
    /// How a deployment that tried a rollback ended: `rolled-back` if the
    /// environment is back on a good release, `failed` if not.
    pub fn after_rollback(rolled_back: bool) -> Self {
        if rolled_back {
            State::RolledBack
        } else {
            State::Failed
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Started => "started",
            State::Promoted => "promoted",
            State::WaitingApproval => "waiting-approval",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::RolledBack => "rolled-back",
            State::Cancelled => "cancelled",
        }
    }
}

/// One event to deliver, with the config it happened under.
struct Delivery {
    desired: Desired,
    deployment: i64,
    event: Event,
}

struct Queue {
    events: mpsc::Sender<Delivery>,
    task: JoinHandle<()>,
}

/// The per-app notification queues; lives in the engine's `Shared`.
pub(crate) struct Notifier {
    journal: Arc<Journal>,
    queues: Mutex<HashMap<String, Queue>>,
}

impl Notifier {
    pub(crate) fn new(journal: Arc<Journal>) -> Self {
        Self {
            journal,
            queues: Mutex::new(HashMap::new()),
        }
    }

    /// Queue `state` of `deployment` for the app's `notify` steps and return
    /// at once. `version` is the version the deployment is about (a rollback
    /// names the version it replaced); `message` says why, for a failure.
    pub(crate) fn send(
        &self,
        desired: &Desired,
        deployment: i64,
        environment: Option<&str>,
        version: &str,
        state: State,
        message: impl Into<String>,
    ) {
        if desired.app.notify.is_empty() {
            return;
        }
        let app = desired.app.name.clone();
        let mut delivery = Delivery {
            desired: desired.clone(),
            deployment,
            event: Event {
                app: app.clone(),
                environment: environment.map(str::to_string),
                deployment_id: deployment.to_string(),
                version: version.to_string(),
                state: state.as_str().to_string(),
                message: message.into(),
            },
        };
        let mut queues = self.queues.lock().expect("notify queues poisoned");
        // Twice at most: a queue whose task has gone is replaced once.
        for _ in 0..2 {
            let queue = queues
                .entry(app.clone())
                .or_insert_with(|| self.start_queue(&app));
            match queue.events.try_send(delivery) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::warn!(app = %app, deployment, state = state.as_str(),
                        "notification dropped: {QUEUE_LENGTH} notifications of this app are still waiting (is a receiver hanging?)");
                    for step in &desired.app.notify {
                        notification_failed(&app, &step.plugin);
                    }
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(d)) => {
                    delivery = d;
                    queues.remove(&app);
                }
            }
        }
    }

    fn start_queue(&self, app: &str) -> Queue {
        let (events, mut rx) = mpsc::channel::<Delivery>(QUEUE_LENGTH);
        let journal = self.journal.clone();
        let app = app.to_string();
        let task = tokio::spawn(async move {
            while let Some(delivery) = rx.recv().await {
                deliver(&journal, &delivery).await;
            }
            tracing::debug!(app = %app, "notification queue closed");
        });
        Queue { events, task }
    }

    /// At agent stop: let the queued notifications go out for up to
    /// `grace`, then stop. A delivery cut short is journaled `interrupted`.
    pub(crate) async fn shutdown(&self, grace: Duration) {
        let queues: Vec<Queue> = {
            let mut queues = self.queues.lock().expect("notify queues poisoned");
            queues.drain().map(|(_, q)| q).collect()
        };
        let deadline = tokio::time::Instant::now() + grace;
        for Queue { events, mut task } in queues {
            // Without a sender the task ends once its queue is empty.
            drop(events);
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!(
                    "stopping with notifications not yet delivered (waited {} s)",
                    grace.as_secs()
                );
                task.abort();
                let _ = task.await;
            }
        }
    }
}

/// Tell every `notify` step of the app about one event, in order.
async fn deliver(journal: &Journal, delivery: &Delivery) {
    for step in &delivery.desired.app.notify {
        let outcome = deliver_to(journal, delivery, step).await;
        if let Err(e) = &outcome.result {
            let app = &delivery.desired.app.name;
            tracing::warn!(app = %app, deployment = delivery.deployment, plugin = %step.plugin,
                state = %delivery.event.state, error = %e, "notification failed");
            notification_failed(app, &step.plugin);
        }
    }
}

/// The hook for counting failed notifications (by app and plugin).
fn notification_failed(app: &str, plugin: &str) {
    crate::metrics::metrics().notification_failed(app, plugin);
}

/// Run one `notify` step, journaled as a step of the deployment.
async fn deliver_to(journal: &Journal, delivery: &Delivery, step: &StepConfig) -> StepOutcome {
    let Delivery {
        desired,
        deployment,
        event,
    } = delivery;
    let environment = event.environment.as_deref();
    let open = journal
        .start_step(*deployment, environment, "notify", &step.plugin, 1)
        .map_err(|e| tracing::error!(error = %e, "could not journal a notify step"))
        .ok()
        .map(|id| OpenStep { journal, id });
    let (Some(plugin), Some(plugin_cfg)) = (
        desired.plugins.get(&step.plugin),
        desired.config.plugins.get(&step.plugin),
    ) else {
        let outcome = StepOutcome {
            result: Err(StepError::Setup(format!(
                "plugin `{}` is not loaded",
                step.plugin
            ))),
            logs: Vec::new(),
            duration: Duration::ZERO,
        };
        if let Some(open) = open {
            open.finish(&outcome);
        }
        return outcome;
    };
    let request = StepRequest {
        kind: StepKind::Notify,
        input: StepInput::Notify {
            event: event.clone(),
            params: step.params.clone(),
        },
        // Only the plugin's own grants: there is no release to read.
        grants: plugin_cfg.grants.clone(),
        limits: Limits {
            wall_time: step
                .timeout
                .or(plugin_cfg.timeout)
                .unwrap_or(NOTIFY_TIMEOUT),
            memory_bytes: plugin_cfg.memory.unwrap_or(Limits::default().memory_bytes),
            ..Limits::default()
        },
        secrets: desired.config.step_secrets(&plugin_cfg.grants.secrets),
        redactor: desired.config.redactor(),
        labels: StepLabels {
            plugin: step.plugin.clone(),
            kind: StepKind::Notify.as_str().to_string(),
            app: desired.app.name.clone(),
            environment: environment.unwrap_or_default().to_string(),
            deployment: deployment.to_string(),
        },
    };
    let outcome = plugin.run(&request).await;
    log_outcome(plugin, &request, &outcome);
    let (result, _) = super::pipeline::describe(&outcome);
    crate::metrics::metrics().step("notify", &step.plugin, result, outcome.duration);
    if let Some(open) = open {
        open.finish(&outcome);
    }
    outcome
}

/// A journaled notify step not finished yet. If its delivery is dropped
/// (the agent stops while a receiver hangs), the step is closed as
/// `interrupted` rather than left open in the history.
struct OpenStep<'a> {
    journal: &'a Journal,
    id: i64,
}

impl OpenStep<'_> {
    fn finish(self, outcome: &StepOutcome) {
        finish_step(self.journal, self.id, outcome);
        // Finished: nothing left for `drop` to close.
        std::mem::forget(self);
    }
}

impl Drop for OpenStep<'_> {
    fn drop(&mut self) {
        let _ = self.journal.finish_step(
            self.id,
            "interrupted",
            "the agent stopped before this notification was delivered",
            &[],
        );
    }
}

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
//! It is only a queue: the deployment's record is written by the
//! deployment before its event is queued here, and the step itself is run,
//! journaled and measured by the step runner (`steps.rs`).

use super::desired::Desired;
use super::steps::{Runner, StepCall, Subject};
use crate::config::StepConfig;
use crate::runtime::{Event, StepOutcome};
use crate::vocab::{NotifyState, StepRole};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Events waiting per app. Far more than a deployment makes; when a
/// receiver is so slow that it fills up, newer events are dropped (and
/// logged) rather than held in memory or allowed to block the deployment.
const QUEUE_LENGTH: usize = 256;

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
    steps: Arc<Runner>,
    queues: Mutex<HashMap<String, Queue>>,
}

impl Notifier {
    pub(crate) fn new(steps: Arc<Runner>) -> Self {
        Self {
            steps,
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
        state: NotifyState,
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
        let steps = self.steps.clone();
        let app = app.to_string();
        let task = tokio::spawn(async move {
            while let Some(delivery) = rx.recv().await {
                deliver(&steps, &delivery).await;
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
async fn deliver(steps: &Runner, delivery: &Delivery) {
    for step in &delivery.desired.app.notify {
        let outcome = deliver_to(steps, delivery, step).await;
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

/// Run one `notify` step, journaled as a step of the deployment: only the
/// plugin's own grants, since there is no release to read. A delivery cut
/// short (the agent stops while a receiver hangs) is journaled
/// `interrupted` (see `steps::Runner::run`).
async fn deliver_to(steps: &Runner, delivery: &Delivery, step: &StepConfig) -> StepOutcome {
    let call = StepCall {
        desired: &delivery.desired,
        deployment: Some(delivery.deployment),
        env: delivery.event.environment.as_deref(),
        role: StepRole::Notify,
        step,
        on: Subject::Event(&delivery.event),
    };
    steps.run(&call).await
}

//! What every part of the engine works with: the handles the app workers share (journal, step runner, supervisor,
//! notifier, approvals, the cap on deployments at once).
//!
//! It holds state and no decisions; every other engine module may use it
//! and it uses none of them but the step runner and the notifier it holds.

use super::notify::Notifier;
use super::steps::Runner;
use crate::store::Journal;
use crate::supervisor::Supervisor;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// How many deployments run at once: eight per core, at least 16. Most of
/// a deployment is waiting (bakes, smoke retries), so the cap is well above
/// the cores, and low enough that deployments do not starve their own bake
/// checks (BENCHMARKS.md, "Where the load goes"). The others wait their
/// turn (a deployment waiting at a manual gate does not hold a turn).
pub fn parallel_deployments() -> usize {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    (8 * cores).max(16)
}

/// Shared by the app workers.
pub(crate) struct Shared {
    pub journal: Arc<Journal>,
    /// Runs, journals and measures every plugin step.
    pub steps: Arc<Runner>,
    /// The runtime of the health guard's checks (see `guard::ChecksThread`).
    pub checks: tokio::runtime::Handle,
    pub supervisor: Arc<Supervisor>,
    pub state_dir: PathBuf,
    /// Deployments waiting at a manual gate, per (app, environment).
    pub approvals: Mutex<HashMap<(String, String), Approval>>,
    /// Tells each app's `notify` steps of its deployments, off their path.
    pub notifier: Notifier,
    /// Deployments running at once (`parallel_deployments`).
    pub deploying: Arc<tokio::sync::Semaphore>,
    /// The traffic layer of this state dir (`slipway proxy`).
    pub traffic: crate::traffic::Control,
    /// What serves each (app, environment) with `traffic` (`switch.rs`).
    /// Held while the table is sent, so changes reach the proxy in order.
    pub routes: tokio::sync::Mutex<BTreeMap<(String, String), crate::traffic::Route>>,
    /// The traffic layer's figures, sampled for `slipway status` (`switch::sample`).
    pub samples:
        Mutex<std::collections::VecDeque<(tokio::time::Instant, crate::traffic::ProxyStatus)>>,
}

impl Shared {
    pub(crate) fn new(
        journal: Arc<Journal>,
        supervisor: Arc<Supervisor>,
        state_dir: PathBuf,
        checks: tokio::runtime::Handle,
    ) -> Self {
        let steps = Arc::new(Runner::new(journal.clone()));
        Self {
            notifier: Notifier::new(steps.clone()),
            steps,
            checks,
            supervisor,
            state_dir: state_dir.clone(),
            approvals: Mutex::new(HashMap::new()),
            deploying: Arc::new(tokio::sync::Semaphore::new(parallel_deployments())),
            traffic: crate::traffic::Control::new(&state_dir, std::env::current_exe().ok()),
            routes: tokio::sync::Mutex::new(BTreeMap::new()),
            samples: Mutex::new(std::collections::VecDeque::new()),
            journal,
        }
    }

    /// The deployment waiting for approval before `env`, if any.
    pub(crate) fn pending_approval(&self, app: &str, env: &str) -> Option<PendingApproval> {
        let approvals = self.approvals.lock().expect("approvals poisoned");
        approvals
            .get(&(app.to_string(), env.to_string()))
            .map(|a| a.info.clone())
    }
}

/// A deployment waiting for `slipway approve` before an environment.
pub(crate) struct Approval {
    pub info: PendingApproval,
    pub approve: tokio::sync::oneshot::Sender<()>,
}

/// What the API shows of a waiting deployment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingApproval {
    pub deployment: i64,
    pub version: String,
    pub release: String,
    /// Waiting since, ms since the epoch.
    pub since: i64,
    /// Cancelled at, ms since the epoch, if the gate has a timeout.
    pub deadline: Option<i64>,
}

//! One step's sandbox: the wasmtime `Store` with its grants and limits,
//! the captured stdio and log, the wall-time deadline, and how a call that
//! ended badly is classified (timeout, resource limit, trap).

use super::caps::keepalive::ConnectionPool;
use super::caps::log::StepLog;
use super::state::{Setup, StepState};
use super::{Limits, LogLine, Source, StepError, StepRequest, caps, limits};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use wasmtime::component::ResourceTableError;
use wasmtime::{Engine, Store, UpdateDeadline};

/// One step's store and captured stdio.
pub(super) struct Sandbox {
    store: Store<StepState>,
    stdio: caps::wasi::Stdio,
    log: StepLog,
    timed_out: Arc<AtomicBool>,
    /// When the current call must end; moved forward per call of a warm
    /// instance.
    deadline: Arc<std::sync::Mutex<Instant>>,
}

impl Sandbox {
    pub(super) fn new(
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
        let setup = Setup {
            request,
            log: &log,
            deadline,
            pool,
        };
        let state = StepState::new(&setup, wasi);
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
    pub(super) fn rearm(&mut self, limits: &Limits) {
        let deadline = Instant::now() + limits.wall_time;
        *self.deadline.lock().expect("deadline poisoned") = deadline;
        self.store.data_mut().exec.deadline = deadline;
        self.timed_out.store(false, Ordering::Relaxed);
    }

    /// This call's log lines: what the guest logged, then what it printed
    /// since the last call (`seen` tracks stdout and stderr offsets).
    pub(super) fn take_logs(&mut self, seen: &mut (usize, usize)) -> Vec<LogLine> {
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
    pub(super) async fn run<T>(
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
        // Redacted whole before it is cut into lines, so a secret that
        // spans lines is caught (the result is redacted again later).
        let stderr = self
            .log
            .redactor()
            .redact(&String::from_utf8_lossy(&self.stdio.stderr.contents()));
        let tail: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = tail[tail.len().saturating_sub(3)..].join(" | ");
        if tail.is_empty() {
            cause
        } else {
            format!("{cause}; stderr: {tail}")
        }
    }

    /// The step's log lines, with the guest's stdout/stderr appended.
    pub(super) fn finish(self) -> Vec<LogLine> {
        self.log
            .push_output(Source::Stdout, &self.stdio.stdout.contents());
        self.log
            .push_output(Source::Stderr, &self.stdio.stderr.contents());
        self.log.lines()
    }
}

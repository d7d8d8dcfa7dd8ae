//! The proxy's control socket: one JSON request line, one JSON answer line
//! per connection. [`Control`] is the agent's end.
//!
//! A handover is the one longer exchange (successor S, running proxy P):
//! S sends `{"op":"handover"}`; P answers with the routes and, attached,
//! one listening socket per route; S says `taken`; P stops accepting,
//! removes the control socket's path and says `released`; S binds the path.
//! If S goes away before `taken`, P never stopped serving.

use super::fds;
use super::{ProxyStatus, Route};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

/// Longest request or answer line.
const MAX_LINE: usize = 4 << 20;
/// How long each side of a handover waits for the other's next word.
const HANDOVER_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub(super) enum Request {
    /// Make the routes exactly these.
    Apply {
        routes: Vec<Route>,
    },
    Status,
    /// A newer proxy asks for the listeners.
    Handover,
    /// Stop accepting, drain, exit (the agent's Ctrl-C).
    Stop,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct Answer {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ProxyStatus>,
}

impl Answer {
    pub fn ok() -> Self {
        Self {
            ok: true,
            ..Self::default()
        }
    }
    pub fn error(error: String) -> Self {
        Self {
            ok: false,
            error: Some(error),
            status: None,
        }
    }
    pub fn status(status: ProxyStatus) -> Self {
        Self {
            ok: true,
            status: Some(status),
            error: None,
        }
    }
}

/// What the handover message carries beside the descriptors.
#[derive(Serialize, Deserialize)]
struct Handover {
    routes: Vec<Route>,
    /// The route each attached descriptor listens for, in order.
    sockets: Vec<String>,
}

/// Why the agent could not talk to the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no traffic layer answers on {}", .0.display())]
    NotRunning(PathBuf),
    #[error("talking to the traffic layer on {}: {source}", .socket.display())]
    Io {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("the traffic layer answered: {0}")]
    Refused(String),
    #[error("cannot start the traffic layer ({}): {why}; see {}", .program.display(), .log.display())]
    Start {
        program: PathBuf,
        log: PathBuf,
        why: String,
    },
}

/// The agent's handle on the proxy of its state dir.
#[derive(Debug, Clone)]
pub struct Control {
    state_dir: PathBuf,
    socket: PathBuf,
    /// The binary to start a proxy with when none runs (`None`: never start one).
    program: Option<PathBuf>,
}

impl Control {
    pub fn new(state_dir: &Path, program: Option<PathBuf>) -> Self {
        Self {
            state_dir: state_dir.to_path_buf(),
            socket: super::socket_path(state_dir),
            program,
        }
    }

    /// Make the proxy's routes exactly `routes`.
    pub async fn apply(&self, routes: Vec<Route>) -> Result<(), ControlError> {
        self.call(&Request::Apply { routes }).await.map(|_| ())
    }

    pub async fn status(&self) -> Result<ProxyStatus, ControlError> {
        let answer = self.call(&Request::Status).await?;
        answer
            .status
            .ok_or_else(|| ControlError::Refused("a status answer without a status".into()))
    }

    /// Ask the proxy to drain and exit.
    pub async fn stop(&self) -> Result<(), ControlError> {
        self.call(&Request::Stop).await.map(|_| ())
    }

    /// The running proxy's status; one is started (detached: its own
    /// process group, so it outlives this agent and a terminal's Ctrl-C)
    /// when none answers.
    pub async fn ensure(&self) -> Result<ProxyStatus, ControlError> {
        match self.status().await {
            Err(ControlError::NotRunning(_)) => {}
            other => return other,
        }
        let Some(program) = &self.program else {
            return Err(ControlError::NotRunning(self.socket.clone()));
        };
        let log = super::log_path(&self.state_dir);
        let start_err = |why: String| ControlError::Start {
            program: program.clone(),
            log: log.clone(),
            why,
        };
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).map_err(|e| start_err(e.to_string()))?;
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| start_err(e.to_string()))?;
        let err = out.try_clone().map_err(|e| start_err(e.to_string()))?;
        let mut child = tokio::process::Command::new(program)
            .arg("proxy")
            .arg("--state-dir")
            .arg(&self.state_dir)
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| start_err(e.to_string()))?;
        tracing::info!(pid = child.id(), log = %log.display(), "started the traffic layer (slipway proxy)");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match self.status().await {
                Ok(status) => return Ok(status),
                Err(ControlError::NotRunning(_)) if tokio::time::Instant::now() < deadline => {}
                Err(e) => return Err(e),
            }
            if let Ok(Some(exit)) = child.try_wait() {
                return Err(start_err(format!("it exited at once ({exit})")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One request and its answer. A proxy that is handing over has no
    /// control socket for a moment: connecting is retried for a while.
    async fn call(&self, req: &Request) -> Result<Answer, ControlError> {
        let io = |source| ControlError::Io {
            socket: self.socket.clone(),
            source,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_millis(1500);
        let stream = loop {
            match tokio::net::UnixStream::connect(&self.socket).await {
                Ok(s) => break s,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                    ) =>
                {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(ControlError::NotRunning(self.socket.clone()));
                    }
                    tokio::time::sleep(Duration::from_millis(25)).await;
                }
                Err(e) => return Err(io(e)),
            }
        };
        let mut stream = tokio::io::BufReader::new(stream);
        let mut line = serde_json::to_vec(req).expect("requests serialize");
        line.push(b'\n');
        let exchange = async {
            stream.get_mut().write_all(&line).await?;
            let mut answer = String::new();
            (&mut stream)
                .take(MAX_LINE as u64)
                .read_line(&mut answer)
                .await?;
            Ok::<_, std::io::Error>(answer)
        };
        let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
            .await
            .map_err(|_| io(std::io::Error::other("no answer within 10 s")))?
            .map_err(io)?;
        let answer: Answer = serde_json::from_str(&answer).map_err(|e| {
            ControlError::Refused(format!(
                "an answer that does not parse ({e}): is it the same slipway version?"
            ))
        })?;
        if !answer.ok {
            return Err(ControlError::Refused(answer.error.unwrap_or_default()));
        }
        Ok(answer)
    }
}

/// Bind the control socket (owner only). After a handover, first wait for
/// the predecessor to say it released the path.
pub(super) async fn bind(
    socket: &Path,
    predecessor: Option<std::os::unix::net::UnixStream>,
) -> Result<tokio::net::UnixListener, String> {
    if let Some(stream) = predecessor {
        let released = tokio::task::spawn_blocking(move || {
            stream.set_read_timeout(Some(HANDOVER_WAIT))?;
            let mut word = String::new();
            std::io::BufReader::new(&stream).read_line(&mut word)?;
            Ok::<_, std::io::Error>(word.trim() == "released")
        })
        .await
        .map_err(|e| e.to_string())?;
        if !matches!(released, Ok(true)) {
            tracing::warn!("the old proxy did not say it released the control socket; taking it");
            let _ = std::fs::remove_file(socket);
        }
    }
    let listener = tokio::net::UnixListener::bind(socket).map_err(|e| {
        format!(
            "cannot listen on the control socket {}: {e}",
            socket.display()
        )
    })?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot make {} private: {e}", socket.display()))?;
    Ok(listener)
}

/// Read one request line; `Err` is what to answer.
pub(super) async fn read_request(
    stream: &mut tokio::io::BufReader<tokio::net::UnixStream>,
) -> Result<Request, String> {
    let mut line = String::new();
    let read = tokio::time::timeout(
        Duration::from_secs(10),
        (&mut *stream).take(MAX_LINE as u64).read_line(&mut line),
    )
    .await;
    match read {
        Ok(Ok(_)) => serde_json::from_str(&line).map_err(|e| format!("bad request: {e}")),
        Ok(Err(e)) => Err(format!("cannot read the request: {e}")),
        Err(_) => Err("no request within 10 s".into()),
    }
}

pub(super) async fn write_answer(
    stream: &mut tokio::io::BufReader<tokio::net::UnixStream>,
    answer: &Answer,
) {
    let mut line = serde_json::to_vec(answer).expect("answers serialize");
    line.push(b'\n');
    let _ = stream.get_mut().write_all(&line).await;
}

/// What a successor takes over: the routes, each route's listening socket,
/// and its end of the handover connection (the old proxy says `released`
/// on it once the control socket's path is free).
pub(super) type TakenOver = (
    Vec<Route>,
    Vec<(String, OwnedFd)>,
    Option<std::os::unix::net::UnixStream>,
);

/// The successor's side: ask, receive the listeners, say `taken`.
pub(super) fn receive_handover(
    mut stream: std::os::unix::net::UnixStream,
    socket: &Path,
) -> Result<TakenOver, String> {
    let failed =
        |e: std::io::Error| format!("taking over from the proxy on {}: {e}", socket.display());
    stream
        .set_read_timeout(Some(HANDOVER_WAIT))
        .map_err(failed)?;
    let mut ask = serde_json::to_vec(&Request::Handover).expect("requests serialize");
    ask.push(b'\n');
    stream.write_all(&ask).map_err(failed)?;
    let (data, fds) = fds::recv(&stream, MAX_LINE).map_err(failed)?;
    let handover: Handover = serde_json::from_slice(&data).map_err(|e| {
        format!(
            "the running proxy on {} answered a handover with something else ({e}): is it an older slipway? stop it, then start this one",
            socket.display()
        )
    })?;
    if handover.sockets.len() != fds.len() {
        return Err(format!(
            "the running proxy named {} sockets and sent {}",
            handover.sockets.len(),
            fds.len()
        ));
    }
    stream.write_all(b"taken\n").map_err(failed)?;
    let fds = handover.sockets.into_iter().zip(fds).collect();
    Ok((handover.routes, fds, Some(stream)))
}

/// The running proxy's side: send the listeners; once the successor has
/// them, give up the control socket's path.
pub(super) fn send_handover(
    stream: std::os::unix::net::UnixStream,
    routes: &[Route],
    sockets: &[(String, i32)],
    socket: &Path,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(HANDOVER_WAIT))?;
    let message = Handover {
        routes: routes.to_vec(),
        sockets: sockets.iter().map(|(name, _)| name.clone()).collect(),
    };
    let data = serde_json::to_vec(&message).expect("a handover serializes");
    let raw: Vec<i32> = sockets.iter().map(|(_, fd)| *fd).collect();
    fds::send(&stream, &data, &raw)?;
    let mut word = String::new();
    std::io::BufReader::new(&stream).read_line(&mut word)?;
    if word.trim() != "taken" {
        return Err(std::io::Error::other(format!(
            "the successor answered {:?} instead of taken",
            word.trim()
        )));
    }
    std::fs::remove_file(socket)?;
    (&stream).write_all(b"released\n")?;
    Ok(())
}

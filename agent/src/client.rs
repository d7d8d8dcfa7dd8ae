//! The CLI's side of the API: where the agent listens, its token, and JSON
//! requests with errors a person can act on.
//!
//! The address and token are found, in order, from `--api` / `--token-file`,
//! `SLIPWAY_API` / `SLIPWAY_TOKEN`, then the config's state dir (the agent
//! writes `api-address` when it starts; `api-token` holds the token).

use crate::api::view::ErrorBody;
use crate::cli::CliError;
use crate::config::Config;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How to reach the agent, as given on the command line.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// The config file (for its state dir and `listen`).
    pub config: PathBuf,
    /// `--api`: base URL or host:port.
    pub api: Option<String>,
    /// `--token-file`.
    pub token_file: Option<PathBuf>,
}

/// A connected-to-be client.
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
}

fn usage(message: impl Into<String>) -> CliError {
    CliError {
        message: message.into(),
        code: 2,
    }
}

impl Client {
    pub fn new(target: &Target) -> Result<Self, CliError> {
        let api = target
            .api
            .clone()
            .or_else(|| std::env::var("SLIPWAY_API").ok().filter(|s| !s.is_empty()));
        let token_env = std::env::var("SLIPWAY_TOKEN")
            .ok()
            .filter(|s| !s.is_empty());
        // The config is read only when something is still missing.
        let state_dir = || -> Result<(PathBuf, String), CliError> {
            let config = Config::load(&target.config).map_err(|e| {
                usage(format!(
                    "{e}\n(the CLI reads the config to find the agent; pass -c FILE, or --api and --token-file)"
                ))
            })?;
            Ok((config.agent.state_dir, config.agent.listen))
        };
        let base = match api {
            Some(api) => api,
            None => {
                let (dir, listen) = state_dir()?;
                std::fs::read_to_string(dir.join("api-address"))
                    .map(|s| s.trim().to_string())
                    .unwrap_or(listen)
            }
        };
        let base = if base.starts_with("http://") || base.starts_with("https://") {
            base.trim_end_matches('/').to_string()
        } else {
            format!("http://{base}")
        };
        let token = match (&target.token_file, token_env) {
            (Some(file), _) => read_token_file(file)?,
            (None, Some(token)) => token,
            (None, None) => {
                let (dir, _) = state_dir()?;
                crate::api::read_token(&dir).map_err(|e| {
                    CliError::failed(format!(
                        "cannot read the API token: {e}\n(is the agent started with this config, and do you run as its user?)"
                    ))
                })?
            }
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| CliError::failed(format!("HTTP client: {e}")))?;
        Ok(Self { base, token, http })
    }

    /// `GET path`, read as one of the API's views (`api::view`).
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// `POST path` with a JSON body, the answer read as a view.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<T, CliError> {
        self.send(self.http.post(format!("{}{path}", self.base)).json(body))
            .await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, CliError> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| {
                let why = if e.is_connect() {
                    "the agent is not running (or not listening there)".to_string()
                } else if e.is_timeout() {
                    "no answer in time".to_string()
                } else {
                    e.to_string()
                };
                CliError::failed(format!(
                    "cannot reach the agent at {}: {why}\n(start it with `slipway agent -c CONFIG`, or point --api at it)",
                    self.base
                ))
            })?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| CliError::failed(format!("reading the agent's answer: {e}")))?;
        if status.is_success() {
            return serde_json::from_str(&text).map_err(|e| {
                CliError::failed(format!(
                    "the agent at {} answered in a form this CLI does not read ({e}); is it another version of slipway? (`slipway --version`)",
                    self.base
                ))
            });
        }
        let message = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => body.error,
            Err(_) => text,
        };
        Err(match status.as_u16() {
            // Bad input, or an app / environment / deployment that does
            // not exist: the command line is wrong.
            400 | 404 => usage(message),
            401 => CliError::failed(format!(
                "the agent refused the token: {message} (check --token-file / SLIPWAY_TOKEN)"
            )),
            _ => CliError::failed(message),
        })
    }
}

fn read_token_file(file: &Path) -> Result<String, CliError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| usage(format!("--token-file {}: {e}", file.display())))?;
    Ok(text.trim().to_string())
}

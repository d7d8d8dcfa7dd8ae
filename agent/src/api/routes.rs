//! The routes and their handlers. Reads come from the journal (the record)
//! and the engine (health, manual gates, processes); the two actions go to
//! the app's engine worker, so they never race a deployment.

use super::{ApiError, ApiState};
use crate::config::Config;
use crate::store::{Deployment, EnvState};
use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use std::sync::Arc;

use super::view::{
    AppList, AppView, ApproveRequest, Approved, DeploymentList, DeploymentLogs, DeploymentView,
    EnvEventView, EnvHistory, EnvView, Health, Ready, RollbackRequest, RollbackStarted, StepLogs,
    WaitingApproval,
};

type S = State<Arc<ApiState>>;

pub(super) fn router(state: Arc<ApiState>) -> Router {
    let authed = Router::new()
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/apps", get(apps))
        .route("/v1/apps/{app}", get(app))
        .route("/v1/deployments", get(deployments))
        .route("/v1/deployments/{id}", get(deployment))
        .route("/v1/deployments/{id}/logs", get(deployment_logs))
        .route(
            "/v1/apps/{app}/environments/{env}/history",
            get(env_history),
        )
        .route("/v1/apps/{app}/environments/{env}/rollback", post(rollback))
        .route("/v1/apps/{app}/environments/{env}/approve", post(approve))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .route("/healthz", get(healthz))
        .merge(authed)
        .with_state(state)
}

/// Bearer token check; compared in constant time.
async fn authenticate(State(state): S, request: Request, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok = given.is_some_and(|g| {
        g.len() == state.token.len()
            && g.bytes()
                .zip(state.token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    });
    if !ok {
        crate::metrics::metrics().api_requests_unauthorized.inc();
        let message = if given.is_none() {
            "missing `Authorization: Bearer TOKEN` (the token is in the state dir's api-token file)"
        } else {
            "wrong API token"
        };
        let mut response = ApiError {
            status: StatusCode::UNAUTHORIZED,
            message: message.into(),
        }
        .into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, "Bearer".parse().unwrap());
        return response;
    }
    next.run(request).await
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!(
        "no route {} {} (see docs/api.md)",
        request.method(),
        request.uri().path()
    ))
}

async fn healthz() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
    })
}

async fn readyz(State(state): S) -> Response {
    let config = state.engine.config();
    let journal = state.engine.journal().deployments(None, 1);
    let ready = config.is_some() && journal.is_ok();
    let body = Ready {
        ready,
        config: config.map(|c| c.file.display().to_string()),
        journal: match &journal {
            Ok(_) => "ok".to_string(),
            Err(e) => e.to_string(),
        },
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics(State(state): S) -> Response {
    let mut text = crate::metrics::metrics().encode();
    // The traffic layer's RED figures, fresh, if it answers quickly.
    let uses_traffic = state.engine.config().is_some_and(|c| {
        c.apps
            .values()
            .any(|a| a.environments.iter().any(|e| e.traffic.is_some()))
    });
    if uses_traffic {
        let status = tokio::time::timeout(
            std::time::Duration::from_millis(500),
            state.engine.traffic().status(),
        )
        .await;
        if let Ok(Ok(status)) = status {
            let at = text.rfind("# EOF").unwrap_or(text.len());
            text.insert_str(at, &crate::traffic::encode_metrics(&status));
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn config(state: &ApiState) -> Result<Arc<Config>, ApiError> {
    state
        .engine
        .config()
        .ok_or_else(|| ApiError::internal("no config loaded yet"))
}

/// One app as status shows it: per environment, what runs and how it is.
fn app_view(state: &ApiState, config: &Config, name: &str) -> Result<AppView, ApiError> {
    let journal = state.engine.journal();
    let env_states: Vec<EnvState> = journal
        .env_states()?
        .into_iter()
        .filter(|s| s.app == name)
        .collect();
    let version_of = |release: &Option<String>| -> Option<String> {
        let id = release.as_deref()?;
        journal.release(id).ok().flatten().map(|r| r.version)
    };
    let configured = config.apps.get(name);
    let mut env_names: Vec<String> = configured
        .map(|a| a.environments.iter().map(|e| e.name.clone()).collect())
        .unwrap_or_default();
    for s in &env_states {
        if !env_names.contains(&s.environment) {
            env_names.push(s.environment.clone());
        }
    }
    let environments = env_names
        .iter()
        .map(|env| {
            let s = env_states.iter().find(|s| &s.environment == env);
            let current_release = s.and_then(|s| s.current_release.clone());
            let last_good_release = s.and_then(|s| s.last_good_release.clone());
            EnvView {
                name: env.clone(),
                current_version: version_of(&current_release),
                current_release,
                last_good_version: version_of(&last_good_release),
                last_good_release,
                updated_at: s.map(|s| s.updated_at),
                health: state.engine.health(name, env),
                process: state.engine.process(name, env),
                waiting_approval: state.engine.pending_approval(name, env),
                in_config: configured.is_some_and(|a| a.environment(env).is_some()),
                traffic: state.engine.traffic_view(name, env),
            }
        })
        .collect();
    let running: Vec<Deployment> = journal
        .unfinished_deployments()?
        .into_iter()
        .filter(|d| d.app == name)
        .collect();
    let pin = match configured {
        Some(a) => journal.pin_for(name, &a.spec_hash())?,
        None => None,
    };
    Ok(AppView {
        name: name.to_string(),
        version: configured.map(|a| a.version.to_string()),
        in_config: configured.is_some(),
        running_deployment: running.into_iter().next(),
        pinned: pin,
        environments,
        recent_deployments: None,
    })
}

/// Apps in the config, then apps only the journal still knows.
fn app_names(state: &ApiState, config: &Config) -> Result<Vec<String>, ApiError> {
    let mut names: Vec<String> = config.apps.keys().cloned().collect();
    for s in state.engine.journal().env_states()? {
        if !names.contains(&s.app) {
            names.push(s.app);
        }
    }
    Ok(names)
}

async fn apps(State(state): S) -> Result<Json<AppList>, ApiError> {
    let config = config(&state)?;
    let apps = app_names(&state, &config)?
        .iter()
        .map(|name| app_view(&state, &config, name))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(AppList { apps }))
}

/// The app named in the path, if the config or the journal knows it.
fn known_app(state: &ApiState, config: &Config, name: &str) -> Result<(), ApiError> {
    if app_names(state, config)?.iter().any(|n| n == name) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("no app `{name}`")))
    }
}

async fn app(
    State(state): S,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<AppView>, ApiError> {
    let Path(name) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let config = config(&state)?;
    known_app(&state, &config, &name)?;
    let mut view = app_view(&state, &config, &name)?;
    view.recent_deployments = Some(state.engine.journal().deployments(Some(&name), 10)?);
    Ok(Json(view))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    limit: Option<usize>,
}

/// An environment's changes: activations, rollbacks, stops, newest first.
async fn env_history(
    State(state): S,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<EnvHistory>, ApiError> {
    let Path((app, env)) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = checked_limit(q.limit)?;
    let config = config(&state)?;
    known_app(&state, &config, &app)?;
    let journal = state.engine.journal();
    let in_config = config
        .apps
        .get(&app)
        .is_some_and(|a| a.environment(&env).is_some());
    let events = journal.history(&app, &env, limit)?;
    if !in_config && events.is_empty() {
        return Err(ApiError::not_found(format!(
            "app `{app}` has no environment `{env}`"
        )));
    }
    let events = events
        .into_iter()
        .map(|event| {
            let version = event
                .release_id
                .as_deref()
                .and_then(|id| journal.release(id).ok().flatten())
                .map(|r| r.version);
            EnvEventView { event, version }
        })
        .collect();
    Ok(Json(EnvHistory {
        app,
        environment: env,
        events,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DeploymentsQuery {
    app: Option<String>,
    limit: Option<usize>,
}

const MAX_LIMIT: usize = 1000;

/// `limit`, 20 if not given.
fn checked_limit(limit: Option<usize>) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(20);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "`limit` must be between 1 and {MAX_LIMIT}, not {limit}"
        )));
    }
    Ok(limit)
}

async fn deployments(
    State(state): S,
    query: Result<Query<DeploymentsQuery>, QueryRejection>,
) -> Result<Json<DeploymentList>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let limit = checked_limit(q.limit)?;
    if let Some(app) = &q.app {
        let config = config(&state)?;
        let known = app_names(&state, &config)?.contains(app)
            || !state.engine.journal().deployments(Some(app), 1)?.is_empty();
        if !known {
            return Err(ApiError::not_found(format!("no app `{app}`")));
        }
    }
    let deployments = state
        .engine
        .journal()
        .deployments(q.app.as_deref(), limit)?;
    Ok(Json(DeploymentList { deployments }))
}

fn deployment_id(path: Result<Path<String>, PathRejection>) -> Result<i64, ApiError> {
    let Path(id) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    id.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
        ApiError::bad_request(format!(
            "deployment id must be a positive integer, not `{id}`"
        ))
    })
}

fn find_deployment(state: &ApiState, id: i64) -> Result<Deployment, ApiError> {
    state
        .engine
        .journal()
        .deployment(id)?
        .ok_or_else(|| ApiError::not_found(format!("no deployment {id}")))
}

async fn deployment(
    State(state): S,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<DeploymentView>, ApiError> {
    let id = deployment_id(path)?;
    let deployment = find_deployment(&state, id)?;
    let steps = state
        .engine
        .journal()
        .steps(id)?
        .into_iter()
        .map(Into::into)
        .collect();
    let waiting_approval = config(&state)?.apps.get(&deployment.app).and_then(|a| {
        a.environments.iter().find_map(|e| {
            let approval = state.engine.pending_approval(&a.name, &e.name)?;
            (approval.deployment == id).then(|| WaitingApproval {
                environment: e.name.clone(),
                approval,
            })
        })
    });
    Ok(Json(DeploymentView {
        deployment,
        steps,
        waiting_approval,
    }))
}

async fn deployment_logs(
    State(state): S,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<DeploymentLogs>, ApiError> {
    let id = deployment_id(path)?;
    find_deployment(&state, id)?;
    let journal = state.engine.journal();
    let steps = journal
        .steps(id)?
        .into_iter()
        .map(|step| {
            let logs = journal.step_logs(step.id)?;
            Ok(StepLogs { step, logs })
        })
        .collect::<Result<Vec<_>, crate::store::StoreError>>()?;
    Ok(Json(DeploymentLogs {
        deployment: id,
        steps,
    }))
}

/// An empty body is `{}`; anything else must be a JSON object.
fn parse_body<T: for<'de> Deserialize<'de> + Default>(body: &Bytes) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("request body: {e}")))
}

async fn rollback(
    State(state): S,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Path((app, env)) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let body: RollbackRequest = parse_body(&body)?;
    if let Some(to) = &body.to
        && semver::Version::parse(to).is_err()
    {
        return Err(ApiError::bad_request(format!(
            "`to` must be a version like 1.2.0, not `{to}`"
        )));
    }
    let deployment = state.engine.rollback(&app, &env, body.to).await?;
    let started = RollbackStarted {
        deployment,
        app,
        environment: env,
    };
    Ok((StatusCode::ACCEPTED, Json(started)).into_response())
}

async fn approve(
    State(state): S,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Bytes,
) -> Result<Json<Approved>, ApiError> {
    let Path((app, env)) = path.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let _: ApproveRequest = parse_body(&body)?;
    let approved = state.engine.approve(&app, &env)?;
    Ok(Json(Approved {
        deployment: approved.deployment,
        app,
        environment: env,
        version: approved.version,
    }))
}

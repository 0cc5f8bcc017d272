//! The HTTP routes of the public API.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use pushrelay_kafka::{Topics, now_ms};
use pushrelay_proto::Message;
use pushrelay_proto::v1::SubscriptionAction;

use crate::request::{
    Bearer, bearer, body_format, mailbox_changes, mailbox_key, parse_notifications,
    parse_subscription,
};
use crate::{ApiError, RecordSink};

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct AppState {
    /// Where records go.
    pub sink: Arc<RecordSink>,
    /// Topic names.
    pub topics: Topics,
    /// Largest body accepted, bytes.
    pub max_body_bytes: usize,
    /// Most notifications in one request.
    pub max_notifications: usize,
}

/// The public API's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/notifications", post(notifications))
        .route("/v1/subscriptions", post(subscribe).delete(unsubscribe))
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError {
        status: StatusCode::NOT_FOUND,
        code: "not_found",
        message: "no such route: see POST /v1/notifications and POST/DELETE /v1/subscriptions"
            .into(),
        retry_after: None,
    }
}

fn accepted(count: usize) -> Response {
    (
        StatusCode::ACCEPTED,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "accepted": count }).to_string(),
    )
        .into_response()
}

fn record(route: &'static str, result: Result<Response, ApiError>) -> Response {
    let response = result.unwrap_or_else(IntoResponse::into_response);
    metrics::counter!("pushrelay_ingress_requests_total",
        "route" => route, "status" => response.status().as_str().to_owned())
    .increment(1);
    response
}

fn authorization(headers: &HeaderMap) -> Result<Bearer, ApiError> {
    bearer(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    )
}

/// Reads at most `limit` bytes; a declared or actual larger body is a 413 without being
/// buffered.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::too_large(limit));
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::too_large(limit))
        }
        Err(err) => Err(ApiError::bad_request(
            "malformed_body",
            format!("the body could not be read: {err}"),
        )),
    }
}

async fn notifications(State(state): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let result = async {
        let bearer = authorization(&headers)?;
        let format = body_format(
            headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
        )?;
        let bytes = read_body(&headers, body, state.max_body_bytes).await?;
        let notifications = parse_notifications(&bytes, format, state.max_notifications)?;
        let count = notifications.len();
        let records = mailbox_changes(&bearer, notifications, now_ms(), event_id);
        state
            .sink
            .send_all(&state.topics.mailbox_changes, &records)
            .await?;
        Ok(accepted(count))
    }
    .await;
    record("notifications", result)
}

async fn subscribe(state: State<AppState>, headers: HeaderMap, body: Body) -> Response {
    record(
        "subscribe",
        subscription(state, headers, body, SubscriptionAction::Subscribe).await,
    )
}

async fn unsubscribe(state: State<AppState>, headers: HeaderMap, body: Body) -> Response {
    record(
        "unsubscribe",
        subscription(state, headers, body, SubscriptionAction::Unsubscribe).await,
    )
}

async fn subscription(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
    action: SubscriptionAction,
) -> Result<Response, ApiError> {
    let bearer = authorization(&headers)?;
    let bytes = read_body(&headers, body, state.max_body_bytes).await?;
    let mut change = parse_subscription(&bytes, action)?;
    change.event_id = event_id();
    change.ingress_time_ms = now_ms();
    change.token = bearer.token.clone();
    let key = mailbox_key(&bearer.tenant, &change.mailbox);
    let records = [(key, change.encode_to_vec())];
    state
        .sink
        .send_all(&state.topics.subscription_changes, &records)
        .await?;
    Ok(accepted(1))
}

/// A random 128-bit event id, hex.
fn event_id() -> String {
    let mut bytes = [0u8; 16];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        // The system RNG failing is not a reason to refuse a notification: fall back to time.
        bytes[..8].copy_from_slice(&now_ms().to_be_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

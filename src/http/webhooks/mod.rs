//! Intake over HTTP beside SQS (docs/design.md section 1, deploy/intake.md): Jira's webhooks
//! at `POST /webhooks/jira` and SNS's HTTPS subscriptions at `POST /webhooks/sns`. A delivery
//! goes into the same inbox as a queue's message, with the same idempotency (a redelivery of
//! one transport id is stored once), and is answered 200 only after the commit: a sender that
//! sees anything else delivers again. Refused, and logged: a bad or missing signature (401), a
//! topic not listed (403), a body over `webhooks.max_body_bytes` (413). While intake is paused
//! or draining, deliveries get 503, so the sender keeps them.

pub mod sns_verify;

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    extract::{DefaultBodyLimit, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::post,
    Router,
};
use tokio::sync::Mutex;

use super::HttpState;
use crate::{
    config::WebhooksConfig, intake::inbox, observe::replicas::Intake,
    scheduling::domain::RawMessage,
};
use sns_verify::{SnsEnvelope, SnsRefusal};

/// The largest certificate fetched from SNS.
const MAX_CERT_BYTES: usize = 64 * 1024;
/// Certificates kept: SNS signs with a handful; more means someone is naming others.
const MAX_CERTS: usize = 32;
/// How long a sender may take to send its body: a slow one holds a connection, not a slot.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// What the webhook handlers need beyond the database.
pub struct Webhooks {
    /// Jira's shared secret; `/webhooks/jira` answers 404 without one.
    jira_secret: Option<String>,
    config: WebhooksConfig,
    http: reqwest::Client,
    /// Signing certificates by URL: SNS signs with few certificates, and each delivery would
    /// fetch one otherwise.
    certs: Mutex<HashMap<String, Arc<Vec<u8>>>>,
}

impl Webhooks {
    /// The webhooks `config` turns on (none: None).
    pub fn new(config: &WebhooksConfig) -> Result<Option<Webhooks>, crate::Error> {
        let jira_secret = crate::secrets::get(&config.jira_secret_env).filter(|s| !s.is_empty());
        if jira_secret.is_none() && config.sns_topics.is_empty() {
            return Ok(None);
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .user_agent("conductor")
            .timeout(Duration::from_secs(10))
            // A certificate URL that redirects elsewhere is not the SNS host that was checked.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| crate::Error::Config(format!("HTTP client: {e}")))?;
        Ok(Some(Webhooks {
            jira_secret,
            config: config.clone(),
            http,
            certs: Mutex::new(HashMap::new()),
        }))
    }
}

pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/webhooks/jira", post(jira))
        .route("/webhooks/sns", post(sns))
        // The handlers read the body themselves, with the configured limit and a deadline.
        .layer(DefaultBodyLimit::disable())
}

/// The request's body, at most `max` bytes, within [`BODY_TIMEOUT`]; else the answer to give.
async fn read_body(body: Body, max: usize, endpoint: &'static str) -> Result<Bytes, Response> {
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, max)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(_)) => Err(refuse(
            StatusCode::PAYLOAD_TOO_LARGE,
            endpoint,
            format!("the body is larger than webhooks.max_body_bytes ({max} bytes) or was cut off"),
        )),
        Err(_) => Err(refuse(
            StatusCode::REQUEST_TIMEOUT,
            endpoint,
            format!("the body did not arrive within {}s", BODY_TIMEOUT.as_secs()),
        )),
    }
}

/// One line of refusal, logged and answered.
fn refuse(status: StatusCode, endpoint: &'static str, why: String) -> Response {
    tracing::warn!(
        endpoint,
        status = status.as_u16(),
        why,
        "webhook delivery refused"
    );
    crate::telemetry::webhook(endpoint, "refused");
    (status, format!("{why}\n")).into_response()
}

/// Whether this process takes deliveries now: 503 otherwise (the sender delivers again).
fn closed(state: &HttpState) -> Option<Response> {
    let intake = state.process.as_ref().map(|p| *p.intake.borrow())?;
    (intake != Intake::Open).then(|| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("intake is {}; deliver again later\n", intake.as_str()),
        )
            .into_response()
    })
}

/// Stores one delivery; 200 once committed.
async fn store(
    state: &HttpState,
    endpoint: &'static str,
    transport_id: String,
    body: Bytes,
) -> Response {
    let message = RawMessage::from_bytes(transport_id.clone(), body.to_vec());
    match inbox::submit(&state.db, &[message], "webhook").await {
        Ok(_) => {
            crate::telemetry::webhook(endpoint, "stored");
            tracing::info!(transport_id = %transport_id, "webhook delivery stored");
            (StatusCode::OK, "stored\n").into_response()
        }
        Err(e) => {
            tracing::error!(transport_id = %transport_id, error = %e, "could not store a webhook delivery");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "could not store the delivery; deliver again later\n",
            )
                .into_response()
        }
    }
}

/// `POST /webhooks/jira`: `X-Hub-Signature: sha256=<hex>` must be the HMAC-SHA256 of the
/// body under the shared secret. The delivery's id is `X-Atlassian-Webhook-Identifier` (the
/// same on Jira's retries), else the body's content hash.
async fn jira(State(state): State<HttpState>, headers: HeaderMap, body: Body) -> Response {
    let Some(hooks) = state.webhooks.clone() else {
        return (StatusCode::NOT_FOUND, "webhooks are not configured\n").into_response();
    };
    let body = match read_body(body, hooks.config.max_body_bytes, "jira").await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Some(secret) = &hooks.jira_secret else {
        return (
            StatusCode::NOT_FOUND,
            "the Jira webhook is off (no secret configured)\n",
        )
            .into_response();
    };
    let signature = headers
        .get("x-hub-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if let Err(why) = check_hmac(secret.as_bytes(), &body, signature) {
        return refuse(StatusCode::UNAUTHORIZED, "jira", why);
    }
    if let Some(r) = closed(&state) {
        return r;
    }
    let id = headers
        .get("x-atlassian-webhook-identifier")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(|v| format!("jira:{v}"))
        .unwrap_or_else(|| format!("jira:{}", inbox::content_id_of(&body)));
    store(&state, "jira", id, body).await
}

/// Checks `sha256=<hex>` against the HMAC-SHA256 of `body` under `secret`, in constant time.
fn check_hmac(secret: &[u8], body: &[u8], header: &str) -> Result<(), String> {
    let Some(hex) = header.trim().strip_prefix("sha256=") else {
        return Err(if header.is_empty() {
            "no X-Hub-Signature header (is the webhook's secret set in Jira?)".into()
        } else {
            "X-Hub-Signature is not sha256=<hex>".into()
        });
    };
    let tag = decode_hex(hex).ok_or("X-Hub-Signature is not hexadecimal")?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    ring::hmac::verify(&key, body, &tag).map_err(|_| "the signature does not match the body".into())
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// `POST /webhooks/sns`: the topic must be listed, the signature must verify against the
/// certificate at `SigningCertURL` (an SNS host of the topic's region), then: a subscription
/// confirmation is confirmed by visiting `SubscribeURL` (the same host), a notification is
/// stored (its id is the SNS `MessageId`, the same on SNS's retries).
async fn sns(State(state): State<HttpState>, body: Body) -> Response {
    let Some(hooks) = state.webhooks.clone() else {
        return (StatusCode::NOT_FOUND, "webhooks are not configured\n").into_response();
    };
    let body = match read_body(body, hooks.config.max_body_bytes, "sns").await {
        Ok(b) => b,
        Err(r) => return r,
    };
    if hooks.config.sns_topics.is_empty() {
        return (
            StatusCode::NOT_FOUND,
            "the SNS webhook is off (webhooks.sns_topics is empty)\n",
        )
            .into_response();
    }
    let envelope: SnsEnvelope = match serde_json::from_slice(&body) {
        Ok(e) => e,
        Err(e) => {
            return refuse(
                StatusCode::BAD_REQUEST,
                "sns",
                format!("not an SNS message: {e}"),
            )
        }
    };
    if !hooks.config.sns_topics.contains(&envelope.topic_arn) {
        return refuse(
            StatusCode::FORBIDDEN,
            "sns",
            SnsRefusal::TopicNotAccepted(envelope.topic_arn.clone()).to_string(),
        );
    }
    if let Err(r) = envelope.check_signing_cert_url(&hooks.config.sns_extra_url_prefixes) {
        return refuse(StatusCode::UNAUTHORIZED, "sns", r.to_string());
    }
    let cert = match certificate(&hooks, &envelope.signing_cert_url).await {
        Ok(c) => c,
        Err(why) => {
            // Not the sender's fault, maybe: SNS delivers again.
            tracing::warn!(url = %envelope.signing_cert_url, why, "could not fetch the SNS signing certificate");
            return (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response();
        }
    };
    if let Err(r) = sns_verify::verify(&envelope, &cert) {
        return refuse(StatusCode::UNAUTHORIZED, "sns", r.to_string());
    }
    match envelope.kind.as_str() {
        "Notification" => {
            if let Some(r) = closed(&state) {
                return r;
            }
            // What is stored is what was signed: a field added beside them (a top-level
            // `detail`, say) would otherwise be read as the alarm.
            let signed = serde_json::json!({
                "Type": envelope.kind,
                "MessageId": envelope.message_id,
                "TopicArn": envelope.topic_arn,
                "Subject": envelope.subject,
                "Message": envelope.message,
                "Timestamp": envelope.timestamp,
            });
            store(
                &state,
                "sns",
                format!("sns:{}", envelope.message_id),
                Bytes::from(signed.to_string()),
            )
            .await
        }
        "SubscriptionConfirmation" => confirm(&hooks, &envelope).await,
        "UnsubscribeConfirmation" => {
            tracing::warn!(topic = %envelope.topic_arn, "SNS says this endpoint was unsubscribed");
            (StatusCode::OK, "noted\n").into_response()
        }
        other => refuse(
            StatusCode::BAD_REQUEST,
            "sns",
            SnsRefusal::UnhandledType(other.to_owned()).to_string(),
        ),
    }
}

/// Confirms a subscription to a listed topic by visiting its `SubscribeURL`, which must be
/// SNS's `ConfirmSubscription` action on the topic region's host.
async fn confirm(hooks: &Webhooks, envelope: &SnsEnvelope) -> Response {
    let url = envelope.subscribe_url.clone().unwrap_or_default();
    let region = match envelope.region() {
        Ok(r) => r,
        Err(r) => return refuse(StatusCode::BAD_REQUEST, "sns", r.to_string()),
    };
    if !subscribe_url_allowed(&url, region, &hooks.config.sns_extra_url_prefixes) {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "sns",
            format!("the SubscribeURL {url:?} is not SNS's ConfirmSubscription in {region}"),
        );
    }
    match hooks.http.get(&url).send().await {
        Ok(r) if r.status().is_success() => {
            tracing::info!(topic = %envelope.topic_arn, "SNS subscription confirmed");
            (StatusCode::OK, "subscription confirmed\n").into_response()
        }
        Ok(r) => {
            tracing::warn!(topic = %envelope.topic_arn, status = r.status().as_u16(), "SNS refused the subscription confirmation");
            (StatusCode::BAD_GATEWAY, "SNS refused the confirmation\n").into_response()
        }
        Err(e) => {
            tracing::warn!(topic = %envelope.topic_arn, error = %e.without_url(), "could not confirm the SNS subscription");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "could not reach SNS to confirm\n",
            )
                .into_response()
        }
    }
}

/// Whether `url` is SNS's confirmation action on the region's host (or under an operator's
/// extra prefix): `https://sns.REGION.amazonaws.com/?Action=ConfirmSubscription&...`.
fn subscribe_url_allowed(url: &str, region: &str, extra_prefixes: &[String]) -> bool {
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let host = if region.starts_with("cn-") {
        format!("sns.{region}.amazonaws.com.cn")
    } else {
        format!("sns.{region}.amazonaws.com")
    };
    let prefix = format!("https://{host}/?Action=ConfirmSubscription&");
    url.starts_with(&prefix)
        || extra_prefixes.iter().any(|p| {
            sns_verify::starts_with_prefix(url, p) && url.contains("Action=ConfirmSubscription")
        })
}

/// The signing certificate at `url` (already checked), fetched once.
async fn certificate(hooks: &Webhooks, url: &str) -> Result<Arc<Vec<u8>>, String> {
    if let Some(c) = hooks.certs.lock().await.get(url) {
        return Ok(c.clone());
    }
    let resp = hooks
        .http
        .get(url)
        .send()
        .await
        .map_err(|e| format!("fetching the signing certificate: {}", e.without_url()))?;
    if !resp.status().is_success() {
        return Err(format!(
            "fetching the signing certificate: HTTP {}",
            resp.status()
        ));
    }
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| format!("reading the signing certificate: {}", e.without_url()))?;
    if bytes.len() > MAX_CERT_BYTES {
        return Err("the signing certificate is too large".into());
    }
    let cert = Arc::new(bytes.to_vec());
    let mut certs = hooks.certs.lock().await;
    if certs.len() >= MAX_CERTS {
        certs.clear();
    }
    certs.insert(url.to_owned(), cert.clone());
    Ok(cert)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_checks() {
        let body = b"{\"webhookEvent\":\"jira:issue_created\"}";
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"s3cret");
        let tag = ring::hmac::sign(&key, body);
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert!(check_hmac(b"s3cret", body, &format!("sha256={hex}")).is_ok());
        assert!(check_hmac(b"other", body, &format!("sha256={hex}")).is_err());
        assert!(check_hmac(b"s3cret", b"{}", &format!("sha256={hex}")).is_err());
        assert!(check_hmac(b"s3cret", body, "").is_err());
        assert!(check_hmac(b"s3cret", body, "sha256=zz").is_err());
        assert!(check_hmac(b"s3cret", body, &format!("sha1={hex}")).is_err());
    }

    #[test]
    fn subscribe_urls() {
        let ok = "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:us-east-1:1:t&Token=x";
        assert!(subscribe_url_allowed(ok, "us-east-1", &[]));
        assert!(!subscribe_url_allowed(ok, "eu-west-1", &[]));
        assert!(!subscribe_url_allowed(
            "https://sns.us-east-1.amazonaws.com.evil.com/?Action=ConfirmSubscription&",
            "us-east-1",
            &[]
        ));
        assert!(!subscribe_url_allowed(
            "http://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&",
            "us-east-1",
            &[]
        ));
        assert!(!subscribe_url_allowed(
            "https://sns.us-east-1.amazonaws.com/?Action=Publish&",
            "us-east-1",
            &[]
        ));
    }
}

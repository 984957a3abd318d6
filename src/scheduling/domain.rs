//! Domain types: the messages Conductor accepts, the decisions it makes about them, and the
//! parsing that builds the former from a transport's raw body (docs/design.md section 2).
//!
//! Parsing never panics and never gives a generic "parse error": every way a body can fail
//! has its own [`Rejection`] variant, whose text is what the `rejected` table stores.

use chrono::{DateTime, NaiveDateTime};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A message as a transport delivered it: its transport id and raw body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawMessage {
    /// The transport's id for the message (SQS MessageId, a replay line's `message_id`, the
    /// inbox's content hash); the stored message's own id is `messages.id`, called
    /// `message_id` everywhere else. Replay files name this field `message_id`, as the
    /// design's replay format does.
    #[serde(rename = "message_id")]
    pub transport_id: String,
    /// The body as delivered, as text. A body that was not valid UTF-8 shows each invalid
    /// byte sequence as U+FFFD here; its bytes are in `raw`.
    pub body: String,
    /// The bytes as delivered, when they are not valid UTF-8 (a file, a webhook). A replay
    /// line never has them: a JSON string is text.
    #[serde(skip)]
    pub raw: Option<Vec<u8>>,
}

impl RawMessage {
    /// A message from the bytes a transport delivered, whatever they are.
    pub fn from_bytes(transport_id: String, bytes: Vec<u8>) -> RawMessage {
        match String::from_utf8(bytes) {
            Ok(body) => RawMessage {
                transport_id,
                body,
                raw: None,
            },
            Err(e) => {
                let bytes = e.into_bytes();
                RawMessage {
                    transport_id,
                    body: String::from_utf8_lossy(&bytes).into_owned(),
                    raw: Some(bytes),
                }
            }
        }
    }
}

/// A body as it is stored: text without NUL characters (Postgres text cannot hold them; each
/// becomes U+FFFD), and the bytes as delivered whenever that text is not exactly them.
pub fn storable_body<'a>(
    body: &'a str,
    raw: Option<&'a [u8]>,
) -> (std::borrow::Cow<'a, str>, Option<&'a [u8]>) {
    if body.contains('\0') {
        (
            std::borrow::Cow::Owned(body.replace('\0', "\u{FFFD}")),
            Some(raw.unwrap_or(body.as_bytes())),
        )
    } else {
        (std::borrow::Cow::Borrowed(body), raw)
    }
}

/// `text` without control characters (C0, DEL, C1): what an extracted field keeps. A NUL or
/// an escape sequence in a ticket key or an alarm name must reach neither the database (Postgres
/// text refuses NUL) nor an operator's terminal.
pub fn clean_field(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).collect()
}

/// `text` with every control character written as its escape (`\u{1b}`, `\n`): safe to print
/// on a terminal, and nothing hidden.
pub fn escape_controls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Like [`clean_field`], keeping line breaks and tabs: for multi-line text (a description).
pub fn clean_text(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control() || matches!(c, '\n' | '\t'))
        .collect()
}

/// Parses a stored body: a body that was not UTF-8 text (`raw` holds its bytes) is rejected
/// as such; otherwise [`parse_message`].
pub fn parse_body(body: &str, raw: Option<&[u8]>) -> Result<Message, Rejection> {
    if let Some(raw) = raw {
        let invalid = raw
            .utf8_chunks()
            .filter(|c| !c.invalid().is_empty())
            .count();
        if invalid > 0 {
            return Err(Rejection::NotText(invalid));
        }
    }
    parse_message(body)
}

/// A message Conductor understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Ticket(Ticket),
    Alarm(Alarm),
}

/// Where a ticket came from: a bare Jira issue or one of the two webhook events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TicketSource {
    Bare,
    IssueCreated,
    IssueUpdated,
}

/// A Jira ticket. `key` is the identity used for deduplication: the Jira key, else its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub key: String,
    pub jira_id: Option<String>,
    pub project: Option<String>,
    pub summary: Option<String>,
    /// The description flattened to plain text: every `text` leaf in document order.
    pub description: String,
    pub labels: Vec<String>,
    pub priority: Option<String>,
    pub source: TicketSource,
    /// Event time carried by a webhook (`timestamp`, epoch ms), used as virtual time in replays.
    pub event_ms: Option<i64>,
}

/// The CloudWatch alarm states; only transitions into `Alarm` chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlarmState {
    Alarm,
    Ok,
    InsufficientData,
}

impl AlarmState {
    pub fn as_str(self) -> &'static str {
        match self {
            AlarmState::Alarm => "ALARM",
            AlarmState::Ok => "OK",
            AlarmState::InsufficientData => "INSUFFICIENT_DATA",
        }
    }
}

/// A CloudWatch alarm state change, from EventBridge or SNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alarm {
    /// The source event id (EventBridge `id`, SNS `MessageId`): duplicates share it.
    pub event_id: String,
    pub account: String,
    pub alarm_name: String,
    pub state: AlarmState,
    /// The alarm's own event time, epoch milliseconds UTC. Chaining uses this, never arrival.
    pub event_ms: i64,
}

/// Why a body was rejected. The `Display` text is stored in `rejected.reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("not a JSON object (got {0})")]
    NotObject(&'static str),
    #[error("unknown message shape: not a Jira issue, Jira webhook, EventBridge alarm or SNS alarm notification (top-level keys: {0})")]
    UnknownShape(String),
    #[error("Jira webhook event {0:?} is not jira:issue_created or jira:issue_updated")]
    UnsupportedWebhookEvent(String),
    #[error("Jira webhook has no `issue` object")]
    WebhookWithoutIssue,
    #[error("ticket has neither a `key` nor an `id`")]
    TicketWithoutIdentity,
    #[error("EventBridge event has detail-type {0:?}, expected \"CloudWatch Alarm State Change\"")]
    UnsupportedDetailType(String),
    #[error("alarm has no AWS account ({0})")]
    AlarmWithoutAccount(&'static str),
    #[error("alarm has no event id ({0})")]
    AlarmWithoutEventId(&'static str),
    #[error("alarm has no alarm name ({0})")]
    AlarmWithoutName(&'static str),
    #[error("alarm has no state ({0})")]
    AlarmWithoutState(&'static str),
    #[error("alarm state {0:?} is not ALARM, OK or INSUFFICIENT_DATA")]
    UnknownAlarmState(String),
    #[error("alarm has no time ({0})")]
    AlarmWithoutTime(&'static str),
    #[error(
        "alarm time {0:?} is not a timestamp (expected RFC 3339 or 2026-05-12T20:58:58.130+0000)"
    )]
    AlarmBadTime(String),
    #[error("SNS notification Message is not a JSON object: {0}")]
    SnsMessageNotJson(String),
    #[error("SNS notification Message is not a CloudWatch alarm (no AlarmName/NewStateValue)")]
    SnsNotAlarm,
    #[error("body is not UTF-8 text: {0} invalid byte sequence(s), shown as U+FFFD (the raw bytes are kept)")]
    NotText(usize),
    /// An incident's issue that Conductor itself opened, come back through Jira's webhook: an
    /// agent already works its incident.
    #[error("the issue carries the label {INCIDENT_LABEL:?}: Conductor opened it for an incident, whose own agent works it")]
    ConductorsOwnIssue,
    /// The transport id of an earlier message, with another body: not a redelivery.
    #[error("id reused with a different body (the first body is message {0})")]
    IdReused(i64),
}

/// Parses a raw body into a [`Message`], or says precisely why it cannot be one. Extracted
/// fields lose their control characters ([`clean_field`]); an identity left empty by that is
/// missing.
pub fn parse_message(body: &str) -> Result<Message, Rejection> {
    match parse_uncleaned(body)? {
        Message::Ticket(t) => clean_ticket(t).map(Message::Ticket),
        Message::Alarm(a) => clean_alarm(a).map(Message::Alarm),
    }
}

fn clean_opt(v: Option<String>) -> Option<String> {
    v.map(|s| clean_field(&s)).filter(|s| !s.is_empty())
}

fn clean_ticket(t: Ticket) -> Result<Ticket, Rejection> {
    let jira_id = clean_opt(t.jira_id);
    let key = match clean_field(&t.key) {
        k if !k.is_empty() => k,
        _ => jira_id.clone().ok_or(Rejection::TicketWithoutIdentity)?,
    };
    Ok(Ticket {
        key,
        jira_id,
        project: clean_opt(t.project),
        summary: clean_opt(t.summary),
        description: clean_text(&t.description),
        labels: t
            .labels
            .iter()
            .map(|l| clean_field(l))
            .filter(|l| !l.is_empty())
            .collect(),
        priority: clean_opt(t.priority),
        ..t
    })
}

fn clean_alarm(a: Alarm) -> Result<Alarm, Rejection> {
    let nonempty = |v: String, missing: Rejection| {
        let v = clean_field(&v);
        if v.is_empty() {
            Err(missing)
        } else {
            Ok(v)
        }
    };
    Ok(Alarm {
        event_id: nonempty(
            a.event_id,
            Rejection::AlarmWithoutEventId("empty once control characters are removed"),
        )?,
        account: nonempty(
            a.account,
            Rejection::AlarmWithoutAccount("empty once control characters are removed"),
        )?,
        alarm_name: nonempty(
            a.alarm_name,
            Rejection::AlarmWithoutName("empty once control characters are removed"),
        )?,
        ..a
    })
}

fn parse_uncleaned(body: &str) -> Result<Message, Rejection> {
    let value: Value = serde_json::from_str(body).map_err(|e| Rejection::NotJson(e.to_string()))?;
    let obj = match &value {
        Value::Object(o) => o,
        other => return Err(Rejection::NotObject(json_type(other))),
    };
    if obj.get("source").and_then(Value::as_str) == Some("aws.cloudwatch")
        || obj.contains_key("detail-type")
    {
        return parse_eventbridge(obj).map(Message::Alarm);
    }
    if obj.get("Type").and_then(Value::as_str) == Some("Notification") {
        return parse_sns(obj).map(Message::Alarm);
    }
    if let Some(event) = obj.get("webhookEvent") {
        let event = event.as_str().unwrap_or_default();
        let source = match event {
            "jira:issue_created" => TicketSource::IssueCreated,
            "jira:issue_updated" => TicketSource::IssueUpdated,
            other => return Err(Rejection::UnsupportedWebhookEvent(other.to_owned())),
        };
        let issue = obj
            .get("issue")
            .and_then(Value::as_object)
            .ok_or(Rejection::WebhookWithoutIssue)?;
        let mut ticket = parse_issue(issue, source)?;
        ticket.event_ms = obj.get("timestamp").and_then(Value::as_i64);
        return Ok(Message::Ticket(ticket));
    }
    if obj.contains_key("fields") || (obj.contains_key("key") && obj.contains_key("id")) {
        return parse_issue(obj, TicketSource::Bare).map(Message::Ticket);
    }
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.truncate(8);
    Err(Rejection::UnknownShape(keys.join(", ")))
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

type Object = serde_json::Map<String, Value>;

/// A non-empty string field; numbers are accepted too (Jira ids sometimes arrive as numbers).
fn text(obj: &Object, key: &str) -> Option<String> {
    match obj.get(key)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The label on every Jira issue Conductor opens for an incident (beside
/// `conductor-incident-<id>`): such an issue is never a ticket to start an agent for.
pub const INCIDENT_LABEL: &str = "conductor-incident";

fn parse_issue(issue: &Object, source: TicketSource) -> Result<Ticket, Rejection> {
    let jira_id = text(issue, "id");
    let key = text(issue, "key")
        .or_else(|| jira_id.clone())
        .ok_or(Rejection::TicketWithoutIdentity)?;
    let empty = Object::new();
    let fields = issue
        .get("fields")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let project = fields
        .get("project")
        .and_then(Value::as_object)
        .and_then(|p| text(p, "key"))
        .or_else(|| text(issue, "key").and_then(|k| k.split_once('-').map(|(p, _)| p.to_owned())));
    let description = match fields.get("description") {
        Some(Value::String(s)) => s.clone(),
        Some(doc @ Value::Object(_)) => flatten_document(doc),
        _ => String::new(),
    };
    let labels: Vec<String> = fields
        .get("labels")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if labels.iter().any(|l| l == INCIDENT_LABEL) {
        return Err(Rejection::ConductorsOwnIssue);
    }
    let priority = fields
        .get("priority")
        .and_then(Value::as_object)
        .and_then(|p| text(p, "name"));
    Ok(Ticket {
        key,
        jira_id,
        project,
        summary: text(fields, "summary"),
        description,
        labels,
        priority,
        source,
        event_ms: None,
    })
}

/// Flattens an Atlassian document: every `text` leaf in document order, block nodes
/// (paragraphs, headings, list items...) separated by newlines.
pub fn flatten_document(doc: &Value) -> String {
    fn walk(node: &Value, out: &mut String) {
        let Some(obj) = node.as_object() else { return };
        if let Some(t) = obj.get("text").and_then(Value::as_str) {
            out.push_str(t);
        }
        if obj.get("type").and_then(Value::as_str) == Some("hardBreak") {
            out.push('\n');
        }
        if let Some(children) = obj.get("content").and_then(Value::as_array) {
            let block = children.iter().any(|c| c.get("content").is_some());
            for child in children {
                let before = out.len();
                walk(child, out);
                if block && out.len() > before && !out.ends_with('\n') {
                    out.push('\n');
                }
            }
        }
    }
    let mut out = String::new();
    walk(doc, &mut out);
    out.trim_end().to_owned()
}

fn parse_eventbridge(obj: &Object) -> Result<Alarm, Rejection> {
    let detail_type = obj
        .get("detail-type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if detail_type != "CloudWatch Alarm State Change" {
        return Err(Rejection::UnsupportedDetailType(detail_type.to_owned()));
    }
    let account =
        text(obj, "account").ok_or(Rejection::AlarmWithoutAccount("EventBridge `account`"))?;
    let event_id = text(obj, "id").ok_or(Rejection::AlarmWithoutEventId("EventBridge `id`"))?;
    let empty = Object::new();
    let detail = obj
        .get("detail")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let alarm_name = text(detail, "alarmName").ok_or(Rejection::AlarmWithoutName(
        "EventBridge `detail.alarmName`",
    ))?;
    let state = detail
        .get("state")
        .and_then(Value::as_object)
        .and_then(|s| text(s, "value"))
        .ok_or(Rejection::AlarmWithoutState(
            "EventBridge `detail.state.value`",
        ))?;
    let time = text(obj, "time").ok_or(Rejection::AlarmWithoutTime("EventBridge `time`"))?;
    Ok(Alarm {
        event_id,
        account,
        alarm_name,
        state: parse_state(&state)?,
        event_ms: parse_time(&time)?,
    })
}

fn parse_sns(obj: &Object) -> Result<Alarm, Rejection> {
    let event_id =
        text(obj, "MessageId").ok_or(Rejection::AlarmWithoutEventId("SNS `MessageId`"))?;
    let inner = obj
        .get("Message")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let inner: Value =
        serde_json::from_str(inner).map_err(|e| Rejection::SnsMessageNotJson(e.to_string()))?;
    let inner = inner
        .as_object()
        .ok_or_else(|| Rejection::SnsMessageNotJson(format!("got {}", json_type(&inner))))?;
    // An EventBridge rule may publish its event to the topic (the SNS path of
    // deploy/intake.md): the event inside is the alarm.
    if inner.get("source").and_then(Value::as_str) == Some("aws.cloudwatch")
        && inner.contains_key("detail-type")
    {
        return parse_eventbridge(inner);
    }
    if !inner.contains_key("AlarmName") && !inner.contains_key("NewStateValue") {
        return Err(Rejection::SnsNotAlarm);
    }
    let account =
        text(inner, "AWSAccountId").ok_or(Rejection::AlarmWithoutAccount("SNS `AWSAccountId`"))?;
    let alarm_name =
        text(inner, "AlarmName").ok_or(Rejection::AlarmWithoutName("SNS `AlarmName`"))?;
    let state =
        text(inner, "NewStateValue").ok_or(Rejection::AlarmWithoutState("SNS `NewStateValue`"))?;
    let time = text(inner, "StateChangeTime")
        .ok_or(Rejection::AlarmWithoutTime("SNS `StateChangeTime`"))?;
    Ok(Alarm {
        event_id,
        account,
        alarm_name,
        state: parse_state(&state)?,
        event_ms: parse_time(&time)?,
    })
}

fn parse_state(s: &str) -> Result<AlarmState, Rejection> {
    match s {
        "ALARM" => Ok(AlarmState::Alarm),
        "OK" => Ok(AlarmState::Ok),
        "INSUFFICIENT_DATA" => Ok(AlarmState::InsufficientData),
        other => Err(Rejection::UnknownAlarmState(other.to_owned())),
    }
}

/// Parses the two time formats alarms use: RFC 3339 (EventBridge) and CloudWatch's
/// `2026-05-12T20:58:58.130+0000` (SNS, offset without a colon).
pub fn parse_time(s: &str) -> Result<i64, Rejection> {
    DateTime::parse_from_rfc3339(s)
        .or_else(|_| DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .map(|t| t.timestamp_millis())
        .or_else(|_| {
            NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                .map(|t| t.and_utc().timestamp_millis())
        })
        .map_err(|_| Rejection::AlarmBadTime(s.to_owned()))
}

/// Renders epoch milliseconds as RFC 3339 UTC, for output meant for people.
pub fn format_ms(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| ms.to_string())
}

/// What the scheduler decided about one message (docs/design.md section 3). Redeliveries get no
/// decision: they are recognised at ingest, before deciding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash)]
#[serde(rename_all = "snake_case")]
pub enum DecisionKind {
    Spawn,
    Duplicate,
    Chained,
    Merged,
    Ignored,
    Rejected,
}

impl DecisionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionKind::Spawn => "spawn",
            DecisionKind::Duplicate => "duplicate",
            DecisionKind::Chained => "chained",
            DecisionKind::Merged => "merged",
            DecisionKind::Ignored => "ignored",
            DecisionKind::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "spawn" => DecisionKind::Spawn,
            "duplicate" => DecisionKind::Duplicate,
            "chained" => DecisionKind::Chained,
            "merged" => DecisionKind::Merged,
            "ignored" => DecisionKind::Ignored,
            "rejected" => DecisionKind::Rejected,
            _ => return None,
        })
    }
}

/// The kind of subject a decision is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectKind {
    Ticket,
    Alarm,
}

impl SubjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::Ticket => "ticket",
            SubjectKind::Alarm => "alarm",
        }
    }
}

/// A stored decision, as the `decisions` table holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub decision: DecisionKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<SubjectKind>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ticket_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub incident: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<i64>,
    /// Internal message id of the first sighting, for duplicates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate_of: Option<i64>,
    /// Incidents folded into `incident` by a `merged` decision.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub merged: Vec<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Decision {
    pub fn new(decision: DecisionKind, kind: Option<SubjectKind>) -> Self {
        Decision {
            decision,
            kind,
            ticket_key: None,
            account: None,
            incident: None,
            job: None,
            duplicate_of: None,
            merged: Vec::new(),
            reason: None,
        }
    }
}

/// What ingest found: a new message, one whose transport id was seen before with the same
/// body (a redelivery), or a transport id reused with another body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ingest", rename_all = "snake_case")]
pub enum Ingested {
    New {
        message_id: i64,
    },
    Redelivered {
        message_id: i64,
    },
    /// Stored under a derived transport id, to be rejected: `original_id` arrived first under
    /// the same transport id with another body.
    Reused {
        message_id: i64,
        original_id: i64,
    },
    /// A store's answer only (never [`crate::scheduling::decide::ingest`]'s): the transport id belongs to
    /// `original_id`, whose body differs; nothing was written.
    IdTaken {
        original_id: i64,
    },
}

impl Ingested {
    pub fn message_id(self) -> i64 {
        match self {
            Ingested::New { message_id }
            | Ingested::Redelivered { message_id }
            | Ingested::Reused { message_id, .. } => message_id,
            Ingested::IdTaken { original_id } => original_id,
        }
    }
}

/// The transport id a message is stored under when its own belongs to another body: the id
/// and a hash of the body, so a redelivery of the reusing message is recognised as such.
pub fn reused_transport_id(transport_id: &str, body: &str, raw: Option<&[u8]>) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(raw.unwrap_or(body.as_bytes()));
    let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!("{transport_id}#reused:{hex}")
}

/// Bytes as lowercase hex (raw bodies in a run's JSON input).
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of [`to_hex`]'s text; None if it is not hex.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(name: &str) -> String {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/samples/");
        std::fs::read_to_string(format!("{dir}{name}"))
            .unwrap_or_else(|e| panic!("sample {name}: {e}"))
    }

    #[test]
    fn bare_ticket() {
        let Message::Ticket(t) = parse_message(&sample("ticket-bare.json")).unwrap() else {
            panic!()
        };
        assert_eq!(t.key, "PAY-42");
        assert_eq!(t.jira_id.as_deref(), Some("20042"));
        assert_eq!(t.project.as_deref(), Some("PAY"));
        assert_eq!(t.priority.as_deref(), Some("High"));
        assert_eq!(t.labels, vec!["agent"]);
        assert_eq!(t.source, TicketSource::Bare);
        assert!(t
            .description
            .starts_with("Checkout returns 500 when the cart has more than 99 items."));
        assert!(t.description.ends_with("fix the overflow."));
    }

    #[test]
    fn webhook_tickets() {
        let Message::Ticket(c) = parse_message(&sample("ticket-webhook-created.json")).unwrap()
        else {
            panic!()
        };
        let Message::Ticket(u) = parse_message(&sample("ticket-webhook-updated.json")).unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (c.key.as_str(), c.source),
            ("PAY-43", TicketSource::IssueCreated)
        );
        assert_eq!(
            (u.key.as_str(), u.source),
            ("PAY-43", TicketSource::IssueUpdated)
        );
        assert_eq!(
            u.description,
            "Add retry with jitter to the invoice mailer. (edited)"
        );
        assert_eq!(c.event_ms, Some(1778616134000));
    }

    #[test]
    fn ticket_identity_falls_back_to_id_and_plain_description() {
        let Message::Ticket(t) =
            parse_message(r#"{"id": 77, "fields": {"summary": "s", "description": "plain text"}}"#)
                .unwrap()
        else {
            panic!()
        };
        assert_eq!(t.key, "77");
        assert_eq!(t.description, "plain text");
    }

    #[test]
    fn eventbridge_alarms() {
        let Message::Alarm(a) = parse_message(&sample("alarm-eventbridge.json")).unwrap() else {
            panic!()
        };
        assert_eq!(a.account, "210987654321");
        assert_eq!(a.event_id, "9974d75b-3338-24fe-6179-0134676b1b69");
        assert_eq!(a.alarm_name, "api-5xx-rate");
        assert_eq!(a.state, AlarmState::Alarm);
        assert_eq!(a.event_ms, parse_time("2026-05-12T20:00:00Z").unwrap());
        let Message::Alarm(ok) = parse_message(&sample("alarm-eventbridge-ok.json")).unwrap()
        else {
            panic!()
        };
        assert_eq!(ok.state, AlarmState::Ok);
    }

    #[test]
    fn conductors_own_incident_issue_is_no_ticket() {
        let body = serde_json::json!({
            "webhookEvent": "jira:issue_created",
            "issue": {"key": "OPS-1", "fields": {"summary": "Incident 1",
                "labels": ["conductor-incident", "conductor-incident-1"]}},
        })
        .to_string();
        assert_eq!(
            parse_message(&body).unwrap_err(),
            Rejection::ConductorsOwnIssue
        );
    }

    #[test]
    fn sns_carrying_an_eventbridge_event() {
        let event = sample("alarm-eventbridge.json");
        let envelope = serde_json::json!({
            "Type": "Notification", "MessageId": "sns-1", "Message": event,
        })
        .to_string();
        let Message::Alarm(a) = parse_message(&envelope).unwrap() else {
            panic!()
        };
        assert_eq!(a.event_id, "9974d75b-3338-24fe-6179-0134676b1b69");
        assert_eq!(a.alarm_name, "api-5xx-rate");
    }

    #[test]
    fn sns_alarm() {
        let Message::Alarm(a) = parse_message(&sample("alarm-sns.json")).unwrap() else {
            panic!()
        };
        assert_eq!(a.event_id, "baa1c6f1-404b-6eaf-162a-01dec28753f8");
        assert_eq!(a.account, "210987654321");
        assert_eq!(a.alarm_name, "queue-depth");
        assert_eq!(a.event_ms, parse_time("2026-05-12T20:05:00Z").unwrap());
    }

    #[test]
    fn sns_time_keeps_milliseconds() {
        assert_eq!(
            parse_time("2026-05-12T20:58:58.130+0000").unwrap()
                - parse_time("2026-05-12T20:58:58Z").unwrap(),
            130
        );
    }

    #[test]
    fn every_rejected_sample_has_its_specific_reason() {
        type Check = fn(&Rejection) -> bool;
        let cases: &[(&str, Check)] = &[
            (
                "rejected/alarm-bad-time.json",
                |r| matches!(r, Rejection::AlarmBadTime(t) if t == "yesterday"),
            ),
            ("rejected/alarm-no-account.json", |r| {
                matches!(r, Rejection::AlarmWithoutAccount(_))
            }),
            ("rejected/not-json.txt", |r| {
                matches!(r, Rejection::NotJson(_))
            }),
            ("rejected/ticket-no-key.json", |r| {
                matches!(r, Rejection::TicketWithoutIdentity)
            }),
            (
                "rejected/unknown-shape.json",
                |r| matches!(r, Rejection::UnknownShape(k) if k == "hello"),
            ),
        ];
        for (name, check) in cases {
            let err = parse_message(&sample(name)).unwrap_err();
            assert!(check(&err), "{name}: unexpected rejection {err:?}");
        }
        // The samples directory holds nothing this test does not cover.
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/samples/rejected");
        assert_eq!(std::fs::read_dir(dir).unwrap().count(), cases.len());
    }

    #[test]
    fn control_characters_are_removed_from_fields_and_escaped_for_terminals() {
        assert_eq!(clean_field("\u{1b}[31mRED-1\u{0}"), "[31mRED-1");
        assert_eq!(clean_text("a\u{0}b\n\tc\u{7}"), "ab\n\tc");
        assert_eq!(escape_controls("\u{1b}[2Jé"), "\\u{1b}[2Jé");
        let Message::Ticket(t) =
            parse_message(r#"{"key":"\u0000\u001b[31mK-1","fields":{"summary":"s\u0000"}}"#)
                .unwrap()
        else {
            panic!()
        };
        assert_eq!(
            (t.key.as_str(), t.summary.as_deref()),
            ("[31mK-1", Some("s"))
        );
        assert_eq!(
            parse_message(r#"{"key":"\u0000","fields":{}}"#).unwrap_err(),
            Rejection::TicketWithoutIdentity
        );
        let raw = RawMessage::from_bytes("x".into(), b"{\"key\":\"\xff\"}".to_vec());
        assert_eq!(
            parse_body(&raw.body, raw.raw.as_deref()).unwrap_err(),
            Rejection::NotText(1)
        );
    }

    #[test]
    fn other_rejections() {
        assert_eq!(
            parse_message("[1,2]").unwrap_err(),
            Rejection::NotObject("an array")
        );
        assert_eq!(
            parse_message("\"x\"").unwrap_err(),
            Rejection::NotObject("a string")
        );
        assert!(matches!(
            parse_message(r#"{"webhookEvent": "jira:issue_deleted", "issue": {"key": "A-1"}}"#).unwrap_err(),
            Rejection::UnsupportedWebhookEvent(e) if e == "jira:issue_deleted"
        ));
        assert!(matches!(
            parse_message(r#"{"Type": "Notification", "MessageId": "m", "Message": "nope"}"#)
                .unwrap_err(),
            Rejection::SnsMessageNotJson(_)
        ));
        assert!(matches!(
            parse_message(r#"{"source": "aws.cloudwatch", "detail-type": "CloudWatch Alarm State Change", "id": "e", "account": "1", "time": "2026-05-12T20:00:00Z", "detail": {"alarmName": "a", "state": {"value": "WEIRD"}}}"#).unwrap_err(),
            Rejection::UnknownAlarmState(s) if s == "WEIRD"
        ));
        assert!(matches!(
            parse_message(r#"{"source": "aws.cloudwatch", "detail-type": "CloudWatch Alarm State Change", "id": "e", "account": "1", "detail": {"alarmName": "a", "state": {"value": "ALARM"}}}"#).unwrap_err(),
            Rejection::AlarmWithoutTime(_)
        ));
    }

    #[test]
    fn flattening_keeps_document_order_across_blocks() {
        let doc: Value = serde_json::from_str(
            r#"{"type":"doc","content":[
                {"type":"paragraph","content":[{"type":"text","text":"one "},{"type":"text","text":"two"}]},
                {"type":"bulletList","content":[{"type":"listItem","content":[{"type":"paragraph","content":[{"type":"text","text":"three"}]}]}]}
            ]}"#,
        )
        .unwrap();
        assert_eq!(flatten_document(&doc), "one two\nthree");
    }
}

//! Webhook intake on a live `conductor run` (deploy/intake.md): Jira's deliveries signed with
//! HMAC-SHA256, SNS's signed with a certificate (made here with openssl and served by a local
//! server the configuration trusts as its SNS host), each stored once per delivery id and
//! decided like any message; bad signatures, unlisted topics and oversized bodies refused
//! with nothing stored; a subscription confirmed by visiting its SubscribeURL.

use std::{path::Path, process::Command};

use base64::Engine;
use serde_json::{json, Value};
use wiremock::{
    matchers::{method, path},
    Mock, MockServer, ResponseTemplate,
};

use crate::common::{
    self,
    jobs::{free_port, Bench},
};
use conductor::http::webhooks::sns_verify::SnsEnvelope;

const SECRET: &str = "jira-webhook-TESTSECRET";
const TOPIC: &str = "arn:aws:sns:us-east-1:210987654321:alarms";

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn hmac_hex(body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
    ring::hmac::sign(&key, body)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn bench_with_webhooks(cert_server: &str) -> (Bench, String) {
    let port = free_port();
    let prefix = format!("{cert_server}/");
    let bench = Bench::new(false, "ok", move |c, _| {
        c.http.listen = format!("127.0.0.1:{port}");
        c.webhooks.sns_topics = vec![TOPIC.into()];
        c.webhooks.sns_extra_url_prefixes = vec![prefix];
        c.webhooks.max_body_bytes = 64 * 1024;
    })
    .await;
    (bench, format!("http://127.0.0.1:{port}"))
}

async fn ready(base: &str) {
    let c = client();
    common::wait_until(|| {
        let c = c.clone();
        async move {
            c.get(format!("{base}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn jira_deliveries_are_verified_and_stored_once() {
    let (mut bench, base) = bench_with_webhooks("http://127.0.0.1:9").await;
    bench.start_with(&[("CONDUCTOR_JIRA_WEBHOOK_SECRET", SECRET)]);
    ready(&base).await;
    let body = std::fs::read(common::samples().join("ticket-webhook-created.json")).unwrap();
    let c = client();
    let post = |body: Vec<u8>, signature: Option<String>, id: &'static str| {
        let mut req = c
            .post(format!("{base}/webhooks/jira"))
            .header("content-type", "application/json")
            .header("x-atlassian-webhook-identifier", id)
            .body(body);
        if let Some(s) = signature {
            req = req.header("x-hub-signature", s);
        }
        req.send()
    };
    // Refused, nothing stored: no signature, another secret's, a body changed after signing.
    let r = post(body.clone(), None, "d-0").await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.text().await.unwrap().contains("no X-Hub-Signature"));
    let other = {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"another secret");
        let tag = ring::hmac::sign(&key, &body);
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256={hex}")
    };
    assert_eq!(
        post(body.clone(), Some(other), "d-0")
            .await
            .unwrap()
            .status(),
        401
    );
    let mut changed = body.clone();
    changed[10] ^= 1;
    let good = format!("sha256={}", hmac_hex(&body));
    assert_eq!(
        post(changed, Some(good.clone()), "d-0")
            .await
            .unwrap()
            .status(),
        401
    );
    // Too large, whatever its signature.
    let big = vec![b' '; 100 * 1024];
    let big_sig = format!("sha256={}", hmac_hex(&big));
    assert_eq!(
        post(big, Some(big_sig), "d-big").await.unwrap().status(),
        413
    );
    assert_eq!(bench.count("SELECT COUNT(*) FROM messages").await, 0);

    // Stored once the answer is 200: the row is there before the reply.
    let r = post(body.clone(), Some(good.clone()), "d-1").await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        bench
            .count("SELECT COUNT(*) FROM runs WHERE workflow = 'message'")
            .await
            >= 1
    );
    bench
        .wait_for("SELECT COUNT(*) FROM decisions WHERE decision = 'spawn'", 1)
        .await;
    // Jira delivers the same delivery again: acknowledged, stored once.
    assert_eq!(
        post(body.clone(), Some(good), "d-1")
            .await
            .unwrap()
            .status(),
        200
    );
    bench
        .wait_for("SELECT COUNT(*) FROM messages WHERE deliveries = 2", 1)
        .await;
    assert_eq!(bench.count("SELECT COUNT(*) FROM messages").await, 1);
    assert_eq!(
        bench
            .text("SELECT source || ' ' || transport_id FROM messages")
            .await,
        "webhook jira:d-1"
    );
    assert_eq!(bench.count("SELECT COUNT(*) FROM decisions").await, 1);
    let metrics = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .contains(r#"conductor_webhook_deliveries_total{endpoint="jira",outcome="refused"} 4"#),
        "{metrics}"
    );
    assert!(bench.logs().contains("webhook delivery refused"));
    bench.stop();
}

/// A key and a self-signed certificate, as SNS's signing certificate.
fn signing_cert(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let key = dir.join("sns-key.pem");
    let cert = dir.join("sns-cert.pem");
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        ])
        .arg("/CN=sns.us-east-1.amazonaws.com")
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (key, std::fs::read(cert).unwrap())
}

/// The envelope SNS would post, signed (SignatureVersion 2) with `key`.
fn signed(key: &Path, cert_url: &str, fields: Value) -> Value {
    let mut v = fields;
    v["SignatureVersion"] = json!("2");
    v["SigningCertURL"] = json!(cert_url);
    v["Signature"] = json!("");
    let envelope: SnsEnvelope = serde_json::from_value(v.clone()).unwrap();
    let text = envelope.string_to_sign().unwrap();
    let file = key.with_file_name("to-sign.txt");
    std::fs::write(&file, text).unwrap();
    let out = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(key)
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success());
    v["Signature"] = json!(base64::engine::general_purpose::STANDARD.encode(out.stdout));
    v
}

#[tokio::test(flavor = "multi_thread")]
async fn sns_messages_are_verified_confirmed_and_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = signing_cert(dir.path());
    let sns = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path("/SimpleNotificationService-test.pem"))
        .respond_with(ResponseTemplate::new(200).set_body_bytes(cert))
        .mount(&sns)
        .await;
    Mock::given(method("GET"))
        .and(path("/"))
        .respond_with(ResponseTemplate::new(200).set_body_string("<ConfirmSubscriptionResponse/>"))
        .mount(&sns)
        .await;
    let cert_url = format!("{}/SimpleNotificationService-test.pem", sns.uri());
    let (mut bench, base) = bench_with_webhooks(&sns.uri()).await;
    bench.start();
    ready(&base).await;
    let c = client();
    let post = |v: &Value| {
        c.post(format!("{base}/webhooks/sns"))
            .header("content-type", "text/plain; charset=UTF-8")
            .header(
                "x-amz-sns-message-type",
                v["Type"].as_str().unwrap_or_default().to_owned(),
            )
            .body(v.to_string())
            .send()
    };

    // The subscription is confirmed by visiting SNS's SubscribeURL.
    let confirm = signed(
        &key,
        &cert_url,
        json!({
            "Type": "SubscriptionConfirmation", "MessageId": "c-1", "TopicArn": TOPIC,
            "Message": "You have chosen to subscribe to the topic.",
            "Timestamp": "2026-05-12T20:00:00.000Z", "Token": "tok-1",
            "SubscribeURL": format!("{}/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token=tok-1", sns.uri()),
        }),
    );
    assert_eq!(post(&confirm).await.unwrap().status(), 200);
    let visited = sns
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| {
            r.url
                .query()
                .unwrap_or_default()
                .contains("Action=ConfirmSubscription")
        })
        .count();
    assert_eq!(visited, 1);

    let alarm = std::fs::read_to_string(common::samples().join("alarm-sns.json")).unwrap();
    let alarm: Value = serde_json::from_str(&alarm).unwrap();
    let fields = json!({
        "Type": "Notification", "MessageId": alarm["MessageId"], "TopicArn": TOPIC,
        "Subject": alarm["Subject"], "Message": alarm["Message"], "Timestamp": alarm["Timestamp"],
    });
    let good = signed(&key, &cert_url, fields.clone());
    // Refused, nothing stored: a changed message, a topic not listed, a certificate elsewhere.
    let mut tampered = good.clone();
    tampered["Message"] = json!(alarm["Message"]
        .as_str()
        .unwrap()
        .replace("queue-depth", "other"));
    assert_eq!(post(&tampered).await.unwrap().status(), 401);
    let mut other_topic = fields.clone();
    other_topic["TopicArn"] = json!("arn:aws:sns:us-east-1:999999999999:alarms");
    let other_topic = signed(&key, &cert_url, other_topic);
    assert_eq!(post(&other_topic).await.unwrap().status(), 403);
    let elsewhere = signed(
        &key,
        "https://sns.us-east-1.amazonaws.com.evil.test/x.pem",
        fields,
    );
    assert_eq!(post(&elsewhere).await.unwrap().status(), 401);
    assert_eq!(bench.count("SELECT COUNT(*) FROM messages").await, 0);

    // Stored, decided, and stored once when SNS delivers it again.
    assert_eq!(post(&good).await.unwrap().status(), 200);
    assert_eq!(post(&good).await.unwrap().status(), 200);
    bench
        .wait_for("SELECT COUNT(*) FROM messages WHERE deliveries = 2", 1)
        .await;
    bench
        .wait_for("SELECT COUNT(*) FROM decisions WHERE kind = 'alarm'", 1)
        .await;
    assert_eq!(bench.count("SELECT COUNT(*) FROM messages").await, 1);
    assert_eq!(
        bench.text("SELECT transport_id FROM messages").await,
        format!("sns:{}", alarm["MessageId"].as_str().unwrap())
    );
    assert_eq!(
        bench.text("SELECT account FROM decisions").await,
        "210987654321"
    );
    bench.stop();
}

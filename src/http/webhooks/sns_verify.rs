//! Verifies that an Amazon SNS HTTP/S delivery really comes from SNS
//! (<https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html>).
//!
//! Anybody can POST a JSON body that looks like an SNS message to the webhook, so a delivery is
//! believed only when its `Signature` checks out against the public key of the certificate at
//! its `SigningCertURL`. That URL is named by the message itself, so the signature alone proves
//! nothing: a forger would sign with their own key and point at their own certificate. What
//! makes the key trustworthy is *where the certificate comes from*: [`url_allowed`] accepts
//! only `https://sns.{region}.amazonaws.com/{file}.pem` (`.amazonaws.com.cn` in China), where
//! only AWS can serve content, and the caller fetches it over https with normal TLS validation.
//! So the certificate chain is deliberately not checked here (nor the certificate's validity
//! period): TLS to the SNS host already vouched for the certificate.
//!
//! The order a caller follows: parse the body into an [`SnsEnvelope`], check the topic is one it
//! expects (otherwise [`SnsRefusal::TopicNotAccepted`]), check the certificate URL with
//! [`SnsEnvelope::check_signing_cert_url`], fetch the certificate (with a size cap), then
//! [`verify`]. The topic check matters as much as the signature: any AWS account can create a
//! topic and have SNS sign messages for it.
//!
//! Signature versions: `"1"` is RSA PKCS#1 v1.5 with SHA-1, `"2"` the same with SHA-256; the
//! signed bytes are the canonical "string to sign" built by [`SnsEnvelope::string_to_sign`].

use base64::Engine as _;
use ring::signature;
use rustls_pki_types::{pem::PemObject, CertificateDer};

/// An SNS HTTP/S delivery (Notification, SubscriptionConfirmation, UnsubscribeConfirmation), as SNS posts it.
///
/// Fields SNS adds that are not signed (such as a Notification's `UnsubscribeURL`) are ignored.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct SnsEnvelope {
    #[serde(rename = "Type")]
    pub kind: String,
    #[serde(rename = "MessageId")]
    pub message_id: String,
    #[serde(rename = "TopicArn")]
    pub topic_arn: String,
    #[serde(rename = "Subject", default)]
    pub subject: Option<String>,
    #[serde(rename = "Message")]
    pub message: String,
    #[serde(rename = "Timestamp")]
    pub timestamp: String,
    #[serde(rename = "SignatureVersion")]
    pub signature_version: String,
    #[serde(rename = "Signature")]
    pub signature: String,
    #[serde(rename = "SigningCertURL")]
    pub signing_cert_url: String,
    #[serde(rename = "SubscribeURL", default)]
    pub subscribe_url: Option<String>,
    #[serde(rename = "Token", default)]
    pub token: Option<String>,
}

/// Why a delivery is not believed. Values that come from the request are shown quoted and
/// escaped (and cut short), so a reason always stays one line in a log whatever a sender puts
/// in the body.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SnsRefusal {
    #[error("the topic ARN {0:?} is not an SNS topic ARN with a plain region")]
    MalformedTopicArn(String),
    #[error("message type {0:?} is not handled")]
    UnhandledType(String),
    #[error("the field {field} is missing from a {kind:?} message")]
    MissingField { field: &'static str, kind: String },
    #[error("the signing certificate URL {0:?} is not an SNS host of region {1:?}")]
    CertUrlNotAllowed(String, String),
    #[error("unsupported SignatureVersion {0:?}")]
    UnsupportedSignatureVersion(String),
    #[error("the Signature is not base64: {0}")]
    SignatureNotBase64(String),
    #[error("certificate unreadable: {0}")]
    CertificateUnreadable(String),
    #[error("signature does not match")]
    SignatureMismatch,
    #[error("topic {0:?} is not accepted here")]
    TopicNotAccepted(String),
}

/// How much of a request-supplied value a refusal keeps: enough to recognise it in a log, not
/// so much that a hostile body fills the log.
const SHOWN_CHARS: usize = 200;

/// `value` cut to [`SHOWN_CHARS`] characters, for a refusal.
fn clip(value: &str) -> String {
    match value.char_indices().nth(SHOWN_CHARS) {
        Some((end, _)) => format!("{}…", &value[..end]),
        None => value.to_owned(),
    }
}

impl SnsEnvelope {
    /// The region of the topic (4th field of arn:aws:sns:REGION:ACCOUNT:NAME, or arn:aws-cn:... etc.).
    ///
    /// The region ends up inside the host name the certificate is fetched from, so only a plain
    /// region (lowercase letters, digits, inner dashes) is accepted: a "region" such as
    /// `mybucket.s3` would otherwise turn `sns.{region}.amazonaws.com` into an S3 bucket's host,
    /// whose content anybody can choose.
    pub fn region(&self) -> Result<&str, SnsRefusal> {
        let refuse = || SnsRefusal::MalformedTopicArn(clip(&self.topic_arn));
        let mut fields = self.topic_arn.splitn(6, ':');
        let (Some("arn"), Some(partition), Some("sns"), Some(region), Some(account), Some(name)) = (
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
            fields.next(),
        ) else {
            return Err(refuse());
        };
        if !partition.starts_with("aws")
            || account.is_empty()
            || name.is_empty()
            || !plain_region(region)
        {
            return Err(refuse());
        }
        Ok(region)
    }

    /// The canonical string to sign, per the AWS doc: for Notification the keys Message, MessageId, Subject (only if present), Timestamp, TopicArn, Type; for SubscriptionConfirmation/UnsubscribeConfirmation: Message, MessageId, SubscribeURL, Timestamp, Token, TopicArn, Type. Each as "Key\nvalue\n".
    ///
    /// Any other type is refused rather than guessed at: a string to sign built from the wrong
    /// keys would only ever fail to match, and an unknown type is not something to act on anyway.
    pub fn string_to_sign(&self) -> Result<String, SnsRefusal> {
        let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(7);
        match self.kind.as_str() {
            "Notification" => {
                pairs.push(("Message", self.message.as_str()));
                pairs.push(("MessageId", self.message_id.as_str()));
                if let Some(subject) = self.subject.as_deref() {
                    pairs.push(("Subject", subject));
                }
                pairs.push(("Timestamp", self.timestamp.as_str()));
                pairs.push(("TopicArn", self.topic_arn.as_str()));
                pairs.push(("Type", self.kind.as_str()));
            }
            "SubscriptionConfirmation" | "UnsubscribeConfirmation" => {
                let missing = |field: &'static str| SnsRefusal::MissingField {
                    field,
                    kind: clip(&self.kind),
                };
                let subscribe_url = self
                    .subscribe_url
                    .as_deref()
                    .ok_or_else(|| missing("SubscribeURL"))?;
                let token = self.token.as_deref().ok_or_else(|| missing("Token"))?;
                pairs.push(("Message", self.message.as_str()));
                pairs.push(("MessageId", self.message_id.as_str()));
                pairs.push(("SubscribeURL", subscribe_url));
                pairs.push(("Timestamp", self.timestamp.as_str()));
                pairs.push(("Token", token));
                pairs.push(("TopicArn", self.topic_arn.as_str()));
                pairs.push(("Type", self.kind.as_str()));
            }
            other => return Err(SnsRefusal::UnhandledType(clip(other))),
        }
        let size = pairs
            .iter()
            .map(|(k, v)| k.len() + v.len() + 2)
            .sum::<usize>();
        let mut out = String::with_capacity(size);
        for (key, value) in pairs {
            out.push_str(key);
            out.push('\n');
            out.push_str(value);
            out.push('\n');
        }
        Ok(out)
    }

    /// Refuses the delivery unless its `SigningCertURL` may be fetched for its topic's region
    /// (see [`url_allowed`]): the check to make before fetching anything.
    pub fn check_signing_cert_url(&self, extra_prefixes: &[String]) -> Result<(), SnsRefusal> {
        let region = self.region()?;
        if url_allowed(&self.signing_cert_url, region, extra_prefixes) {
            Ok(())
        } else {
            Err(SnsRefusal::CertUrlNotAllowed(
                clip(&self.signing_cert_url),
                region.to_owned(),
            ))
        }
    }
}

/// Whether `region` is a plain AWS region name (`us-east-1`, `cn-north-1`, `us-gov-west-1`):
/// lowercase ASCII letters and digits, dashes only between them. Nothing that could add a label
/// or a path to a host name.
fn plain_region(region: &str) -> bool {
    !region.is_empty()
        && region.len() <= 32
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !region.starts_with('-')
        && !region.ends_with('-')
        && !region.contains("--")
}

/// The host SNS serves signing certificates from in `region` (China has its own domain).
fn sns_host(region: &str) -> String {
    if region.starts_with("cn-") {
        format!("sns.{region}.amazonaws.com.cn")
    } else {
        format!("sns.{region}.amazonaws.com")
    }
}

/// Whether `file` is a plain certificate file name such as
/// `SimpleNotificationService-9c6465fa7f48f5cacd23014631ec1136.pem`: one path segment of
/// letters, digits, `-`, `_`, `.`, ending in `.pem`. Pinning the shape keeps the fetch away from
/// the SNS host's other resources (its API answers on the same host, and an answer that echoes
/// a request parameter could otherwise carry a forger's certificate).
fn plain_pem_file(file: &str) -> bool {
    file.len() > ".pem".len()
        && file.len() <= 200
        && file.ends_with(".pem")
        && file
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && file
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Whether `url` starts with the operator's `prefix` at a boundary that keeps the prefix's
/// host: once the prefix has reached its path (a `/`, `?` or `#` after `://`) anything may
/// follow; before that the URL must continue with one of those (or end), so that
/// `http://localhost:8080` does not admit `http://localhost:8080.evil.com/` or
/// `http://localhost:8080@evil.com/`. An empty prefix admits nothing.
pub fn starts_with_prefix(url: &str, prefix: &str) -> bool {
    if prefix.is_empty() {
        return false;
    }
    let Some(rest) = url.strip_prefix(prefix) else {
        return false;
    };
    let authority_closed = prefix
        .find("://")
        .is_some_and(|at| prefix[at + 3..].contains(['/', '?', '#']));
    authority_closed || matches!(rest.chars().next(), None | Some('/' | '?' | '#'))
}

/// Whether `url` may be fetched for this region: https, host exactly `sns.{region}.amazonaws.com` (or `sns.{region}.amazonaws.com.cn` for cn-* regions), no userinfo, default port; or it starts with one of `extra_prefixes` (operator-configured, e.g. for tests or private endpoints).
///
/// The SNS form is matched as an exact shape, `https://{host}/{file}.pem`, rather than through
/// a URL parser: there is then nothing for two parsers (ours and the HTTP client's) to read
/// differently, and no userinfo, port, percent-encoding, backslash, query or fragment can get
/// in. SNS itself only ever sends that shape. URLs with whitespace or control characters are
/// refused outright, since URL parsers silently drop some of them.
pub fn url_allowed(url: &str, region: &str, extra_prefixes: &[String]) -> bool {
    if url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return false;
    }
    if extra_prefixes.iter().any(|p| starts_with_prefix(url, p)) {
        return true;
    }
    if !plain_region(region) {
        return false;
    }
    let Some(after_scheme) = url.strip_prefix("https://") else {
        return false;
    };
    let Some(path) = after_scheme.strip_prefix(sns_host(region).as_str()) else {
        return false;
    };
    let Some(file) = path.strip_prefix('/') else {
        return false;
    };
    plain_pem_file(file)
}

/// Verifies `envelope`'s signature with the certificate (PEM text as served at SigningCertURL).
///
/// Only the signature is checked here; the caller has already made sure the certificate came
/// from an allowed URL ([`SnsEnvelope::check_signing_cert_url`]) and that the topic is wanted.
/// The PEM must *begin* with the certificate (after whitespace): a certificate found somewhere
/// in the middle of other text is not what SNS serves.
pub fn verify(envelope: &SnsEnvelope, cert_pem: &[u8]) -> Result<(), SnsRefusal> {
    let algorithm: &'static dyn signature::VerificationAlgorithm =
        match envelope.signature_version.as_str() {
            "1" => &signature::RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
            "2" => &signature::RSA_PKCS1_2048_8192_SHA256,
            other => return Err(SnsRefusal::UnsupportedSignatureVersion(clip(other))),
        };
    let signed = envelope.string_to_sign()?;
    let signature_bytes = base64::engine::general_purpose::STANDARD
        .decode(envelope.signature.as_bytes())
        .map_err(|e| SnsRefusal::SignatureNotBase64(e.to_string()))?;
    let rsa_public_key = rsa_public_key_of(cert_pem)?;
    signature::UnparsedPublicKey::new(algorithm, rsa_public_key)
        .verify(signed.as_bytes(), &signature_bytes)
        .map_err(|_| SnsRefusal::SignatureMismatch)
}

/// The certificate's RSA public key, as the DER `RSAPublicKey` that ring's RSA verification
/// takes.
fn rsa_public_key_of(cert_pem: &[u8]) -> Result<Vec<u8>, SnsRefusal> {
    const BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";
    let cert_pem = cert_pem.trim_ascii_start();
    if !cert_pem.starts_with(BEGIN) {
        return Err(SnsRefusal::CertificateUnreadable(
            "the text does not begin with a PEM certificate".to_owned(),
        ));
    }
    let der = CertificateDer::from_pem_slice(cert_pem)
        .map_err(|e| SnsRefusal::CertificateUnreadable(format!("PEM: {e}")))?;
    let cert = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| SnsRefusal::CertificateUnreadable(format!("X.509: {e}")))?;
    let spki = cert.subject_public_key_info();
    let key = rsa_public_key_from_spki(spki.as_ref())
        .map_err(|e| SnsRefusal::CertificateUnreadable(e.to_owned()))?;
    Ok(key.to_vec())
}

/// The DER tag of a SEQUENCE (constructed), such as the SPKI and its AlgorithmIdentifier.
const TAG_SEQUENCE: u8 = 0x30;
/// The DER tag of a BIT STRING, which holds the key.
const TAG_BIT_STRING: u8 = 0x03;
/// The DER tag of an OBJECT IDENTIFIER, which names the key's algorithm.
const TAG_OID: u8 = 0x06;

/// The contents (no tag or length) of the OID rsaEncryption, 1.2.840.113549.1.1.1.
const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];

/// A DER NULL, the parameters rsaEncryption carries.
const DER_NULL: &[u8] = &[0x05, 0x00];

/// Reads one DER element of type `tag` from the front of `input`: its contents and what follows
/// it. Lengths may be short form (one byte below 0x80) or long form (0x81 to 0x84 then that many
/// big-endian bytes); indefinite lengths and non-minimal long forms are refused, being BER, not
/// DER, and every length is checked against the bytes actually there.
fn der_read(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), &'static str> {
    let (&found, after_tag) = input.split_first().ok_or("DER: truncated before a tag")?;
    if found != tag {
        return Err("DER: unexpected tag");
    }
    let (&first, after_first) = after_tag
        .split_first()
        .ok_or("DER: truncated before a length")?;
    let (len, body) = if first < 0x80 {
        (usize::from(first), after_first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 {
            return Err("DER: indefinite length");
        }
        if count > 4 {
            return Err("DER: length too large");
        }
        if after_first.len() < count {
            return Err("DER: truncated inside a length");
        }
        let (len_bytes, body) = after_first.split_at(count);
        if len_bytes.first() == Some(&0) {
            return Err("DER: length with a leading zero byte");
        }
        // At most four bytes, so the shifts cannot overflow a u32.
        let len = len_bytes
            .iter()
            .fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
        if len < 0x80 {
            return Err("DER: long-form length for a short length");
        }
        let len = usize::try_from(len).map_err(|_| "DER: length too large")?;
        (len, body)
    };
    if body.len() < len {
        return Err("DER: length runs past the end of the data");
    }
    Ok(body.split_at(len))
}

/// The `RSAPublicKey` inside a DER SubjectPublicKeyInfo:
/// `SEQUENCE { SEQUENCE { OID rsaEncryption, NULL (or nothing) }, BIT STRING { 0x00, key } }`.
/// Anything else (another algorithm, trailing bytes, a BIT STRING with unused bits) is refused,
/// so that what reaches ring is exactly the key the certificate names.
fn rsa_public_key_from_spki(spki: &[u8]) -> Result<&[u8], &'static str> {
    let (spki_body, after) = der_read(spki, TAG_SEQUENCE)?;
    if !after.is_empty() {
        return Err("DER: bytes after the SubjectPublicKeyInfo");
    }
    let (algorithm, after_algorithm) = der_read(spki_body, TAG_SEQUENCE)?;
    let (oid, parameters) = der_read(algorithm, TAG_OID)?;
    if oid != OID_RSA_ENCRYPTION {
        return Err("the certificate's key is not an RSA key");
    }
    if !(parameters.is_empty() || parameters == DER_NULL) {
        return Err("DER: unexpected rsaEncryption parameters");
    }
    let (bits, after_bits) = der_read(after_algorithm, TAG_BIT_STRING)?;
    if !after_bits.is_empty() {
        return Err("DER: bytes after the public key BIT STRING");
    }
    match bits.split_first() {
        Some((&0, key)) if !key.is_empty() => Ok(key),
        Some((&0, _)) => Err("DER: empty public key"),
        Some(_) => Err("DER: the public key BIT STRING has unused bits"),
        None => Err("DER: empty BIT STRING"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    const ARN: &str = "arn:aws:sns:us-west-2:123456789012:MyTopic";
    const TIMESTAMP: &str = "2012-04-26T20:45:04.751Z";

    fn notification(subject: Option<&str>) -> SnsEnvelope {
        SnsEnvelope {
            kind: "Notification".to_owned(),
            message_id: "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324".to_owned(),
            topic_arn: ARN.to_owned(),
            subject: subject.map(str::to_owned),
            message: "Hello world!\nsecond line".to_owned(),
            timestamp: TIMESTAMP.to_owned(),
            signature_version: "2".to_owned(),
            signature: String::new(),
            signing_cert_url:
                "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem"
                    .to_owned(),
            subscribe_url: None,
            token: None,
        }
    }

    fn subscription_confirmation() -> SnsEnvelope {
        SnsEnvelope {
            kind: "SubscriptionConfirmation".to_owned(),
            message_id: "165545c9-2a5c-472c-8df2-7ff2be2b3b1b".to_owned(),
            topic_arn: ARN.to_owned(),
            subject: None,
            message: "You have chosen to subscribe to the topic.".to_owned(),
            timestamp: TIMESTAMP.to_owned(),
            signature_version: "2".to_owned(),
            signature: String::new(),
            signing_cert_url:
                "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem"
                    .to_owned(),
            subscribe_url: Some(
                "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&Token=2336412f37"
                    .to_owned(),
            ),
            token: Some("2336412f37".to_owned()),
        }
    }

    // ---- url_allowed ----

    const CERT_FILE: &str = "SimpleNotificationService-9c6465fa7f48f5cacd23014631ec1136.pem";

    #[test]
    fn url_allowed_accepts_the_regions_sns_host() {
        let none: &[String] = &[];
        assert!(url_allowed(
            &format!("https://sns.us-east-1.amazonaws.com/{CERT_FILE}"),
            "us-east-1",
            none
        ));
        assert!(url_allowed(
            &format!("https://sns.cn-north-1.amazonaws.com.cn/{CERT_FILE}"),
            "cn-north-1",
            none
        ));
        assert!(url_allowed(
            &format!("https://sns.us-gov-west-1.amazonaws.com/{CERT_FILE}"),
            "us-gov-west-1",
            none
        ));
    }

    #[test]
    fn url_allowed_rejects_everything_else() {
        let none: &[String] = &[];
        let rejected = [
            format!("http://sns.us-east-1.amazonaws.com/{CERT_FILE}"),
            format!("https://sns.us-west-2.amazonaws.com/{CERT_FILE}"),
            format!("https://sns.us-east-1.amazonaws.com.evil.com/{CERT_FILE}"),
            format!("https://evil.com/sns.us-east-1.amazonaws.com/{CERT_FILE}"),
            "https://evil.com/sns.us-east-1.amazonaws.com".to_owned(),
            format!("https://sns.us-east-1.amazonaws.com@evil.com/{CERT_FILE}"),
            format!("https://user@sns.us-east-1.amazonaws.com/{CERT_FILE}"),
            format!("https://user:pw@sns.us-east-1.amazonaws.com/{CERT_FILE}"),
            format!("https://sns.us-east-1.amazonaws.com:8443/{CERT_FILE}"),
            format!("https://sns.us-east-1.amazonaws.com:443/{CERT_FILE}"),
            format!("https://sns.us-east-1.amazonaws.com\\@evil.com/{CERT_FILE}"),
            format!("https://sns.us-east-1.amazonaws.com/{CERT_FILE}?x=1"),
            format!("https://sns.us-east-1.amazonaws.com/{CERT_FILE}#frag"),
            format!("https://sns.us-east-1.amazonaws.com/dir/{CERT_FILE}"),
            format!("https://sns.us-east-1.amazonaws.com/%2e%2e/{CERT_FILE}"),
            format!("https://sns.us-east-1.amazonaws.com/\t{CERT_FILE}"),
            format!("https://sns.us-east-1.amazonaws.com/{CERT_FILE}\n"),
            format!("https://sns.us-east-1.amazonaws.com.cn/{CERT_FILE}"),
            format!("HTTPS://SNS.US-EAST-1.AMAZONAWS.COM/{CERT_FILE}"),
            "https://sns.us-east-1.amazonaws.com/?Action=ListTopics&x=.pem".to_owned(),
            "https://sns.us-east-1.amazonaws.com/".to_owned(),
            "https://sns.us-east-1.amazonaws.com/.pem".to_owned(),
            "https://sns.us-east-1.amazonaws.com/cert.txt".to_owned(),
            "https://sns.us-east-1.amazonaws.com".to_owned(),
            String::new(),
        ];
        for url in &rejected {
            assert!(!url_allowed(url, "us-east-1", none), "accepted {url:?}");
        }
        // China regions use the .com.cn domain only.
        assert!(!url_allowed(
            &format!("https://sns.cn-north-1.amazonaws.com/{CERT_FILE}"),
            "cn-north-1",
            none
        ));
        // A "region" that would add labels to the host (here: an S3 bucket's host) is refused.
        assert!(!url_allowed(
            &format!("https://sns.mybucket.s3.amazonaws.com/{CERT_FILE}"),
            "mybucket.s3",
            none
        ));
        assert!(!url_allowed("https://sns..amazonaws.com/x.pem", "", none));
    }

    #[test]
    fn url_allowed_honours_extra_prefixes_at_a_boundary() {
        let with_path = vec!["http://127.0.0.1:8080/sns/".to_owned()];
        assert!(url_allowed(
            "http://127.0.0.1:8080/sns/cert.pem",
            "us-east-1",
            &with_path
        ));
        assert!(!url_allowed(
            "http://127.0.0.1:8080/other/cert.pem",
            "us-east-1",
            &with_path
        ));

        let bare_host = vec!["http://127.0.0.1:8080".to_owned()];
        assert!(url_allowed(
            "http://127.0.0.1:8080/cert.pem",
            "us-east-1",
            &bare_host
        ));
        assert!(url_allowed(
            "http://127.0.0.1:8080",
            "us-east-1",
            &bare_host
        ));
        for url in [
            "http://127.0.0.1:80801/cert.pem",
            "http://127.0.0.1:8080@evil.com/cert.pem",
            "http://127.0.0.1:8080.evil.com/cert.pem",
            "http://127.0.0.1:8080\\@evil.com/cert.pem",
            "http://127.0.0.1:8080/\tcert.pem",
        ] {
            assert!(
                !url_allowed(url, "us-east-1", &bare_host),
                "accepted {url:?}"
            );
        }

        // An empty prefix is not a wildcard.
        let empty = vec![String::new()];
        assert!(!url_allowed(
            "https://evil.com/cert.pem",
            "us-east-1",
            &empty
        ));
    }

    // ---- region and string_to_sign ----

    #[test]
    fn region_is_the_fourth_arn_field() {
        let mut envelope = notification(None);
        assert_eq!(envelope.region(), Ok("us-west-2"));
        envelope.topic_arn = "arn:aws-cn:sns:cn-north-1:123456789012:MyTopic".to_owned();
        assert_eq!(envelope.region(), Ok("cn-north-1"));
        for bad in [
            "",
            "arn:aws:sqs:us-east-1:123456789012:queue",
            "arn:aws:sns:us-east-1:123456789012",
            "arn:aws:sns::123456789012:MyTopic",
            "arn:aws:sns:mybucket.s3:123456789012:MyTopic",
            "arn:aws:sns:US-EAST-1:123456789012:MyTopic",
            "arn:evil:sns:us-east-1:123456789012:MyTopic",
            "urn:aws:sns:us-east-1:123456789012:MyTopic",
        ] {
            envelope.topic_arn = bad.to_owned();
            assert_eq!(
                envelope.region(),
                Err(SnsRefusal::MalformedTopicArn(bad.to_owned())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn string_to_sign_for_a_notification_without_subject() {
        assert_eq!(
            notification(None).string_to_sign(),
            Ok("Message\nHello world!\nsecond line\n\
                MessageId\n22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324\n\
                Timestamp\n2012-04-26T20:45:04.751Z\n\
                TopicArn\narn:aws:sns:us-west-2:123456789012:MyTopic\n\
                Type\nNotification\n"
                .to_owned())
        );
    }

    #[test]
    fn string_to_sign_for_a_notification_with_subject() {
        assert_eq!(
            notification(Some("My First Message")).string_to_sign(),
            Ok("Message\nHello world!\nsecond line\n\
                MessageId\n22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324\n\
                Subject\nMy First Message\n\
                Timestamp\n2012-04-26T20:45:04.751Z\n\
                TopicArn\narn:aws:sns:us-west-2:123456789012:MyTopic\n\
                Type\nNotification\n"
                .to_owned())
        );
    }

    #[test]
    fn string_to_sign_for_a_subscription_confirmation() {
        assert_eq!(
            subscription_confirmation().string_to_sign(),
            Ok("Message\nYou have chosen to subscribe to the topic.\n\
                MessageId\n165545c9-2a5c-472c-8df2-7ff2be2b3b1b\n\
                SubscribeURL\nhttps://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&Token=2336412f37\n\
                Timestamp\n2012-04-26T20:45:04.751Z\n\
                Token\n2336412f37\n\
                TopicArn\narn:aws:sns:us-west-2:123456789012:MyTopic\n\
                Type\nSubscriptionConfirmation\n"
                .to_owned())
        );
    }

    #[test]
    fn string_to_sign_refuses_unknown_types_and_missing_fields() {
        let mut envelope = notification(None);
        envelope.kind = "Surprise".to_owned();
        assert_eq!(
            envelope.string_to_sign(),
            Err(SnsRefusal::UnhandledType("Surprise".to_owned()))
        );
        let mut envelope = subscription_confirmation();
        envelope.token = None;
        assert_eq!(
            envelope.string_to_sign(),
            Err(SnsRefusal::MissingField {
                field: "Token",
                kind: "SubscriptionConfirmation".to_owned()
            })
        );
    }

    #[test]
    fn deserializes_a_delivery_as_sns_posts_it() {
        let body = r#"{
            "Type" : "Notification",
            "MessageId" : "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
            "TopicArn" : "arn:aws:sns:us-west-2:123456789012:MyTopic",
            "Subject" : "My First Message",
            "Message" : "Hello world!",
            "Timestamp" : "2012-05-02T00:54:06.655Z",
            "SignatureVersion" : "1",
            "Signature" : "EXAMPLEw6JRN==",
            "SigningCertURL" : "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem",
            "UnsubscribeURL" : "https://sns.us-west-2.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=x"
        }"#;
        let envelope: SnsEnvelope = serde_json::from_str(body).expect("parses");
        assert_eq!(envelope.kind, "Notification");
        assert_eq!(envelope.subject.as_deref(), Some("My First Message"));
        assert_eq!(envelope.token, None);
        assert_eq!(envelope.check_signing_cert_url(&[]), Ok(()));
    }

    #[test]
    fn check_signing_cert_url_names_url_and_region() {
        let mut envelope = notification(None);
        envelope.signing_cert_url = "https://evil.com/x.pem".to_owned();
        assert_eq!(
            envelope.check_signing_cert_url(&[]),
            Err(SnsRefusal::CertUrlNotAllowed(
                "https://evil.com/x.pem".to_owned(),
                "us-west-2".to_owned()
            ))
        );
    }

    #[test]
    fn refusals_stay_on_one_line() {
        let refusal = SnsRefusal::UnhandledType(clip("a\nb"));
        assert_eq!(refusal.to_string(), r#"message type "a\nb" is not handled"#);
        let long = "x".repeat(10_000);
        assert!(SnsRefusal::TopicNotAccepted(clip(&long)).to_string().len() < 300);
    }

    // ---- DER reader ----

    /// rsaEncryption AlgorithmIdentifier: SEQUENCE { OID 1.2.840.113549.1.1.1, NULL }.
    const ALG_RSA: [u8; 15] = [
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    /// A stand-in RSAPublicKey: SEQUENCE { INTEGER 5, INTEGER 3 }.
    const FAKE_KEY: [u8; 8] = [0x30, 0x06, 0x02, 0x01, 0x05, 0x02, 0x01, 0x03];

    /// The hand-made SPKI around FAKE_KEY, all lengths in short form.
    fn short_spki() -> Vec<u8> {
        let mut spki = vec![0x30, 0x1a];
        spki.extend_from_slice(&ALG_RSA);
        spki.extend_from_slice(&[0x03, 0x09, 0x00]);
        spki.extend_from_slice(&FAKE_KEY);
        assert_eq!(spki.len(), 2 + 0x1a);
        spki
    }

    #[test]
    fn der_reader_takes_the_key_out_of_a_short_form_spki() {
        assert_eq!(rsa_public_key_from_spki(&short_spki()), Ok(&FAKE_KEY[..]));

        // Parameters left out altogether are also fine.
        let mut spki = vec![0x30, 0x18, 0x30, 0x0b];
        spki.extend_from_slice(&ALG_RSA[2..13]);
        spki.extend_from_slice(&[0x03, 0x09, 0x00]);
        spki.extend_from_slice(&FAKE_KEY);
        assert_eq!(rsa_public_key_from_spki(&spki), Ok(&FAKE_KEY[..]));
    }

    #[test]
    fn der_reader_takes_the_key_out_of_a_long_form_spki() {
        let key: Vec<u8> = (0..200u8).collect();
        // BIT STRING of 1 + 200 = 201 (0xc9) bytes; SEQUENCE of 15 + 3 + 201 = 219 (0xdb) bytes.
        let mut spki = vec![0x30, 0x81, 0xdb];
        spki.extend_from_slice(&ALG_RSA);
        spki.extend_from_slice(&[0x03, 0x81, 0xc9, 0x00]);
        spki.extend_from_slice(&key);
        assert_eq!(rsa_public_key_from_spki(&spki), Ok(&key[..]));

        // The same in a two-byte length: 0x82 0x00 0xdb is not minimal, so not DER.
        let mut padded = vec![0x30, 0x82, 0x00, 0xdb];
        padded.extend_from_slice(&spki[3..]);
        assert!(rsa_public_key_from_spki(&padded).is_err());

        // A long form for a length below 0x80 is not DER either.
        let mut needless = vec![0x30, 0x81, 0x1a];
        needless.extend_from_slice(&short_spki()[2..]);
        assert!(rsa_public_key_from_spki(&needless).is_err());
    }

    #[test]
    fn der_reader_refuses_malformed_spkis() {
        let good = short_spki();

        let mut unused_bits = good.clone();
        unused_bits[2 + 15 + 2] = 0x01;
        assert_eq!(
            rsa_public_key_from_spki(&unused_bits),
            Err("DER: the public key BIT STRING has unused bits")
        );

        let mut trailing = good.clone();
        trailing.push(0x00);
        assert!(rsa_public_key_from_spki(&trailing).is_err());

        let mut indefinite = good.clone();
        indefinite[1] = 0x80;
        assert_eq!(
            rsa_public_key_from_spki(&indefinite),
            Err("DER: indefinite length")
        );

        let mut too_long = good.clone();
        too_long[1] = 0x1b;
        assert!(rsa_public_key_from_spki(&too_long).is_err());

        assert!(rsa_public_key_from_spki(&good[..good.len() - 1]).is_err());
        assert!(rsa_public_key_from_spki(&[]).is_err());
        assert!(rsa_public_key_from_spki(&[0x30]).is_err());
        assert!(rsa_public_key_from_spki(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
        assert!(rsa_public_key_from_spki(&[0x30, 0x85, 1, 0, 0, 0, 0]).is_err());

        // An EC key (OID 1.2.840.10045.2.1) is not RSA:
        // SEQUENCE { SEQUENCE(11) { OID(7), NULL }, BIT STRING(9) }.
        let mut ec_spki = vec![0x30, 0x18, 0x30, 0x0b, 0x06, 0x07];
        ec_spki.extend_from_slice(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x05, 0x00]);
        ec_spki.extend_from_slice(&[0x03, 0x09, 0x00]);
        ec_spki.extend_from_slice(&FAKE_KEY);
        assert_eq!(
            rsa_public_key_from_spki(&ec_spki),
            Err("the certificate's key is not an RSA key")
        );

        // Parameters other than NULL.
        let mut odd_params = vec![0x30, 0x1a, 0x30, 0x0d];
        odd_params.extend_from_slice(&ALG_RSA[2..13]);
        odd_params.extend_from_slice(&[0x04, 0x00]);
        odd_params.extend_from_slice(&[0x03, 0x09, 0x00]);
        odd_params.extend_from_slice(&FAKE_KEY);
        assert_eq!(
            rsa_public_key_from_spki(&odd_params),
            Err("DER: unexpected rsaEncryption parameters")
        );

        // A BIT STRING holding only the unused-bits byte.
        let mut empty_key = vec![0x30, 0x12];
        empty_key.extend_from_slice(&ALG_RSA);
        empty_key.extend_from_slice(&[0x03, 0x01, 0x00]);
        assert_eq!(
            rsa_public_key_from_spki(&empty_key),
            Err("DER: empty public key")
        );
    }

    // ---- end to end, with keys and certificates made by openssl ----

    /// Runs the openssl command-line tool in `dir`, panicking with its stderr if it fails.
    fn openssl(dir: &Path, args: &[&str]) {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the openssl command-line tool is needed by this test");
        assert!(
            out.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// An RSA key and its self-signed certificate, in a temporary directory.
    struct Signer {
        dir: tempfile::TempDir,
        cert_pem: Vec<u8>,
    }

    impl Signer {
        fn new() -> Signer {
            let dir = tempfile::tempdir().expect("tempdir");
            openssl(
                dir.path(),
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-keyout",
                    "key.pem",
                    "-out",
                    "cert.pem",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=sns-verify-test",
                    "-addext",
                    "basicConstraints=critical,CA:FALSE",
                ],
            );
            let cert_pem = std::fs::read(dir.path().join("cert.pem")).expect("cert.pem");
            Signer { dir, cert_pem }
        }

        /// The base64 signature of `text` with this key; `digest` is `-sha1` or `-sha256`.
        fn sign(&self, digest: &str, text: &str) -> String {
            let dir = self.dir.path();
            std::fs::write(dir.join("tosign.txt"), text).expect("write tosign.txt");
            openssl(
                dir,
                &[
                    "dgst",
                    digest,
                    "-sign",
                    "key.pem",
                    "-out",
                    "sig.bin",
                    "tosign.txt",
                ],
            );
            let signature = std::fs::read(dir.join("sig.bin")).expect("sig.bin");
            base64::engine::general_purpose::STANDARD.encode(signature)
        }

        /// `envelope` signed as SNS would for its SignatureVersion.
        fn signed(&self, mut envelope: SnsEnvelope) -> SnsEnvelope {
            let digest = match envelope.signature_version.as_str() {
                "1" => "-sha1",
                _ => "-sha256",
            };
            let text = envelope.string_to_sign().expect("string to sign");
            envelope.signature = self.sign(digest, &text);
            envelope
        }
    }

    #[test]
    fn verify_accepts_a_version_2_signature_and_nothing_altered() {
        let signer = Signer::new();
        let envelope = signer.signed(notification(Some("Alarm")));
        assert_eq!(verify(&envelope, &signer.cert_pem), Ok(()));

        let mut altered = envelope.clone();
        altered.message.replace_range(0..1, "J");
        assert_eq!(
            verify(&altered, &signer.cert_pem),
            Err(SnsRefusal::SignatureMismatch)
        );

        let mut no_subject = envelope.clone();
        no_subject.subject = None;
        assert_eq!(
            verify(&no_subject, &signer.cert_pem),
            Err(SnsRefusal::SignatureMismatch)
        );

        let mut version_3 = envelope.clone();
        version_3.signature_version = "3".to_owned();
        assert_eq!(
            verify(&version_3, &signer.cert_pem),
            Err(SnsRefusal::UnsupportedSignatureVersion("3".to_owned()))
        );

        // Signed with SHA-256 but claiming SHA-1: the digests are really told apart.
        let mut claims_sha1 = envelope.clone();
        claims_sha1.signature_version = "1".to_owned();
        assert_eq!(
            verify(&claims_sha1, &signer.cert_pem),
            Err(SnsRefusal::SignatureMismatch)
        );

        // Another key's certificate does not vouch for this signature.
        let other = Signer::new();
        assert_eq!(
            verify(&envelope, &other.cert_pem),
            Err(SnsRefusal::SignatureMismatch)
        );
    }

    #[test]
    fn verify_accepts_a_version_1_signature() {
        let signer = Signer::new();
        let mut envelope = notification(None);
        envelope.signature_version = "1".to_owned();
        let envelope = signer.signed(envelope);
        assert_eq!(verify(&envelope, &signer.cert_pem), Ok(()));

        let mut altered = envelope.clone();
        altered.message.replace_range(0..1, "J");
        assert_eq!(
            verify(&altered, &signer.cert_pem),
            Err(SnsRefusal::SignatureMismatch)
        );
    }

    #[test]
    fn verify_covers_a_subscription_confirmations_token() {
        let signer = Signer::new();
        let envelope = signer.signed(subscription_confirmation());
        assert_eq!(verify(&envelope, &signer.cert_pem), Ok(()));

        let mut altered = envelope.clone();
        altered.token = Some("2336412f38".to_owned());
        assert_eq!(
            verify(&altered, &signer.cert_pem),
            Err(SnsRefusal::SignatureMismatch)
        );
    }

    #[test]
    fn verify_refuses_bad_signatures_and_certificates() {
        let signer = Signer::new();
        let envelope = signer.signed(notification(None));

        let mut not_base64 = envelope.clone();
        not_base64.signature = "not base64!".to_owned();
        assert!(matches!(
            verify(&not_base64, &signer.cert_pem),
            Err(SnsRefusal::SignatureNotBase64(_))
        ));

        let mut empty = envelope.clone();
        empty.signature = String::new();
        assert_eq!(
            verify(&empty, &signer.cert_pem),
            Err(SnsRefusal::SignatureMismatch)
        );

        assert!(matches!(
            verify(&envelope, b"hello"),
            Err(SnsRefusal::CertificateUnreadable(_))
        ));
        let mut wrapped = b"<Error><Message>".to_vec();
        wrapped.extend_from_slice(&signer.cert_pem);
        assert!(matches!(
            verify(&envelope, &wrapped),
            Err(SnsRefusal::CertificateUnreadable(_))
        ));
        let mut leading_space = b"\n  ".to_vec();
        leading_space.extend_from_slice(&signer.cert_pem);
        assert_eq!(verify(&envelope, &leading_space), Ok(()));

        let garbled = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            verify(&envelope, garbled),
            Err(SnsRefusal::CertificateUnreadable(_))
        ));
    }

    #[test]
    fn key_from_the_certificate_is_the_one_openssl_sees() {
        let signer = Signer::new();
        let dir = signer.dir.path();
        openssl(
            dir,
            &[
                "x509", "-in", "cert.pem", "-noout", "-pubkey", "-out", "pub.pem",
            ],
        );
        openssl(
            dir,
            &[
                "rsa",
                "-pubin",
                "-in",
                "pub.pem",
                "-RSAPublicKey_out",
                "-outform",
                "DER",
                "-out",
                "rsa.der",
            ],
        );
        let expected = std::fs::read(dir.join("rsa.der")).expect("rsa.der");
        assert_eq!(rsa_public_key_of(&signer.cert_pem), Ok(expected));
    }
}

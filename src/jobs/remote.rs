//! What an HTTP answer from a remote service (the forge, Jira) means for the step that asked:
//! done, ask again later (and when), or refused for good.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

use crate::error::Error;

/// The longest a rate limit is waited out in one go: a reset further away (a clock off by
/// hours) is asked again after this.
const MAX_WAIT: Duration = Duration::from_secs(3600);
/// A rate limit that names no time is asked again after this.
const DEFAULT_WAIT: Duration = Duration::from_secs(60);

/// The error for a non-success `status` of `what`: rate limited (HTTP 429, or 403 with the
/// limit spent, as GitHub's secondary limits answer) becomes [`Error::Throttled`] with the
/// wait the service named (`Retry-After` in seconds, or `X-RateLimit-Reset` as epoch seconds
/// when `X-RateLimit-Remaining` is 0); 5xx is [`Error::Unavailable`]; any other 4xx is
/// [`Error::Refused`], except 401 (the credentials: [`Error::Config`]) and 408 (a timeout:
/// unavailable). `body` is quoted on one line, shortened.
pub fn error_for(what: &str, status: u16, headers: &HeaderMap, body: &str) -> Error {
    // One line, whatever the body was (an HTML error page, say).
    let text: String = body
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .take(300)
        .collect();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let spent = header("x-ratelimit-remaining") == Some("0");
    let limited = status == 429
        || (status == 403
            && (spent || header("retry-after").is_some() || text.contains("rate limit")));
    if limited {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let wait = header("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs)
            .or_else(|| {
                header("x-ratelimit-reset")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .filter(|_| spent)
                    .map(|reset| Duration::from_secs(reset.saturating_sub(now) + 1))
            })
            .unwrap_or(DEFAULT_WAIT)
            .clamp(Duration::from_secs(1), MAX_WAIT);
        crate::telemetry::forge_rate_limited();
        return Error::Throttled {
            why: format!("{what}: HTTP {status}: {text}"),
            wait,
        };
    }
    if status == 401 {
        // The credentials themselves were refused: nothing is wrong with this request, and
        // nothing will pass until someone fixes the configuration.
        return Error::Config(format!(
            "{what}: the credentials were refused (HTTP 401): {text}"
        ));
    }
    if status >= 500 || status == 408 {
        Error::Unavailable(format!("{what}: HTTP {status}: {text}"))
    } else {
        Error::Refused(format!("{what}: HTTP {status}: {text}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn retry_after_is_the_wait() {
        let e = error_for("x", 429, &headers(&[("retry-after", "7")]), "");
        assert!(matches!(e, Error::Throttled { wait, .. } if wait == Duration::from_secs(7)));
    }

    #[test]
    fn spent_limit_waits_for_its_reset() {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let reset = (now + 120).to_string();
        let e = error_for(
            "x",
            403,
            &headers(&[
                ("x-ratelimit-remaining", "0"),
                ("x-ratelimit-reset", &reset),
            ]),
            "API rate limit exceeded",
        );
        let Error::Throttled { wait, .. } = e else {
            panic!("{e}")
        };
        assert!((119..=122).contains(&wait.as_secs()), "{wait:?}");
    }

    #[test]
    fn other_answers() {
        assert!(matches!(
            error_for("x", 403, &HeaderMap::new(), "no"),
            Error::Refused(_)
        ));
        assert!(matches!(
            error_for("x", 404, &HeaderMap::new(), ""),
            Error::Refused(_)
        ));
        assert!(matches!(
            error_for("x", 502, &HeaderMap::new(), ""),
            Error::Unavailable(_)
        ));
        assert!(matches!(
            error_for("x", 429, &HeaderMap::new(), ""),
            Error::Throttled { wait, .. } if wait == DEFAULT_WAIT
        ));
    }
}

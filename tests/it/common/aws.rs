//! AWS-compatible API servers on loopback, for the SQS transport and the Fargate spawner:
//! moto (`moto_server`) and ministack, installed from PyPI into a virtualenv by `.ci/run`
//! (`CONDUCTOR_AWS_VENV`, default `~/.cache/conductor-aws`), or by the first test that needs
//! them. The production SDK clients talk
//! to them with only the endpoint changed, and test credentials so nothing leaves loopback.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Moto,
    Ministack,
}

pub struct Emulator {
    pub port: u16,
    child: Child,
    _log_dir: tempfile::TempDir,
}

/// The environment every AWS client of a test (and every conductor it starts) gets.
pub const AWS_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_EC2_METADATA_DISABLED", "true"),
];

/// The pinned servers (the same pins as `.ci/run`).
const PINS: &str = "moto[server]==5.2.5 ministack==1.5.33";

/// The virtualenv holding the servers, installed from PyPI on first use when `.ci/run` has
/// not already done it (about 40 s), so a plain `cargo test` works on a fresh machine.
fn venv() -> &'static PathBuf {
    static VENV: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    VENV.get_or_init(|| {
        let venv = std::env::var("CONDUCTOR_AWS_VENV")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                    .join(".cache/conductor-aws")
            });
        let pins = venv.join(".pins");
        if std::fs::read_to_string(&pins)
            .ok()
            .as_deref()
            .map(str::trim)
            != Some(PINS)
        {
            let _ = std::fs::remove_dir_all(&venv);
            let ok = Command::new("python3")
                .args(["-m", "venv"])
                .arg(&venv)
                .status()
                .is_ok_and(|s| s.success())
                && Command::new(venv.join("bin/pip"))
                    .args(["install", "-q"])
                    .args(PINS.split(' '))
                    .status()
                    .is_ok_and(|s| s.success());
            assert!(ok, "installing {PINS} into {} failed", venv.display());
            std::fs::write(&pins, PINS).unwrap();
        }
        venv
    })
}

fn venv_bin(name: &str) -> PathBuf {
    venv().join("bin").join(name)
}

impl Emulator {
    pub async fn start(kind: Kind) -> Emulator {
        // The tests' own HTTP calls (moto's state manager, EC2's query API) use reqwest.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let port = super::jobs::free_port();
        let log_dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(log_dir.path().join("server.log")).unwrap();
        let mut cmd = match kind {
            Kind::Moto => {
                let mut c = Command::new(venv_bin("moto_server"));
                c.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
                c
            }
            Kind::Ministack => {
                let mut c = Command::new(venv_bin("ministack"));
                c.env("BIND_HOST", "127.0.0.1")
                    .env("GATEWAY_PORT", port.to_string());
                c
            }
        };
        let child = cmd
            .current_dir(log_dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting the AWS-compatible server");
        let emulator = Emulator {
            port,
            child,
            _log_dir: log_dir,
        };
        for _ in 0..300 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if kind == Kind::Moto {
            // Tasks stay RUNNING until StopTask, as on ECS (moto otherwise moves a task one
            // state along at every DescribeTasks).
            let body = r#"{"model_name": "ecs::task", "transition": {"progression": "manual", "times": 1000000}}"#;
            reqwest::Client::new()
                .post(format!(
                    "{}/moto-api/state-manager/set-transition",
                    emulator.url()
                ))
                .body(body)
                .send()
                .await
                .expect("moto's state manager")
                .error_for_status()
                .unwrap();
        }
        emulator
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn sdk(&self) -> aws_config::SdkConfig {
        for (k, v) in AWS_ENV {
            // SAFETY: set before any client reads them; every test sets the same values.
            unsafe { std::env::set_var(k, v) };
        }
        conductor::aws::sdk_config(&conductor::config::AwsConfig {
            region: Some("us-east-1".into()),
            endpoint_url: Some(self.url()),
        })
        .await
    }

    /// The environment for a conductor process that uses this server.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = AWS_ENV
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.push(("CONDUCTOR_AWS__ENDPOINT_URL".into(), self.url()));
        env
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fresh queue (name unique to the test); its URL.
pub async fn create_queue(sqs: &aws_sdk_sqs::Client, name: &str, visibility_secs: u32) -> String {
    sqs.create_queue()
        .queue_name(name)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::VisibilityTimeout,
            visibility_secs.to_string(),
        )
        .send()
        .await
        .expect("CreateQueue")
        .queue_url
        .unwrap()
}

/// Messages in the queue, visible and in flight.
pub async fn queue_depth(sqs: &aws_sdk_sqs::Client, url: &str) -> (i64, i64) {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("GetQueueAttributes");
    let attrs = out.attributes.unwrap_or_default();
    let get = |a: &A| attrs.get(a).and_then(|v| v.parse().ok()).unwrap_or(-1);
    (
        get(&A::ApproximateNumberOfMessages),
        get(&A::ApproximateNumberOfMessagesNotVisible),
    )
}

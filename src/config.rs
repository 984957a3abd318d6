//! `conductor.toml`: how jobs run — routing, timings, the worker, the forge. Loaded with
//! figment from the file (if present), then `CONDUCTOR_<SECTION>__<KEY>` environment variables.
//! `conductor.example.toml` at the repository root documents every key.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use figment::{
    providers::{Env, Format, Serialized, Toml},
    Figment,
};
use serde::{Deserialize, Serialize};

use crate::error::Error;

pub mod check;
pub mod routing;

pub use routing::{AccountCaps, Caps, Environment, Route};

// Durations in the file are humantime strings ("90s", "45m").
use crate::duration::required as duration;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub grpc: GrpcConfig,
    /// The operator's HTTP listener: health, readiness, metrics and the web console.
    pub http: HttpConfig,
    pub jobs: JobsConfig,
    pub worker: WorkerConfig,
    pub forge: ForgeConfig,
    /// A directory holding `ticket/` and `incident/`, each with `TASK.md` and `AGENTS.md`
    /// (minijinja templates). Unset: the templates built from `templates/` in this repository.
    pub templates: Option<PathBuf>,
    /// Where jobs work, first match wins.
    pub routes: Vec<Route>,
    /// How many agents run at once (in all, per account, per repository) and how many an
    /// account starts in a day.
    pub caps: Caps,
    /// The AWS SDK's region and endpoint (both also from the standard `AWS_*` environment).
    pub aws: AwsConfig,
    /// The SQS transport: on when `queue_url` is set.
    pub sqs: SqsConfig,
    /// The Fargate spawner (`worker.spawner = "ecs"`).
    pub ecs: EcsConfig,
    /// Flags pinned by this replica's configuration; they win over the database's values
    /// (see [`crate::scheduling::flags`] for the precedence).
    pub flags: crate::scheduling::flags::FlagOverrides,
    /// Named scheduling policies the `policy` and `candidate` flags can name, beside the
    /// built-in `default` (window 1h, grouped by account).
    pub policies: std::collections::BTreeMap<String, crate::scheduling::policy::PolicySpec>,
    /// How a candidate policy is evaluated in shadow.
    pub shadow: crate::scheduling::flags::ShadowConfig,
    /// How incident jobs wait for late alarms before an agent starts, and whether each
    /// incident gets a Jira issue.
    pub incidents: IncidentsConfig,
    /// How messages move through the pipeline's steps.
    pub pipeline: PipelineConfig,
    /// Where status goes back to the ticket: comments and transitions on Jira, or the database.
    pub tracker: TrackerConfig,
    /// Intake over HTTP beside SQS: `POST /webhooks/jira` and `POST /webhooks/sns`.
    pub webhooks: WebhooksConfig,
    /// The file this configuration was read from (`None`: defaults and the environment only).
    /// Relative paths in it were resolved against that file's directory.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// `[pipeline]`: how messages move through the message workflow.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// At most how many queued messages one `decide` task decides in its transaction (its
    /// own and others waiting in the queue, oldest first). 1 decides one at a time.
    pub decide_batch: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        // Measured in docs/benchmarks.md ("Decided in batches"): past a few dozen the rate
        // hardly grows, while a batch holds its transaction (on SQLite, the write lock) longer.
        PipelineConfig { decide_batch: 64 }
    }
}

/// `[incidents]`: settling before an incident's agent starts (docs/design.md section 3).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IncidentsConfig {
    /// How long a new incident's job waits before it claims a repository and starts an
    /// agent. Alarms that join meanwhile are in its task files; an incident merged into
    /// another meanwhile starts no agent at all. `0s` turns it off.
    #[serde(with = "duration")]
    pub settle: Duration,
    /// A Jira project in which each incident gets an issue of its own (opened when its agent
    /// starts, commented on as its job goes), with `tracker.kind = "jira"`. Unset: incidents
    /// have no issue, and nothing is posted for them.
    pub jira_project: Option<String>,
    /// The issue type of an incident's issue.
    pub jira_issue_type: String,
}

impl Default for IncidentsConfig {
    fn default() -> Self {
        // CloudWatch evaluates a standard alarm once a minute, and the alarms of one failure
        // (a database, a deploy) cross their thresholds within one or two evaluation periods
        // of each other; delivery through EventBridge or SNS adds seconds. Two minutes lets
        // those late alarms in (or merge their incidents) before a paid agent starts, which
        // costs little next to an agent's run of tens of minutes.
        IncidentsConfig {
            settle: Duration::from_secs(120),
            jira_project: None,
            jira_issue_type: "Task".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AwsConfig {
    /// Default: `AWS_REGION` / `AWS_DEFAULT_REGION` / the profile, as the SDK resolves it.
    pub region: Option<String>,
    /// An endpoint override for every AWS API (an AWS-compatible server, a VPC endpoint).
    /// Default: `AWS_ENDPOINT_URL`, else AWS itself.
    pub endpoint_url: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SqsConfig {
    /// The queue `conductor run` polls. Unset: no SQS (the inbox only).
    pub queue_url: Option<String>,
    /// Long polls in flight at once.
    pub receivers: usize,
    /// How long one ReceiveMessage waits for messages (at most 20 s).
    #[serde(with = "duration")]
    pub wait: Duration,
    /// Messages per ReceiveMessage (1 to 10).
    pub batch: i32,
    /// The visibility timeout asked for on receive; renewed while a batch is being stored.
    #[serde(with = "duration")]
    pub visibility: Duration,
}

impl Default for SqsConfig {
    fn default() -> Self {
        SqsConfig {
            queue_url: None,
            receivers: 2,
            wait: Duration::from_secs(20),
            batch: 10,
            visibility: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EcsConfig {
    pub cluster: String,
    /// Family, `family:revision` or ARN of the worker's task definition.
    pub task_definition: String,
    /// The worker's container in that task definition (its environment is overridden).
    pub container: String,
    pub subnets: Vec<String>,
    pub security_groups: Vec<String>,
    /// Whether the task gets a public IP (needed in a public subnet without a NAT gateway).
    pub assign_public_ip: bool,
    /// RunTask attempts (failures and throttling) before the spawn step itself retries.
    pub run_task_attempts: u32,
}

impl Default for EcsConfig {
    fn default() -> Self {
        EcsConfig {
            cluster: "conductor".into(),
            task_definition: "conductor-worker".into(),
            container: "worker".into(),
            subnets: Vec::new(),
            security_groups: Vec::new(),
            assign_public_ip: false,
            run_task_attempts: 4,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SpawnerKind {
    /// A local process per worker (the embedded default).
    #[default]
    Local,
    /// An ECS Fargate task per worker.
    Ecs,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    /// Where the worker protocol listens.
    pub listen: String,
    /// The address workers are given (default: `http://` + `listen`). With several replicas,
    /// either one address that reaches any of them (a load balancer, a service name) or a
    /// comma-separated list of every replica's address: a worker uses the first and moves to
    /// the next whenever one does not answer. Any replica serves any worker.
    pub advertise: Option<String>,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            listen: "127.0.0.1:7471".into(),
            advertise: None,
        }
    }
}

impl GrpcConfig {
    pub fn advertised(&self) -> String {
        self.advertise
            .clone()
            .unwrap_or_else(|| format!("http://{}", self.listen))
    }
}

/// `[http]`: one listener for load balancers, Prometheus and people (docs/design.md section 10).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Where `/healthz`, `/readyz`, `/metrics` and the console listen (`conductor run`), e.g.
    /// `0.0.0.0:7470`. Empty (the default) turns the listener off; port 0 picks a free port
    /// (the start-up line names it).
    pub listen: String,
    /// The environment variable holding the operator token. Without a token the console is
    /// read-only; with it, a form that carries it may retry a job, close or open the gate,
    /// and pause or unpause intake.
    pub operator_token_env: String,
    /// The console's address as people reach it (`https://conductor.example.com`): comments
    /// on tickets and pull request footers link the job's page under it. Unset: they name the
    /// job without a link.
    pub public_url: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: String::new(),
            operator_token_env: "CONDUCTOR_OPERATOR_TOKEN".into(),
            public_url: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// Attempts (workers started) before a job is quarantined.
    pub max_attempts: u32,
    /// A started worker must handshake within this, or it is stopped and retried.
    #[serde(with = "duration")]
    pub handshake_timeout: Duration,
    /// A worker whose last heartbeat is older than this is stopped and retried.
    #[serde(with = "duration")]
    pub lease: Duration,
    /// How often workers heartbeat (well under `lease`).
    #[serde(with = "duration")]
    pub heartbeat_interval: Duration,
    /// Delay before a new attempt; doubles with each attempt.
    #[serde(with = "duration")]
    pub retry_backoff: Duration,
    /// How often a job waiting for its repository checks the claim again.
    #[serde(with = "duration")]
    pub claim_poll: Duration,
    /// Longest wait of the await step between checks (a report wakes it at once).
    #[serde(with = "duration")]
    pub await_poll: Duration,
    /// Largest total size of one attempt's task files.
    pub max_task_bytes: u64,
    /// A step still queued this long after it was due, or running this long, is queued again
    /// (its queue task was lost, say to a database restart). Every step is safe to run twice;
    /// keep this well above the longest a step runs (a storage wait holds one for 2.5 min).
    #[serde(with = "duration")]
    pub stalled_after: Duration,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            max_attempts: 3,
            handshake_timeout: Duration::from_secs(120),
            lease: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(10),
            retry_backoff: Duration::from_secs(10),
            claim_poll: Duration::from_secs(5),
            await_poll: Duration::from_secs(30),
            max_task_bytes: 1 << 20,
            stalled_after: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Where workers run: `local` processes or `ecs` Fargate tasks.
    pub spawner: SpawnerKind,
    /// The worker binary the local spawner starts (default: `conductor-worker` next to the
    /// running `conductor`).
    pub command: Option<PathBuf>,
    /// Work directories of local workers: `<work_root>/<worker id>/`.
    pub work_root: PathBuf,
    /// The agent, run by `sh -c` in the cloned repository; `$TASK_FILE` is TASK.md's path.
    pub agent_command: String,
    #[serde(with = "duration")]
    pub agent_timeout: Duration,
    /// A worker that cannot reach the conductor for this long gives up and exits.
    #[serde(with = "duration")]
    pub unreachable_deadline: Duration,
    /// Environment variables passed through to local workers (secrets such as GIT_TOKEN).
    pub pass_env: Vec<String>,
    /// The container engine (`docker`, `podman`) that runs a route's `environment.image`.
    pub container_engine: Option<String>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            spawner: SpawnerKind::Local,
            command: None,
            work_root: PathBuf::from("work"),
            agent_command: r#"codex exec --full-auto "$(cat "$TASK_FILE")""#.into(),
            agent_timeout: Duration::from_secs(45 * 60),
            unreachable_deadline: Duration::from_secs(10 * 60),
            pass_env: vec!["GIT_TOKEN".into()],
            container_engine: None,
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ForgeKind {
    /// Records pull requests and issues in the database (the embedded default).
    #[default]
    Local,
    /// GitHub's REST API (or GitHub Enterprise at `base_url`).
    Github,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ForgeConfig {
    pub kind: ForgeKind,
    pub base_url: String,
    /// The environment variable holding a personal access token (never logged), used when
    /// `app_id` is unset.
    pub token_env: String,
    /// A GitHub App's id: Conductor then acts as the App's installation on each repository,
    /// and each worker pushes with a token minted for its attempt, scoped to its one
    /// repository with contents and pull-request write, instead of a long-lived token.
    pub app_id: Option<u64>,
    /// The environment variable holding the App's private key (PEM).
    pub app_key_env: String,
    /// The label put on pull requests and failure issues (failure issues are found again by it).
    pub label: String,
    /// While the forge is unreachable (connection errors, 5xx, rate limits), the pull request
    /// is tried again this often, without end: the agent's work is never dropped for an outage.
    /// A `Retry-After` or rate-limit reset the forge names is waited for instead.
    #[serde(with = "duration")]
    pub retry_interval: Duration,
}

impl Default for ForgeConfig {
    fn default() -> Self {
        ForgeConfig {
            kind: ForgeKind::Local,
            base_url: "https://api.github.com".into(),
            token_env: "GITHUB_TOKEN".into(),
            app_id: None,
            app_key_env: "GITHUB_APP_KEY".into(),
            label: "conductor".into(),
            retry_interval: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TrackerKind {
    /// Notices are recorded in the database only (the embedded default; `conductor demo`
    /// prints them).
    #[default]
    Local,
    /// Jira Cloud (REST v3) or Data Center (REST v2), per `tracker.api`.
    Jira,
    /// Nothing is told.
    None,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum JiraApi {
    /// Jira Cloud: REST v3, comments in Atlassian Document Format, Basic auth with the
    /// account's email (`user_env`) and an API token.
    #[default]
    Cloud,
    /// Jira Data Center / Server: REST v2, plain-text comments, a personal access token as
    /// Bearer (or Basic when `user_env` names a set variable).
    Datacenter,
}

/// Transitions to make on a project's tickets, by transition name as Jira's workflow shows it
/// (`"Start Progress"`, `"In Review"`); each is optional.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Transitions {
    /// When the agent starts.
    pub started: Option<String>,
    /// When the job ends with a pull request.
    pub succeeded: Option<String>,
    /// When the job ends any other way (a failure issue, given up, quarantined).
    pub failed: Option<String>,
}

/// `[tracker]`: status back on the ticket (docs/design.md section 11).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TrackerConfig {
    pub kind: TrackerKind,
    /// `https://your-site.atlassian.net`, or a Data Center's base URL.
    pub base_url: String,
    pub api: JiraApi,
    /// The environment variable holding the account's email (Cloud) or user name.
    pub user_env: String,
    /// The environment variable holding the API token (Cloud) or personal access token.
    pub token_env: String,
    /// While Jira is unreachable, a notice is tried again this often, without end; the job
    /// never waits for it.
    #[serde(with = "duration")]
    pub retry_interval: Duration,
    /// Per project key (`PAY`), the transitions to make.
    pub transitions: std::collections::BTreeMap<String, Transitions>,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            kind: TrackerKind::Local,
            base_url: String::new(),
            api: JiraApi::Cloud,
            user_env: "JIRA_USER".into(),
            token_env: "JIRA_TOKEN".into(),
            retry_interval: Duration::from_secs(30),
            transitions: Default::default(),
        }
    }
}

/// `[webhooks]`: intake over the HTTP listener (`http.listen`), into the same inbox as SQS.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// The environment variable holding Jira's webhook secret. `POST /webhooks/jira` is on
    /// when it is set; every delivery must carry its HMAC-SHA256 signature.
    pub jira_secret_env: String,
    /// The SNS topics `POST /webhooks/sns` accepts (`arn:aws:sns:REGION:ACCOUNT:NAME`). Empty:
    /// the endpoint is off.
    pub sns_topics: Vec<String>,
    /// Certificate and subscription URLs trusted beside the SNS host of the topic's region
    /// (`https://sns.REGION.amazonaws.com/`): prefixes, for a private SNS-compatible service.
    pub sns_extra_url_prefixes: Vec<String>,
    /// The largest body accepted, in bytes; larger ones get 413.
    pub max_body_bytes: usize,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            jira_secret_env: "CONDUCTOR_JIRA_WEBHOOK_SECRET".into(),
            sns_topics: Vec::new(),
            sns_extra_url_prefixes: Vec::new(),
            max_body_bytes: 1024 * 1024,
        }
    }
}

impl Config {
    /// The configuration's part in the shared flags: `[flags]`, `[policies]`, `[shadow]`.
    pub fn flag_config(&self) -> crate::scheduling::flags::FlagConfig<'_> {
        crate::scheduling::flags::FlagConfig {
            flags: &self.flags,
            policies: &self.policies,
            shadow: &self.shadow,
        }
    }

    /// Loads `path` (when it exists, or when `required`), then the environment. Relative paths
    /// (`worker.work_root`, `worker.command`, `templates`, a route's repository on disk)
    /// resolve against the file's directory, or the working directory when no file is read,
    /// so a worker or agent is only ever handed absolute paths.
    pub fn load(path: &Path, required: bool) -> Result<Config, Error> {
        let (figment, source) = Config::figment(path, required)?;
        let mut config: Config = figment
            .extract()
            .map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        let base = match &source {
            Some(file) => file.parent().map(Path::to_path_buf).unwrap_or_default(),
            None => std::env::current_dir()
                .map_err(|e| Error::Config(format!("cannot read the working directory: {e}")))?,
        };
        config.resolve_paths(&base);
        config.source = source;
        config.validate()?;
        Ok(config)
    }

    /// The layered sources (defaults, the file if present, the environment) and the file's
    /// absolute path when one is read.
    fn figment(path: &Path, required: bool) -> Result<(Figment, Option<PathBuf>), Error> {
        if required && !path.exists() {
            return Err(Error::Config(format!(
                "config file {} does not exist",
                path.display()
            )));
        }
        let source = if path.exists() {
            Some(
                std::path::absolute(path)
                    .map_err(|e| Error::Config(format!("config file {}: {e}", path.display())))?,
            )
        } else {
            None
        };
        let figment = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::file(path))
            // Only SECTION__KEY variables: CONDUCTOR_DATABASE_URL and friends are CLI flags.
            .merge(
                Env::prefixed("CONDUCTOR_")
                    .filter(|k| {
                        let k = k.as_str();
                        // `routes` too: a container is configured by its environment alone
                        // (CONDUCTOR_ROUTES='[{default=true, repo="https://..."}]').
                        k.contains("__") || k.contains('.') || k == "templates" || k == "routes"
                    })
                    .split("__"),
            );
        Ok((figment, source))
    }

    /// Makes every relative path absolute against `base` (see [`Config::load`]).
    pub fn resolve_paths(&mut self, base: &Path) {
        let abs = |p: &Path| -> PathBuf {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        self.worker.work_root = abs(&self.worker.work_root);
        if let Some(t) = &self.templates {
            self.templates = Some(abs(t));
        }
        // A bare program name is looked up on PATH, as a shell would.
        if let Some(c) = &self.worker.command {
            if c.components().count() > 1 {
                self.worker.command = Some(abs(c));
            }
        }
        for route in &mut self.routes {
            if is_local_path(&route.repo) && Path::new(&route.repo).is_relative() {
                route.repo = abs(Path::new(&route.repo)).display().to_string();
            }
        }
    }

    /// Where each effective value came from, as `(dotted key, value, origin)`: the defaults,
    /// the file, or the environment variable that set it. Values that could carry a secret
    /// (a URL with a password) are redacted.
    pub fn explain(path: &Path, required: bool) -> Result<Vec<(String, String, String)>, Error> {
        let (figment, _) = Config::figment(path, required)?;
        let config = Config::load(path, required)?;
        let value = toml::Value::try_from(&config)
            .map_err(|e| Error::Config(format!("cannot show the configuration: {e}")))?;
        let mut out = Vec::new();
        flatten("", &value, &mut |key, text| {
            // Arrays of tables (routes) are reported by their array's key.
            let lookup = key.split('[').next().unwrap_or(key);
            let origin = figment
                .find_metadata(lookup)
                .map(|m| {
                    if m.name.contains("environment") {
                        let var = format!("CONDUCTOR_{}", lookup.replace('.', "__").to_uppercase());
                        format!("environment {var}")
                    } else if m.name.contains("TOML") {
                        m.source
                            .as_ref()
                            .map(|s| format!("file {s}"))
                            .unwrap_or_else(|| "file".into())
                    } else {
                        "default".into()
                    }
                })
                .unwrap_or_else(|| "default".into());
            out.push((key.to_owned(), crate::db::redact_passwords(&text), origin));
        });
        Ok(out)
    }

    /// The kinds of job that can start and have no route, each with the `[[routes]]` entry it
    /// lacks. `incidents_spawn` says whether alarms may start agents (the `incidents` flag is
    /// `on`). `conductor run` refuses to start while this is not empty: a job with no route
    /// fails, and its ticket is used up.
    pub fn unrouted_kinds(&self, incidents_spawn: bool) -> Vec<String> {
        let default = self.routes.iter().any(|r| r.default);
        let mut missing = Vec::new();
        if !default && !self.routes.iter().any(Route::for_tickets) {
            missing.push(
                "tickets: no [[routes]] entry with project = \"KEY\" or default = true".to_owned(),
            );
        }
        if incidents_spawn && !default && !self.routes.iter().any(Route::for_alarms) {
            missing.push(
                "incidents: no [[routes]] entry with account = \"123456789012\" or default = true"
                    .to_owned(),
            );
        }
        missing
    }

    pub fn validate(&self) -> Result<(), Error> {
        for (i, r) in self.routes.iter().enumerate() {
            r.validate(i)?;
        }
        self.caps.validate()?;
        if self
            .routes
            .iter()
            .any(|r| r.environment.as_ref().is_some_and(|e| e.image.is_some()))
            && self.worker.spawner == SpawnerKind::Local
            && self.worker.container_engine.is_none()
        {
            return Err(Error::Config(
                "a route's environment.image needs worker.container_engine (docker or podman)"
                    .into(),
            ));
        }
        if self.tracker.kind == TrackerKind::Jira && self.tracker.base_url.is_empty() {
            return Err(Error::Config(
                "tracker.kind = \"jira\" needs tracker.base_url (https://your-site.atlassian.net)"
                    .into(),
            ));
        }
        if self.forge.app_id.is_some() && self.forge.kind != ForgeKind::Github {
            return Err(Error::Config(
                "forge.app_id is set but forge.kind is not \"github\"".into(),
            ));
        }
        for topic in &self.webhooks.sns_topics {
            if topic.split(':').count() != 6 || !topic.starts_with("arn:") {
                return Err(Error::Config(format!(
                    "webhooks.sns_topics: {topic:?} is not a topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME)"
                )));
            }
        }
        if !(1..=10).contains(&self.sqs.batch) {
            return Err(Error::Config("sqs.batch must be between 1 and 10".into()));
        }
        if self.sqs.wait > Duration::from_secs(20) {
            return Err(Error::Config("sqs.wait must be at most 20s".into()));
        }
        if self.shadow.timeout < Duration::from_millis(1) {
            return Err(Error::Config(
                "shadow.timeout must be at least 1ms (it bounds how long a candidate may delay a decision)"
                    .into(),
            ));
        }
        if self.sqs.receivers == 0 {
            return Err(Error::Config("sqs.receivers must be at least 1".into()));
        }
        if self.pipeline.decide_batch == 0 {
            return Err(Error::Config(
                "pipeline.decide_batch must be at least 1 (1 decides one message at a time)".into(),
            ));
        }
        if self.sqs.visibility < Duration::from_secs(2) {
            return Err(Error::Config("sqs.visibility must be at least 2s".into()));
        }
        if self.worker.spawner == SpawnerKind::Ecs {
            if self.ecs.subnets.is_empty() {
                return Err(Error::Config(
                    "worker.spawner = \"ecs\" needs ecs.subnets (Fargate tasks run in awsvpc mode)"
                        .into(),
                ));
            }
            if self.grpc.advertise.is_none() {
                return Err(Error::Config(
                    "worker.spawner = \"ecs\" needs grpc.advertise: the address Fargate tasks dial"
                        .into(),
                ));
            }
        }
        for (name, spec) in &self.policies {
            if name.contains(['=', ',']) || name == "none" || name.is_empty() {
                return Err(Error::Config(format!(
                    "policies.{name}: a policy name cannot be empty, \"none\", or contain '=' or ','"
                )));
            }
            spec.validate()
                .map_err(|e| Error::Config(format!("policies.{name}: {e}")))?;
        }
        // `[flags]` against the policies is the flags' own check (`flags::Overrides`), made
        // wherever flags are resolved (`run`, `status`, `flags`) and by `config check`.
        if self.jobs.max_attempts == 0 {
            return Err(Error::Config("jobs.max_attempts must be at least 1".into()));
        }
        if self.jobs.heartbeat_interval >= self.jobs.lease {
            return Err(Error::Config(
                "jobs.heartbeat_interval must be shorter than jobs.lease".into(),
            ));
        }
        Ok(())
    }
}

/// Whether a route's `repo` is a path on disk rather than a URL (`https://`, `ssh://`,
/// `file://`) or scp-like `git@host:owner/repo`.
fn is_local_path(repo: &str) -> bool {
    if repo.contains("://") {
        return false;
    }
    // scp-like: a ':' before the first '/'.
    match (repo.find(':'), repo.find('/')) {
        (Some(c), Some(s)) => c > s,
        (Some(_), None) => false,
        _ => true,
    }
}

/// Calls `f(key, value)` for every leaf of a TOML value, keys dotted, array items indexed.
fn flatten(prefix: &str, value: &toml::Value, f: &mut dyn FnMut(&str, String)) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, f);
            }
        }
        toml::Value::Array(items) if items.iter().any(|i| i.is_table()) => {
            for (i, item) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), item, f);
            }
        }
        other => f(prefix, other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_names_bad_keys() {
        let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("conductor.example.toml");
        let c = Config::load(&example, true).unwrap();
        assert!(!c.routes.is_empty());
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "[jobs]\nlease = \"soon\"\n").unwrap();
        let e = Config::load(&bad, true).unwrap_err().to_string();
        assert!(e.contains("soon"), "{e}");
        std::fs::write(&bad, "[[routes]]\nrepo = \"x\"\n").unwrap();
        let e = Config::load(&bad, true).unwrap_err().to_string();
        assert!(e.contains("routes[0]"), "{e}");
        std::fs::write(&bad, "[shadow]\ntimeout = \"0s\"\n").unwrap();
        let e = Config::load(&bad, true).unwrap_err().to_string();
        assert!(e.contains("shadow.timeout"), "{e}");
        assert_eq!(c.shadow.timeout, Duration::from_millis(250));
    }

    /// The multi-account guide's configuration is one `conductor run` accepts, with the
    /// routes and caps it describes.
    #[test]
    fn the_multi_account_guide_config_loads() {
        let guide = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/multi-account.md"),
        )
        .unwrap();
        let start = guide.find("```toml\n").expect("a toml block") + "```toml\n".len();
        let end = start + guide[start..].find("```").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("conductor.toml");
        std::fs::write(&file, &guide[start..end]).unwrap();
        let c = Config::load(&file, true).unwrap();
        assert!(c.routes.len() >= 5);
        assert!(c.routes.iter().any(|r| r.alarm_regex.is_some()));
        assert!(c.routes.iter().any(|r| r.environment.is_some()));
        assert!(c.caps.per_account.is_some() && !c.caps.accounts.is_empty());
        assert!(c.unrouted_kinds(true).is_empty());
    }

    #[test]
    fn route_matchers_are_checked_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.toml");
        for (text, want) in [
            ("[[routes]]\nproject = \"P\"\naccount = \"1\"\nrepo = \"x\"\n", "mixes ticket matchers"),
            ("[[routes]]\ndefault = true\nalarm = \"a*\"\nrepo = \"x\"\n", "takes no matchers"),
            ("[[routes]]\naccount = \"1\"\nalarm_regex = \"(\"\nrepo = \"x\"\n", "alarm_regex"),
            ("[[routes]]\nname = \"p\"\naccount = \"1\"\nrepo = \"x\"\n[routes.environment]\nimage = \"i\"\n", "container_engine"),
            ("[caps]\nper_repo = 0\n", "caps.per_repo"),
        ] {
            std::fs::write(&bad, text).unwrap();
            let e = Config::load(&bad, true).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn relative_paths_resolve_against_the_config_files_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("conductor.toml");
        std::fs::write(
            &file,
            "templates = \"tpl\"\n[worker]\nwork_root = \"work\"\ncommand = \"bin/conductor-worker\"\n\
             [[routes]]\ndefault = true\nrepo = \"remotes/app.git\"\n\
             [[routes]]\nproject = \"X\"\nrepo = \"git@github.com:acme/x.git\"\n",
        )
        .unwrap();
        let c = Config::load(&file, true).unwrap();
        assert_eq!(c.worker.work_root, dir.path().join("work"));
        assert_eq!(c.templates, Some(dir.path().join("tpl")));
        assert_eq!(
            c.worker.command,
            Some(dir.path().join("bin/conductor-worker"))
        );
        assert_eq!(
            c.routes[0].repo,
            dir.path().join("remotes/app.git").display().to_string()
        );
        assert_eq!(c.routes[1].repo, "git@github.com:acme/x.git");
        assert_eq!(c.source.as_deref(), Some(file.as_path()));
        // No file: the working directory is the base, and nothing is left relative.
        let c = Config::load(&dir.path().join("absent.toml"), false).unwrap();
        assert!(c.worker.work_root.is_absolute());
        assert_eq!(c.source, None);
        assert_eq!(c.unrouted_kinds(true).len(), 2);
        assert_eq!(c.unrouted_kinds(false).len(), 1);
    }
}

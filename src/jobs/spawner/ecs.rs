//! Workers as ECS Fargate tasks (docs/design.md section 4, `spawn`).
//!
//! `RunTask` with launch type FARGATE in awsvpc mode (`ecs.subnets`, `ecs.security_groups`,
//! a public IP only if asked), the worker's container given the attempt's id, token and the
//! conductor's address as environment overrides, tagged with the job and attempt, and
//! `startedBy` = the worker id. A route's `environment.task_definition` (and `container`)
//! replaces `ecs.task_definition` for its jobs: each project's own development image. A spawn re-run after a crash must not start a second task:
//! `clientToken` = the worker id makes ECS answer a repeated RunTask with the first task, and
//! before running anything the spawner asks `ListTasks` for a task already started by this
//! worker id (the AWS-compatible test servers do not honour client tokens; real ECS does, and
//! the look-up also covers a token that has expired). RunTask `failures` and throttling are
//! retried with backoff, `ecs.run_task_attempts` times, before the step's own retry.
//! `DescribeTasks` follows a task: a STOPPED task, with its exit code and stopped reason, ends
//! the attempt. `StopTask` stops a worker that missed its handshake or lease, or whose job was
//! quarantined.

use std::time::Duration;

use aws_sdk_ecs::{
    types::{
        AssignPublicIp, AwsVpcConfiguration, ContainerOverride, DesiredStatus, KeyValuePair,
        LaunchType, NetworkConfiguration, Tag, TaskOverride,
    },
    Client,
};
use futures::{future::BoxFuture, FutureExt};

use super::{Spawner, WorkerSpec, WorkerState};
use crate::{
    aws,
    config::{EcsConfig, WorkerConfig},
    error::Error,
};

pub struct EcsSpawner {
    client: Client,
    config: EcsConfig,
    worker: WorkerConfig,
}

impl EcsSpawner {
    pub fn new(sdk: &aws_config::SdkConfig, config: &EcsConfig, worker: &WorkerConfig) -> Self {
        EcsSpawner {
            client: Client::new(sdk),
            config: config.clone(),
            worker: worker.clone(),
        }
    }

    /// The environment the worker's container gets on top of its task definition's.
    fn environment(&self, spec: &WorkerSpec) -> Vec<KeyValuePair> {
        [
            ("WORKER_ID", spec.worker_id.clone()),
            ("WORKER_TOKEN", spec.token.clone()),
            ("CONDUCTOR_ADDR", spec.conductor_addr.clone()),
            ("AGENT_COMMAND", self.worker.agent_command.clone()),
            (
                "AGENT_TIMEOUT",
                humantime::format_duration(self.worker.agent_timeout).to_string(),
            ),
            (
                "UNREACHABLE_DEADLINE",
                humantime::format_duration(self.worker.unreachable_deadline).to_string(),
            ),
        ]
        .into_iter()
        .map(|(k, v)| KeyValuePair::builder().name(k).value(v).build())
        .collect()
    }

    /// A task this worker id already started (a spawn that ran before a crash), if any.
    async fn started_before(&self, worker_id: &str) -> Result<Option<String>, Error> {
        let out = self
            .client
            .list_tasks()
            .cluster(&self.config.cluster)
            .started_by(worker_id)
            .desired_status(DesiredStatus::Running)
            .send()
            .await
            .map_err(|e| aws::classify("ListTasks", e))?;
        Ok(out.task_arns.unwrap_or_default().into_iter().next())
    }

    async fn run_task(&self, spec: &WorkerSpec) -> Result<String, Error> {
        let network = NetworkConfiguration::builder()
            .awsvpc_configuration(
                AwsVpcConfiguration::builder()
                    .set_subnets(Some(self.config.subnets.clone()))
                    .set_security_groups(Some(self.config.security_groups.clone()))
                    .assign_public_ip(if self.config.assign_public_ip {
                        AssignPublicIp::Enabled
                    } else {
                        AssignPublicIp::Disabled
                    })
                    .build()
                    .map_err(|e| Error::Config(format!("ecs network configuration: {e}")))?,
            )
            .build();
        // A route's environment names its own task definition (its development image) and
        // container.
        let env = spec.environment.as_ref();
        let task_definition = env
            .and_then(|e| e.task_definition.as_deref())
            .unwrap_or(&self.config.task_definition);
        let container = env
            .and_then(|e| e.container.as_deref())
            .unwrap_or(&self.config.container);
        let overrides = TaskOverride::builder()
            .container_overrides(
                ContainerOverride::builder()
                    .name(container)
                    .set_environment(Some(self.environment(spec)))
                    .build(),
            )
            .build();
        let tag = |k: &str, v: String| Tag::builder().key(k).value(v).build();
        let mut delay = Duration::from_millis(500);
        let attempts = self.config.run_task_attempts.max(1);
        for n in 1..=attempts {
            let sent = self
                .client
                .run_task()
                .cluster(&self.config.cluster)
                .task_definition(task_definition)
                .launch_type(LaunchType::Fargate)
                .count(1)
                .client_token(&spec.worker_id)
                .started_by(&spec.worker_id)
                .network_configuration(network.clone())
                .overrides(overrides.clone())
                .tags(tag("conductor:job", spec.job_id.to_string()))
                .tags(tag("conductor:attempt", spec.attempt.to_string()))
                .tags(tag("conductor:worker", spec.worker_id.clone()))
                .send()
                .await
                .map_err(|e| aws::classify("RunTask", e));
            let why = match sent {
                Ok(out) => {
                    if let Some(arn) = out.tasks().first().and_then(|t| t.task_arn.clone()) {
                        return Ok(arn);
                    }
                    // Capacity and placement failures come back as `failures`, not errors.
                    let failures: Vec<String> = out
                        .failures()
                        .iter()
                        .map(|f| {
                            format!(
                                "{}{}",
                                f.reason().unwrap_or("unknown"),
                                f.detail().map(|d| format!(" ({d})")).unwrap_or_default()
                            )
                        })
                        .collect();
                    Error::Unavailable(format!("RunTask failed: {}", failures.join("; ")))
                }
                Err(e @ Error::Unavailable(_)) => e,
                Err(e) => return Err(e),
            };
            if n == attempts {
                return Err(why);
            }
            tracing::warn!(worker_id = %spec.worker_id, error = %why, retry_in = %humantime::format_duration(delay), "RunTask failed; retrying");
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
        unreachable!("the loop returns on its last attempt")
    }
}

impl Spawner for EcsSpawner {
    fn name(&self) -> &'static str {
        "ecs"
    }

    fn spawn<'a>(&'a self, spec: &'a WorkerSpec) -> BoxFuture<'a, Result<String, Error>> {
        async move {
            if let Some(arn) = self.started_before(&spec.worker_id).await? {
                tracing::info!(worker_id = %spec.worker_id, task = %arn, "task already started for this attempt");
                return Ok(arn);
            }
            let arn = self.run_task(spec).await?;
            tracing::info!(worker_id = %spec.worker_id, job_id = spec.job_id, attempt = spec.attempt, task = %arn, "worker started");
            Ok(arn)
        }
        .boxed()
    }

    fn stop<'a>(&'a self, worker_id: &'a str, handle: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        async move {
            let result = self
                .client
                .stop_task()
                .cluster(&self.config.cluster)
                .task(handle)
                .reason(format!("conductor stopped worker {worker_id}"))
                .send()
                .await;
            match result {
                Ok(_) => {
                    tracing::info!(worker_id, task = handle, "task stopped");
                    Ok(())
                }
                Err(e) => match aws::classify("StopTask", e) {
                    // A task that is gone (or never existed) needs no stopping.
                    Error::Refused(m)
                        if m.contains("InvalidParameter") || m.contains("not found") =>
                    {
                        tracing::info!(worker_id, task = handle, reason = %m, "task already gone");
                        Ok(())
                    }
                    e => Err(e),
                },
            }
        }
        .boxed()
    }

    fn state<'a>(&'a self, handle: &'a str) -> BoxFuture<'a, Result<WorkerState, Error>> {
        async move {
            let out = self
                .client
                .describe_tasks()
                .cluster(&self.config.cluster)
                .tasks(handle)
                .send()
                .await
                .map_err(|e| aws::classify("DescribeTasks", e))?;
            let Some(task) = out.tasks().first() else {
                return Ok(WorkerState::Gone(format!(
                    "task {handle} is not known to ECS"
                )));
            };
            if task.last_status() != Some("STOPPED") {
                return Ok(WorkerState::Running);
            }
            let exit = task
                .containers()
                .iter()
                .find(|c| c.name() == Some(self.config.container.as_str()))
                .or_else(|| task.containers().first())
                .and_then(|c| c.exit_code());
            Ok(WorkerState::Gone(format!(
                "task stopped: {}{}",
                task.stopped_reason().unwrap_or("no reason given"),
                exit.map(|c| format!(" (exit code {c})"))
                    .unwrap_or_default()
            )))
        }
        .boxed()
    }
}

//! The SQS transport and the Fargate spawner against AWS-compatible servers on loopback (moto
//! and ministack), driven by the production SDK clients: messages sent with the SDK flow
//! through ingest and decide; a crash before or after the inbox commit neither loses nor
//! doubles a decision; a closed gate leaves the queue alone; a spawn is a RunTask of the
//! expected shape whose environment starts a real worker; a spawn re-run after a crash starts
//! no second task; a missed handshake stops the task.

use crate::common;

use std::time::Duration;

use common::{
    aws::{create_queue, queue_depth, Emulator, Kind},
    jobs::Bench,
};
use conductor::intake::gate;

const TICKET: &str = "ticket-bare.json";

fn sample(name: &str) -> String {
    std::fs::read_to_string(common::samples().join(name)).unwrap()
}

async fn send(sqs: &aws_sdk_sqs::Client, url: &str, body: &str) -> String {
    sqs.send_message()
        .queue_url(url)
        .message_body(body)
        .send()
        .await
        .expect("SendMessage")
        .message_id
        .unwrap()
}

/// A bench whose conductor polls `url` with short waits and a 2 s visibility timeout.
async fn sqs_bench(url: &str, mode: &str) -> Bench {
    let url = url.to_owned();
    Bench::new(false, mode, move |c, _| {
        c.sqs.queue_url = Some(url);
        c.sqs.wait = Duration::from_secs(1);
        c.sqs.visibility = Duration::from_secs(2);
        c.sqs.receivers = 2;
    })
    .await
}

fn start(bench: &mut Bench, emu: &Emulator, extra: &[(&str, &str)]) {
    let env = emu.env();
    let mut all: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.extend_from_slice(extra);
    bench.start_with(&all);
}

/// Polls the queue's depth (visible, in flight) until it is `want`, at most `polls` × 100 ms;
/// the last depth seen.
async fn depth_within(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    want: (i64, i64),
    polls: u32,
) -> (i64, i64) {
    let mut depth = queue_depth(sqs, url).await;
    for _ in 0..polls {
        if depth == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        depth = queue_depth(sqs, url).await;
    }
    depth
}

async fn wait_empty(sqs: &aws_sdk_sqs::Client, url: &str) {
    for _ in 0..300 {
        if queue_depth(sqs, url).await == (0, 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the queue never emptied: {:?}", queue_depth(sqs, url).await);
}

/// Gives `url` a dead-letter queue `name` after `max_receives` receives; its URL.
async fn with_dead_letter_queue(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    name: &str,
    max_receives: u32,
) -> String {
    let dlq = create_queue(sqs, name, 2).await;
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    sqs.set_queue_attributes()
        .queue_url(url)
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy,
            format!(r#"{{"deadLetterTargetArn":"{dlq_arn}","maxReceiveCount":"{max_receives}"}}"#),
        )
        .send()
        .await
        .expect("SetQueueAttributes");
    dlq
}

/// A long poll still pending when the gate closes is not dropped: what it brings is made
/// visible again at once (well within the 30 s visibility timeout), nothing is stored and
/// nothing reaches the dead-letter queue, and the drain ends.
async fn a_poll_pending_when_the_gate_closes_releases_what_it_gets(kind: Kind) {
    let emu = Emulator::start(kind).await;
    let sqs = aws_sdk_sqs::Client::new(&emu.sdk().await);
    let url = create_queue(&sqs, "conductor-release", 30).await;
    let dlq = with_dead_letter_queue(&sqs, &url, "conductor-release-dlq", 5).await;
    let url2 = url.clone();
    let mut bench = Bench::new(false, "ok", move |c, _| {
        c.sqs.queue_url = Some(url2);
        c.sqs.wait = Duration::from_secs(5);
        c.sqs.visibility = Duration::from_secs(30);
        c.sqs.receivers = 2;
    })
    .await;
    start(&mut bench, &emu, &[]);
    bench
        .wait_for(
            "SELECT COUNT(*) FROM flags WHERE name = 'gate' AND value = 'open'",
            1,
        )
        .await;
    // Both receivers sit in 5 s polls; the gate closes; then messages arrive.
    std::fs::write(
        bench.dir.path().join(gate::GATE_FILE),
        "true
",
    )
    .unwrap();
    bench
        .wait_for(
            "SELECT COUNT(*) FROM flags WHERE name = 'gate' AND value = 'closed'",
            1,
        )
        .await;
    send(&sqs, &url, &sample(TICKET)).await;
    send(&sqs, &url, "{junk").await;
    assert_eq!(bench.exited().await, Some(0), "{}", bench.logs());
    // Visible again long before the visibility timeout would have returned them.
    let depth = depth_within(&sqs, &url, (2, 0), 100).await;
    assert_eq!(depth, (2, 0), "{}", bench.logs());
    assert_eq!(queue_depth(&sqs, &dlq).await, (0, 0));
    assert_eq!(bench.count("SELECT COUNT(*) FROM messages").await, 0);
    // The pending polls did receive them (and gave them back): receive counts above one.
    let out = sqs
        .receive_message()
        .queue_url(&url)
        .max_number_of_messages(10)
        .message_system_attribute_names(
            aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount,
        )
        .send()
        .await
        .unwrap();
    let counts: Vec<i64> = out
        .messages()
        .iter()
        .filter_map(|m| {
            m.attributes()?
                .get(&aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount)?
                .parse()
                .ok()
        })
        .collect();
    assert!(
        counts.iter().any(|c| *c >= 2),
        "{counts:?}\n{}",
        bench.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sqs_release_on_gate_moto() {
    a_poll_pending_when_the_gate_closes_releases_what_it_gets(Kind::Moto).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqs_release_on_gate_ministack() {
    a_poll_pending_when_the_gate_closes_releases_what_it_gets(Kind::Ministack).await;
}

async fn messages_flow_and_malformed_ones_are_rejected_and_deleted(kind: Kind) {
    let emu = Emulator::start(kind).await;
    let sqs = aws_sdk_sqs::Client::new(&emu.sdk().await);
    let url = create_queue(&sqs, "conductor-flow", 2).await;
    // A redrive policy as deploy/ recommends it: anything received and never deleted would
    // end up in the dead-letter queue after five receives.
    let dlq = with_dead_letter_queue(&sqs, &url, "conductor-flow-dlq", 5).await;
    let mut bench = sqs_bench(&url, "ok").await;
    send(&sqs, &url, &sample(TICKET)).await;
    send(&sqs, &url, &sample(TICKET)).await;
    send(&sqs, &url, "{not json").await;
    start(&mut bench, &emu, &[]);
    bench.wait_for("SELECT COUNT(*) FROM decisions", 3).await;
    wait_empty(&sqs, &url).await;
    let decided = |d: &'static str| {
        let bench = &bench;
        async move {
            bench
                .count(&format!(
                    "SELECT COUNT(*) FROM decisions WHERE decision = '{d}'"
                ))
                .await
        }
    };
    assert_eq!(decided("spawn").await, 1, "{}", bench.logs());
    assert_eq!(decided("duplicate").await, 1);
    assert_eq!(decided("rejected").await, 1);
    assert_eq!(bench.count("SELECT COUNT(*) FROM rejected").await, 1);
    // The spawned ticket runs as usual.
    bench
        .wait_for(
            "SELECT COUNT(*) FROM agent_jobs WHERE state = 'succeeded'",
            1,
        )
        .await;
    bench.stop();
    assert_eq!(bench.count("SELECT COUNT(*) FROM decisions").await, 3);
    // Past a full visibility timeout: nothing was left to be redriven.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(queue_depth(&sqs, &url).await, (0, 0));
    assert_eq!(queue_depth(&sqs, &dlq).await, (0, 0));
}

/// SIGKILLed at `failpoint` with one message received: after a restart the message is
/// decided exactly once and the queue ends empty.
async fn killed_at(kind: Kind, failpoint: &str, message_runs: i64) {
    let emu = Emulator::start(kind).await;
    let sqs = aws_sdk_sqs::Client::new(&emu.sdk().await);
    let url = create_queue(&sqs, "conductor-crash", 2).await;
    let mut bench = sqs_bench(&url, "ok").await;
    let id = send(&sqs, &url, &sample(TICKET)).await;
    start(&mut bench, &emu, &[("CONDUCTOR_FAILPOINTS", failpoint)]);
    assert_eq!(bench.wait_exit(), Some(libc::SIGKILL), "{}", bench.logs());
    // Not deleted: SQS hands it out again once its visibility timeout passes.
    start(&mut bench, &emu, &[]);
    bench.wait_for("SELECT COUNT(*) FROM decisions", 1).await;
    wait_empty(&sqs, &url).await;
    bench
        .wait_for(
            "SELECT COUNT(*) FROM runs WHERE workflow = 'message' AND status = 'done'",
            message_runs,
        )
        .await;
    bench.stop();
    assert_eq!(bench.count("SELECT COUNT(*) FROM decisions").await, 1);
    assert_eq!(bench.count("SELECT COUNT(*) FROM messages").await, 1);
    assert_eq!(
        bench
            .count("SELECT COUNT(*) FROM runs WHERE workflow = 'message'")
            .await,
        message_runs,
        "{}",
        bench.logs()
    );
    assert_eq!(bench.text("SELECT transport_id FROM messages").await, id);
}

async fn a_closed_gate_leaves_the_queue_alone(kind: Kind) {
    let emu = Emulator::start(kind).await;
    let sqs = aws_sdk_sqs::Client::new(&emu.sdk().await);
    let url = create_queue(&sqs, "conductor-gate", 2).await;
    let mut bench = sqs_bench(&url, "slow").await;
    bench.config.worker.agent_command.push_str(" 4");
    std::fs::write(&bench.config_path, toml::to_string(&bench.config).unwrap()).unwrap();
    send(&sqs, &url, &sample(TICKET)).await;
    start(&mut bench, &emu, &[]);
    bench
        .wait_for(
            "SELECT COUNT(*) FROM job_attempts WHERE state = 'delivered'",
            1,
        )
        .await;
    std::fs::write(bench.dir.path().join(gate::GATE_FILE), "true\n").unwrap();
    bench
        .wait_for(
            "SELECT COUNT(*) FROM flags WHERE name = 'gate' AND value = 'closed'",
            1,
        )
        .await;
    send(&sqs, &url, &sample("ticket-webhook-created.json")).await;
    send(&sqs, &url, "{junk").await;
    // Whatever a poll pending at the close brought is given back; the drain ends.
    assert_eq!(bench.exited().await, Some(0), "{}", bench.logs());
    let depth = depth_within(&sqs, &url, (2, 0), 100).await;
    assert_eq!(depth, (2, 0), "{}", bench.logs());
    assert_eq!(bench.count("SELECT COUNT(*) FROM messages").await, 1);
    // The next conductor takes them.
    start(&mut bench, &emu, &[]);
    bench.wait_for("SELECT COUNT(*) FROM decisions", 3).await;
    wait_empty(&sqs, &url).await;
    bench.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn sqs_flow_moto() {
    messages_flow_and_malformed_ones_are_rejected_and_deleted(Kind::Moto).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqs_flow_ministack() {
    messages_flow_and_malformed_ones_are_rejected_and_deleted(Kind::Ministack).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqs_killed_before_the_inbox_commit_moto() {
    killed_at(Kind::Moto, "sqs.before_commit", 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqs_killed_before_the_inbox_commit_ministack() {
    killed_at(Kind::Ministack, "sqs.before_commit", 1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqs_killed_after_the_inbox_commit_before_delete_moto() {
    killed_at(Kind::Moto, "sqs.after_commit", 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqs_killed_after_the_inbox_commit_before_delete_ministack() {
    killed_at(Kind::Ministack, "sqs.after_commit", 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqs_gate_moto() {
    a_closed_gate_leaves_the_queue_alone(Kind::Moto).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqs_gate_ministack() {
    a_closed_gate_leaves_the_queue_alone(Kind::Ministack).await;
}

// ---- The Fargate spawner ----

const CLUSTER: &str = "conductor";

/// A cluster and the worker's task definition on the server; a subnet of its default VPC.
async fn setup_ecs(emu: &Emulator, ecs: &aws_sdk_ecs::Client) -> String {
    use aws_sdk_ecs::types::{Compatibility, ContainerDefinition, KeyValuePair, NetworkMode};
    ecs.create_cluster()
        .cluster_name(CLUSTER)
        .send()
        .await
        .expect("CreateCluster");
    ecs.register_task_definition()
        .family("conductor-worker")
        .network_mode(NetworkMode::Awsvpc)
        .requires_compatibilities(Compatibility::Fargate)
        .cpu("256")
        .memory("512")
        .container_definitions(
            ContainerDefinition::builder()
                .name("worker")
                .image("conductor-worker:test")
                .memory(512)
                .essential(true)
                .environment(
                    KeyValuePair::builder()
                        .name("WORKER_DIR")
                        .value("/work")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .expect("RegisterTaskDefinition");
    // EC2's query API (no EC2 client in this build): the first subnet of the default VPC.
    let xml = reqwest::Client::new()
        .post(emu.url())
        .header("Content-Type", "application/x-www-form-urlencoded")
        .header(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/ec2/aws4_request, SignedHeaders=host, Signature=0",
        )
        .body("Action=DescribeSubnets&Version=2016-11-15")
        .send()
        .await
        .expect("DescribeSubnets")
        .text()
        .await
        .unwrap();
    let start = xml.find("<subnetId>").expect("a subnet") + "<subnetId>".len();
    let end = start + xml[start..].find('<').unwrap();
    xml[start..end].to_owned()
}

async fn ecs_bench(
    subnet: &str,
    mode: &str,
    tweak: impl FnOnce(&mut conductor::config::Config),
) -> Bench {
    let subnet = subnet.to_owned();
    Bench::new(false, mode, move |c, _| {
        c.worker.spawner = conductor::config::SpawnerKind::Ecs;
        c.ecs.cluster = CLUSTER.into();
        c.ecs.task_definition = "conductor-worker".into();
        c.ecs.container = "worker".into();
        c.ecs.subnets = vec![subnet];
        c.ecs.security_groups = vec!["sg-0123456789abcdef0".into()];
        c.grpc.advertise = Some(format!("http://{}", c.grpc.listen));
        tweak(c);
    })
    .await
}

async fn tasks(
    ecs: &aws_sdk_ecs::Client,
    status: aws_sdk_ecs::types::DesiredStatus,
) -> Vec<String> {
    ecs.list_tasks()
        .cluster(CLUSTER)
        .desired_status(status)
        .send()
        .await
        .expect("ListTasks")
        .task_arns
        .unwrap_or_default()
}

async fn describe(ecs: &aws_sdk_ecs::Client, arn: &str) -> aws_sdk_ecs::types::Task {
    ecs.describe_tasks()
        .cluster(CLUSTER)
        .tasks(arn)
        .include(aws_sdk_ecs::types::TaskField::Tags)
        .send()
        .await
        .expect("DescribeTasks")
        .tasks
        .unwrap_or_default()
        .into_iter()
        .next()
        .expect("the task")
}

/// The worker container's environment: the task definition's, then the overrides.
fn container_env(task: &aws_sdk_ecs::types::Task) -> std::collections::BTreeMap<String, String> {
    container_env_of(task, "worker")
}

/// Container `name`'s environment in `task`: the test task definitions' `WORKER_DIR`, then
/// the overrides.
fn container_env_of(
    task: &aws_sdk_ecs::types::Task,
    name: &str,
) -> std::collections::BTreeMap<String, String> {
    let mut env = std::collections::BTreeMap::from([("WORKER_DIR".to_owned(), "/work".to_owned())]);
    for o in task
        .overrides()
        .map(|o| o.container_overrides())
        .unwrap_or_default()
    {
        if o.name() == Some(name) {
            for kv in o.environment() {
                env.insert(
                    kv.name().unwrap_or_default().to_owned(),
                    kv.value().unwrap_or_default().to_owned(),
                );
            }
        }
    }
    env
}

/// What Fargate would do with the task: run the worker with exactly the container's
/// environment (its work directory moved under the bench).
fn run_container(
    bench: &Bench,
    env: &std::collections::BTreeMap<String, String>,
) -> std::process::Child {
    let dir = bench.dir.path().join("fargate").join(&env["WORKER_ID"]);
    std::fs::create_dir_all(&dir).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_conductor-worker"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HOME", std::env::var("HOME").unwrap())
        .envs(env)
        .env("WORKER_DIR", &dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.with_extension("log")).unwrap())
        .spawn()
        .unwrap()
}

async fn spawn_is_a_run_task_whose_environment_starts_a_worker(kind: Kind) {
    use aws_sdk_ecs::types::{DesiredStatus, LaunchType};
    let emu = Emulator::start(kind).await;
    let ecs = aws_sdk_ecs::Client::new(&emu.sdk().await);
    let subnet = setup_ecs(&emu, &ecs).await;
    let mut bench = ecs_bench(&subnet, "ok", |_| {}).await;
    bench.submit(&[TICKET]);
    start(&mut bench, &emu, &[]);
    bench
        .wait_for(
            "SELECT COUNT(*) FROM job_attempts WHERE state = 'spawned' AND handle LIKE 'arn:%'",
            1,
        )
        .await;
    let arn = bench
        .text("SELECT handle FROM job_attempts WHERE worker_id = 'j1-a1'")
        .await;
    let token = bench
        .text("SELECT token FROM job_attempts WHERE worker_id = 'j1-a1'")
        .await;
    let task = describe(&ecs, &arn).await;
    assert_eq!(task.launch_type(), Some(&LaunchType::Fargate));
    assert_eq!(task.started_by(), Some("j1-a1"));
    let env = container_env(&task);
    assert_eq!(env["WORKER_ID"], "j1-a1");
    // The database holds the token's hash only; the task got the token itself.
    assert_eq!(conductor::secrets::hash_token(&env["WORKER_TOKEN"]), token);
    assert_eq!(
        env["CONDUCTOR_ADDR"],
        bench.config.grpc.advertise.clone().unwrap()
    );
    assert!(env.contains_key("AGENT_COMMAND"), "{env:?}");
    let tags: Vec<(String, String)> = task
        .tags()
        .iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().into(),
                t.value().unwrap_or_default().into(),
            )
        })
        .collect();
    if kind == Kind::Moto {
        assert!(
            tags.contains(&("conductor:job".into(), "1".into())),
            "{tags:?}"
        );
        assert!(
            tags.contains(&("conductor:attempt".into(), "1".into())),
            "{tags:?}"
        );
    }
    let mut worker = run_container(&bench, &env);
    bench
        .wait_for(
            "SELECT COUNT(*) FROM agent_jobs WHERE state = 'succeeded'",
            1,
        )
        .await;
    assert_eq!(worker.wait().unwrap().code(), Some(0));
    assert_eq!(bench.posts_to("/repos/acme/app/pulls").await.len(), 1);
    assert_eq!(tasks(&ecs, DesiredStatus::Running).await, vec![arn]);
    bench.stop();
}

async fn a_spawn_rerun_after_a_crash_starts_no_second_task(kind: Kind) {
    use aws_sdk_ecs::types::DesiredStatus;
    let emu = Emulator::start(kind).await;
    let ecs = aws_sdk_ecs::Client::new(&emu.sdk().await);
    let subnet = setup_ecs(&emu, &ecs).await;
    let mut bench = ecs_bench(&subnet, "ok", |_| {}).await;
    bench.submit(&[TICKET]);
    // Killed after RunTask returned, before the spawn step's commit.
    start(
        &mut bench,
        &emu,
        &[("CONDUCTOR_FAILPOINTS", "spawn.after_start")],
    );
    assert_eq!(bench.wait_exit(), Some(libc::SIGKILL), "{}", bench.logs());
    let first = tasks(&ecs, DesiredStatus::Running).await;
    assert_eq!(first.len(), 1);
    start(&mut bench, &emu, &[]);
    bench
        .wait_for(
            "SELECT COUNT(*) FROM job_attempts WHERE state = 'spawned' AND handle LIKE 'arn:%'",
            1,
        )
        .await;
    assert_eq!(tasks(&ecs, DesiredStatus::Running).await, first);
    assert_eq!(
        bench
            .text("SELECT handle FROM job_attempts WHERE worker_id = 'j1-a1'")
            .await,
        first[0]
    );
    assert_eq!(bench.count("SELECT COUNT(*) FROM job_attempts").await, 1);
    bench.kill();
}

async fn a_missed_handshake_stops_the_task(kind: Kind) {
    use aws_sdk_ecs::types::DesiredStatus;
    let emu = Emulator::start(kind).await;
    let ecs = aws_sdk_ecs::Client::new(&emu.sdk().await);
    let subnet = setup_ecs(&emu, &ecs).await;
    let mut bench = ecs_bench(&subnet, "ok", |c| {
        c.jobs.handshake_timeout = Duration::from_secs(2);
    })
    .await;
    bench.submit(&[TICKET]);
    start(&mut bench, &emu, &[]);
    // Nobody runs the container: the handshake deadline passes.
    bench
        .wait_for(
            "SELECT COUNT(*) FROM job_attempts WHERE worker_id = 'j1-a1' AND state = 'failed'",
            1,
        )
        .await;
    let arn = bench
        .text("SELECT handle FROM job_attempts WHERE worker_id = 'j1-a1'")
        .await;
    let task = describe(&ecs, &arn).await;
    assert_eq!(task.last_status(), Some("STOPPED"), "{task:?}");
    assert!(
        task.stopped_reason().unwrap_or_default().contains("j1-a1"),
        "{task:?}"
    );
    // The retry is a task of its own.
    bench
        .wait_for(
            "SELECT COUNT(*) FROM job_attempts WHERE worker_id = 'j1-a2' AND handle LIKE 'arn:%'",
            1,
        )
        .await;
    let running = tasks(&ecs, DesiredStatus::Running).await;
    assert!(!running.contains(&arn), "{running:?}");
    bench.kill();
}

async fn a_task_that_stops_ends_its_attempt(kind: Kind) {
    let emu = Emulator::start(kind).await;
    let ecs = aws_sdk_ecs::Client::new(&emu.sdk().await);
    let subnet = setup_ecs(&emu, &ecs).await;
    // A lease long enough that only the stopped task can end the attempt, however slowly a
    // busy machine polls.
    let mut bench = ecs_bench(&subnet, "hang", |c| c.jobs.lease = Duration::from_secs(60)).await;
    bench.submit(&[TICKET]);
    start(&mut bench, &emu, &[]);
    bench
        .wait_for(
            "SELECT COUNT(*) FROM job_attempts WHERE state = 'spawned' AND handle LIKE 'arn:%'",
            1,
        )
        .await;
    let arn = bench
        .text("SELECT handle FROM job_attempts WHERE worker_id = 'j1-a1'")
        .await;
    let mut worker = run_container(&bench, &container_env(&describe(&ecs, &arn).await));
    bench
        .wait_for(
            "SELECT COUNT(*) FROM job_attempts WHERE state = 'delivered'",
            1,
        )
        .await;
    // The container dies (ECS stops the task: out of memory, a spot reclaim): the worker is
    // gone with it, its lease still valid.
    ecs.stop_task()
        .cluster(CLUSTER)
        .task(&arn)
        .reason("OutOfMemoryError: container killed")
        .send()
        .await
        .unwrap();
    let _ = worker.kill();
    let _ = worker.wait();
    common::jobs::kill_workers_under(&bench.dir.path().join("fargate"));
    bench
        .wait_for(
            "SELECT COUNT(*) FROM job_attempts WHERE worker_id = 'j1-a1' AND state = 'failed'",
            1,
        )
        .await;
    let failure = bench
        .text("SELECT failure FROM job_attempts WHERE worker_id = 'j1-a1'")
        .await;
    assert!(
        failure.starts_with("task stopped: OutOfMemoryError"),
        "{failure}"
    );
    bench.kill();
}

#[tokio::test(flavor = "multi_thread")]
async fn ecs_run_task_moto() {
    spawn_is_a_run_task_whose_environment_starts_a_worker(Kind::Moto).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ecs_run_task_ministack() {
    spawn_is_a_run_task_whose_environment_starts_a_worker(Kind::Ministack).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ecs_spawn_rerun_after_crash_moto() {
    a_spawn_rerun_after_a_crash_starts_no_second_task(Kind::Moto).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ecs_spawn_rerun_after_crash_ministack() {
    a_spawn_rerun_after_a_crash_starts_no_second_task(Kind::Ministack).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ecs_missed_handshake_moto() {
    a_missed_handshake_stops_the_task(Kind::Moto).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ecs_missed_handshake_ministack() {
    a_missed_handshake_stops_the_task(Kind::Ministack).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ecs_stopped_task_moto() {
    a_task_that_stops_ends_its_attempt(Kind::Moto).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ecs_stopped_task_ministack() {
    a_task_that_stops_ends_its_attempt(Kind::Ministack).await;
}

/// A route's development environment names its own task definition and container: the job
/// it routes runs there (the project's own image), with the worker's variables on that
/// container; the worker then does the job from those variables as Fargate would run it.
async fn a_routes_task_definition_runs_its_jobs(kind: Kind) {
    use aws_sdk_ecs::types::{Compatibility, ContainerDefinition, NetworkMode};
    use conductor::config::{Environment, Route};
    let emu = Emulator::start(kind).await;
    let ecs = aws_sdk_ecs::Client::new(&emu.sdk().await);
    let subnet = setup_ecs(&emu, &ecs).await;
    ecs.register_task_definition()
        .family("payments-dev")
        .network_mode(NetworkMode::Awsvpc)
        .requires_compatibilities(Compatibility::Fargate)
        .cpu("256")
        .memory("512")
        .container_definitions(
            ContainerDefinition::builder()
                .name("dev")
                .image("payments-dev:latest")
                .memory(512)
                .essential(true)
                .build(),
        )
        .send()
        .await
        .expect("RegisterTaskDefinition");
    let mut bench = ecs_bench(&subnet, "ok", |c| {
        let repo = c.routes[0].repo.clone();
        c.routes = vec![
            Route {
                project: Some("PAY".into()),
                repo: repo.clone(),
                forge_repo: Some("acme/app".into()),
                environment: Some(Environment {
                    task_definition: Some("payments-dev".into()),
                    container: Some("dev".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Route {
                default: true,
                repo,
                forge_repo: Some("acme/app".into()),
                ..Default::default()
            },
        ];
    })
    .await;
    bench.submit(&[TICKET]);
    start(&mut bench, &emu, &[]);
    bench
        .wait_for(
            "SELECT COUNT(*) FROM job_attempts WHERE state = 'spawned' AND handle LIKE 'arn:%'",
            1,
        )
        .await;
    let arn = bench
        .text("SELECT handle FROM job_attempts WHERE worker_id = 'j1-a1'")
        .await;
    let task = describe(&ecs, &arn).await;
    let definition = task.task_definition_arn().unwrap_or_default().to_owned();
    assert!(
        definition.contains("task-definition/payments-dev:"),
        "the route's task definition: {definition}"
    );
    let overrides = task
        .overrides()
        .map(|o| o.container_overrides())
        .unwrap_or_default();
    assert_eq!(
        overrides
            .iter()
            .filter_map(|o| o.name())
            .collect::<Vec<_>>(),
        vec!["dev"]
    );
    let env = container_env_of(&task, "dev");
    assert_eq!(env["WORKER_ID"], "j1-a1");
    let mut worker = run_container(&bench, &env);
    bench
        .wait_for(
            "SELECT COUNT(*) FROM agent_jobs WHERE state = 'succeeded'",
            1,
        )
        .await;
    assert_eq!(worker.wait().unwrap().code(), Some(0));
    bench.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn ecs_route_task_definition_moto() {
    a_routes_task_definition_runs_its_jobs(Kind::Moto).await;
}

/// `conductor bench ingest` measures the real transport into decisions on an SQS-compatible
/// endpoint: every message it sent is decided, in both runs.
#[tokio::test(flavor = "multi_thread")]
async fn bench_ingest_reports_both_runs() {
    let emu = Emulator::start(Kind::Ministack).await;
    let env = emu.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (status, out, err) = common::conductor(
        &[
            "bench",
            "ingest",
            "--endpoint-url",
            &emu.url(),
            "--messages",
            "60",
            "--latency-messages",
            "12",
            "--rate",
            "40",
            "--json",
        ],
        &env,
    );
    assert!(status.success(), "{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["messages"], 60, "{out}");
    assert_eq!(report["latency_messages"], 12, "{out}");
    let (p50, p99) = (
        report["latency_p50_ms"].as_f64().unwrap(),
        report["latency_p99_ms"].as_f64().unwrap(),
    );
    assert!(p50 >= 0.0 && p50 <= p99, "{out}");
    assert!(report["per_second"].as_f64().unwrap() > 0.0, "{out}");
}

/// While a batch waits on a slow database, its visibility is extended: the other receiver
/// never gets the same message, though the database stalls for over twice the visibility
/// timeout.
async fn a_slow_store_keeps_the_batch_invisible(kind: Kind) {
    use sqlx::Connection;
    let emu = Emulator::start(kind).await;
    let sqs = aws_sdk_sqs::Client::new(&emu.sdk().await);
    let url = create_queue(&sqs, "conductor-slow", 2).await;
    let mut bench = sqs_bench(&url, "ok").await;
    start(&mut bench, &emu, &[]);
    for _ in 0..200 {
        if bench.logs().contains("SQS transport polling") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Hold SQLite's write lock: the receiver's inbox transaction waits for it.
    let mut lock = sqlx::SqliteConnection::connect(&bench.url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut lock)
        .await
        .unwrap();
    send(&sqs, &url, &sample(TICKET)).await;
    for _ in 0..100 {
        if queue_depth(&sqs, &url).await == (0, 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(queue_depth(&sqs, &url).await, (0, 1), "received, in flight");
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Still in flight with the first receiver, never handed out again.
    assert_eq!(queue_depth(&sqs, &url).await, (0, 1));
    sqlx::query("ROLLBACK").execute(&mut lock).await.unwrap();
    drop(lock);
    // Stored once and deleted. Only the transport is under test here: the steps after the
    // inbox are not waited for (apalis-sqlite's workers were seen to stall after a long write
    // lock; see the closing note of session 4).
    bench
        .wait_for("SELECT COUNT(*) FROM runs WHERE workflow = 'message'", 1)
        .await;
    wait_empty(&sqs, &url).await;
    bench.kill();
    common::jobs::kill_workers_under(&bench.dir.path().join("work"));
    assert_eq!(
        bench
            .count("SELECT COUNT(*) FROM runs WHERE workflow = 'message'")
            .await,
        1,
        "the message was received twice\n{}",
        bench.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sqs_slow_store_moto() {
    a_slow_store_keeps_the_batch_invisible(Kind::Moto).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sqs_slow_store_ministack() {
    a_slow_store_keeps_the_batch_invisible(Kind::Ministack).await;
}

/// RunTask's `failures` (no capacity, say) and throttling are retried with backoff before the
/// spawn gives up; a refusal is not retried. Neither test server produces them, so a local
/// HTTP server speaks ECS's JSON protocol here, to the production ECS client.
#[tokio::test(flavor = "multi_thread")]
async fn run_task_failures_and_throttling_are_retried() {
    use conductor::jobs::spawner::{ecs::EcsSpawner, Spawner, WorkerSpec};
    use wiremock::{
        matchers::{header, method},
        Mock, MockServer, ResponseTemplate,
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = MockServer::start().await;
    let target = |op: &str| {
        header(
            "x-amz-target",
            format!("AmazonEC2ContainerServiceV20141113.{op}"),
        )
    };
    let json = |status: u16, body: serde_json::Value| {
        ResponseTemplate::new(status)
            .insert_header("content-type", "application/x-amz-json-1.1")
            .set_body_json(body)
    };
    Mock::given(method("POST"))
        .and(target("ListTasks"))
        .respond_with(json(200, serde_json::json!({"taskArns": []})))
        .mount(&server)
        .await;
    // First: throttled (the SDK's own retries see it too); then a capacity failure; then a task.
    Mock::given(method("POST"))
        .and(target("RunTask"))
        .respond_with(json(
            400,
            serde_json::json!({"__type": "ThrottlingException", "message": "Rate exceeded"}),
        ))
        .up_to_n_times(3)
        .with_priority(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(target("RunTask"))
        .respond_with(json(
            200,
            serde_json::json!({"tasks": [], "failures": [{"reason": "RESOURCE:MEMORY", "detail": "no capacity"}]}),
        ))
        .up_to_n_times(1)
        .with_priority(2)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(target("RunTask"))
        .respond_with(json(
            200,
            serde_json::json!({"tasks": [{"taskArn": "arn:aws:ecs:us-east-1:1:task/conductor/abc"}], "failures": []}),
        ))
        .with_priority(3)
        .mount(&server)
        .await;
    for (k, v) in common::aws::AWS_ENV {
        // SAFETY: the same values every test sets, before any client reads them.
        unsafe { std::env::set_var(k, v) };
    }
    let sdk = conductor::aws::sdk_config(&conductor::config::AwsConfig {
        region: Some("us-east-1".into()),
        endpoint_url: Some(server.uri()),
    })
    .await;
    let mut ecs = conductor::config::EcsConfig {
        subnets: vec!["subnet-1".into()],
        ..Default::default()
    };
    let spec = WorkerSpec {
        worker_id: "j1-a1".into(),
        token: "t".repeat(64),
        conductor_addr: "http://10.0.0.1:7471".into(),
        job_id: 1,
        attempt: 1,
        environment: None,
    };
    let spawner = EcsSpawner::new(&sdk, &ecs, &conductor::config::WorkerConfig::default());
    let arn = spawner
        .spawn(&spec)
        .await
        .expect("retried until a task ran");
    assert_eq!(arn, "arn:aws:ecs:us-east-1:1:task/conductor/abc");
    let run_tasks = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| {
            r.headers
                .get("x-amz-target")
                .is_some_and(|t| t.to_str().unwrap().ends_with(".RunTask"))
        })
        .count();
    assert_eq!(run_tasks, 5, "3 throttled, 1 failure, 1 task");
    let body: serde_json::Value = serde_json::from_slice(
        &server
            .received_requests()
            .await
            .unwrap()
            .last()
            .unwrap()
            .body,
    )
    .unwrap();
    assert_eq!(body["clientToken"], "j1-a1");
    assert_eq!(body["launchType"], "FARGATE");

    // A refusal (a bad parameter) is not retried: the spawn fails for good at once.
    server.reset().await;
    Mock::given(method("POST"))
        .and(target("ListTasks"))
        .respond_with(json(200, serde_json::json!({"taskArns": []})))
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .and(target("RunTask"))
        .respond_with(json(
            400,
            serde_json::json!({"__type": "InvalidParameterException", "message": "No Container Instances"}),
        ))
        .mount(&server)
        .await;
    ecs.run_task_attempts = 4;
    let spawner = EcsSpawner::new(&sdk, &ecs, &conductor::config::WorkerConfig::default());
    let err = spawner.spawn(&spec).await.unwrap_err();
    assert!(matches!(err, conductor::Error::Refused(_)), "{err:?}");
    let run_tasks = server.received_requests().await.unwrap().len() - 1;
    assert_eq!(run_tasks, 1);
}

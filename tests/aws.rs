//! The SQS transport and the Fargate spawner against AWS-compatible servers on loopback (moto
//! and ministack), driven by the production SDK clients: messages sent with the SDK flow
//! through ingest and decide; a crash before or after the inbox commit neither loses nor
//! doubles a decision; a closed gate leaves the queue alone; a spawn is a RunTask of the
//! expected shape whose environment starts a real worker; a spawn re-run after a crash starts
//! no second task; a missed handshake stops the task.

mod common;

use std::time::Duration;

use common::{
    aws::{create_queue, queue_depth, Emulator, Kind},
    jobs::Bench,
};
use conductor::gate;

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

async fn wait_empty(sqs: &aws_sdk_sqs::Client, url: &str) {
    for _ in 0..300 {
        if queue_depth(sqs, url).await == (0, 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the queue never emptied: {:?}", queue_depth(sqs, url).await);
}

async fn messages_flow_and_malformed_ones_are_rejected_and_deleted(kind: Kind) {
    let emu = Emulator::start(kind).await;
    let sqs = aws_sdk_sqs::Client::new(&emu.sdk().await);
    let url = create_queue(&sqs, "conductor-flow", 2).await;
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
    // Two full polls' time: nothing is received, nothing is in flight.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(queue_depth(&sqs, &url).await, (2, 0));
    assert_eq!(bench.exited().await, Some(0), "{}", bench.logs());
    assert_eq!(queue_depth(&sqs, &url).await, (2, 0));
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

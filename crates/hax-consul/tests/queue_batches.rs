//! Queue consumption committing several entries at once, against a real
//! Consul agent: what is committed when, what a crash repeats.

mod support;

use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use hax_consul::queue::{ConsumerConfig, Handled, QueueConsumer, QueueEntry};
use hax_consul::schema::QueueKind;
use hax_consul::{ConsulClient, TxnOp};
use hax_testkit::dev_agent::{AgentMode, DevAgent};
use support::publish;

const OFFSET: &str = "bq-delivered/node1";

fn config() -> ConsumerConfig {
    ConsumerConfig {
        kind: QueueKind::Broadcast,
        name: "node1".into(),
        delete_consumed: false,
    }
}

async fn stored_offset(c: &ConsulClient) -> Option<u64> {
    c.kv_get(OFFSET)
        .await
        .expect("read")
        .value
        .map(|p| String::from_utf8_lossy(&p.value).parse().expect("decimal"))
}

/// Consumes `entries` in batches of `batch`; each handler call records the
/// epoch it handles and the offset stored in Consul at that moment, and
/// writes `seen/<epoch>`. `commit_now` says which epochs ask for an
/// immediate commit; the handler fails on `fail_at`.
async fn consume(
    c: &ConsulClient,
    entries: &[QueueEntry],
    batch: usize,
    commit_now: &[u64],
    fail_at: Option<u64>,
) -> (Result<usize, String>, Vec<(u64, Option<u64>)>) {
    let consumer = QueueConsumer::new(c.clone(), config()).expect("consumer");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let result = consumer
        .consume_entries_batched(entries, batch, |entry| {
            let (c, seen) = (c.clone(), Arc::clone(&seen));
            let epoch = entry.epoch;
            let now = commit_now.contains(&epoch);
            async move {
                let offset = stored_offset(&c).await;
                seen.lock().expect("seen").push((epoch, offset));
                if Some(epoch) == fail_at {
                    return Err("handler failed".to_owned());
                }
                Ok::<_, String>(Handled {
                    ops: vec![TxnOp::set(format!("seen/{epoch}"), "1")],
                    commit_now: now,
                })
            }
        })
        .await
        .map_err(|e| e.to_string());
    let seen = seen.lock().expect("seen").clone();
    (result, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_are_committed_in_batches_with_their_effects() {
    let agent = DevAgent::start().await.expect("agent");
    let c = agent.client().expect("client");
    // Epochs 1..=10 (no counter yet).
    let entries = publish(&c, 10).await;
    let (result, seen) = consume(&c, &entries, 4, &[], None).await;
    assert_eq!(result, Ok(10));
    // Each batch of 4 is committed once its last entry is handled: the
    // handler of an entry sees the offset of the batch before.
    let expected: Vec<(u64, Option<u64>)> = (1..=10)
        .map(|e| {
            let committed = match e {
                1..=4 => None,
                5..=8 => Some(4),
                _ => Some(8),
            };
            (e, committed)
        })
        .collect();
    assert_eq!(seen, expected);
    assert_eq!(stored_offset(&c).await, Some(10));
    for e in 1..=10 {
        let got = c.kv_get(&format!("seen/{e}")).await.expect("read").value;
        assert!(got.is_some(), "effect of {e} committed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_asking_for_it_is_committed_at_once() {
    let agent = DevAgent::start().await.expect("agent");
    let c = agent.client().expect("client");
    let entries = publish(&c, 6).await;
    // Epochs 1..=6; 2 commits at once (with 1), then 3..=6 make a batch.
    let (result, seen) = consume(&c, &entries, 4, &[2], None).await;
    assert_eq!(result, Ok(6));
    assert_eq!(
        seen,
        vec![
            (1, None),
            (2, None),
            (3, Some(2)),
            (4, Some(2)),
            (5, Some(2)),
            (6, Some(2)),
        ]
    );
    assert_eq!(stored_offset(&c).await, Some(6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_error_commits_the_entries_before_it() {
    let agent = DevAgent::start().await.expect("agent");
    let c = agent.client().expect("client");
    let entries = publish(&c, 6).await;
    let (result, _) = consume(&c, &entries, 64, &[], Some(4)).await;
    assert!(result.is_err_and(|e| e.contains("bq/4")));
    assert_eq!(stored_offset(&c).await, Some(3), "1, 2, 3 committed");
    assert!(c.kv_get("seen/3").await.expect("read").value.is_some());
    assert!(c.kv_get("seen/4").await.expect("read").value.is_none());
    // The next round starts at the failed entry.
    let (result, seen) = consume(&c, &entries, 64, &[], None).await;
    assert_eq!(result, Ok(3));
    assert_eq!(
        seen.iter().map(|(e, _)| *e).collect::<Vec<_>>(),
        vec![4, 5, 6]
    );
    assert_eq!(stored_offset(&c).await, Some(6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_the_commit_hands_the_batch_again() {
    let agent = DevAgent::start().await.expect("agent");
    let c = agent.client().expect("client");
    let entries = publish(&c, 5).await;
    // The consumer dies while handling the third entry of a batch.
    let consumer = QueueConsumer::new(c.clone(), config()).expect("consumer");
    let (reached, died) = tokio::sync::oneshot::channel::<()>();
    let mut reached = Some(reached);
    let run = consumer.consume_entries_batched(&entries, 64, |entry| {
        let stall = entry.epoch == 3;
        let signal = if stall { reached.take() } else { None };
        async move {
            if let Some(s) = signal {
                let _ = s.send(());
                std::future::pending::<()>().await;
            }
            Ok::<_, String>(Handled::default())
        }
    });
    tokio::select! {
        _ = run => panic!("the stalled handler returned"),
        _ = died => {}
    }
    assert_eq!(stored_offset(&c).await, None, "nothing committed yet");
    // A new consumer handles every entry again, each once.
    let (result, seen) = consume(&c, &entries, 64, &[], None).await;
    assert_eq!(result, Ok(5));
    assert_eq!(
        seen.iter().map(|(e, _)| *e).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(stored_offset(&c).await, Some(5));
}

/// How the commit of entry 3 is cut off.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Cut {
    /// The agent is frozen: the commit's answer is lost, and the commit
    /// lands when the agent goes on.
    Freeze,
    /// The agent is killed: the commit never lands.
    Kill,
}

/// Entry 3 asks for an immediate commit, which is cut off; the same
/// consumer then goes on. Returns what the second consumption counted.
async fn cut_commit(cut: Cut) -> usize {
    let mut agent = DevAgent::builder()
        .mode(AgentMode::Persistent)
        .start()
        .await
        .expect("agent");
    let c = agent.client().expect("client");
    let entries = publish(&c, 5).await;
    let mut cfg = agent.client_config();
    cfg.request_timeout = Duration::from_millis(500);
    let consumer =
        QueueConsumer::new(ConsulClient::new(cfg).expect("client"), config()).expect("consumer");
    let calls = Arc::new(Mutex::new(Vec::new()));
    let (at_3, cut_now) = tokio::sync::mpsc::unbounded_channel::<oneshot::Sender<()>>();
    let handler = |entry: &QueueEntry| {
        let (calls, at_3) = (Arc::clone(&calls), at_3.clone());
        let epoch = entry.epoch;
        async move {
            let first_time = {
                let mut calls = calls.lock().expect("calls");
                calls.push(epoch);
                !calls[..calls.len() - 1].contains(&epoch)
            };
            if epoch == 3 && first_time {
                // Entry 3 told the outside world: wait until its commit
                // is cut off.
                let (done, cut) = oneshot::channel::<()>();
                let _ = at_3.send(done);
                let _ = cut.await;
            }
            Ok::<_, String>(Handled {
                ops: vec![TxnOp::set(format!("seen/{epoch}"), "1")],
                commit_now: epoch == 3,
            })
        }
    };
    let mut cut_now = cut_now;
    let cutter = async {
        let done = cut_now.recv().await.expect("entry 3 reached");
        match cut {
            Cut::Freeze => agent.pause().expect("pause"),
            Cut::Kill => agent.kill(),
        }
        let _ = done.send(());
    };
    let (first, ()) = tokio::join!(
        consumer.consume_entries_batched(&entries, 64, handler),
        cutter
    );
    assert!(
        first.is_err(),
        "the commit of entry 3 was cut off: {first:?}"
    );
    match cut {
        Cut::Freeze => agent.resume().expect("resume"),
        Cut::Kill => agent.start_again().await.expect("agent back"),
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let handled = loop {
        match consumer
            .consume_entries_batched(&entries, 64, handler)
            .await
        {
            Ok(n) => break n,
            Err(e) if Instant::now() < deadline => {
                eprintln!("agent not back yet: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("consumption after the cut: {e}"),
        }
    };
    assert_eq!(
        *calls.lock().expect("calls"),
        vec![1, 2, 3, 4, 5],
        "each entry handled once"
    );
    let c = agent.client().expect("client");
    assert_eq!(stored_offset(&c).await, Some(5));
    for epoch in 1..=5 {
        let got = c.kv_get(&format!("seen/{epoch}")).await.expect("read");
        assert!(got.value.is_some(), "effects of entry {epoch} committed");
    }
    handled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_never_landed_is_committed_without_handling_again() {
    // Entries 1 to 3 are committed by the second call, with 4 and 5.
    assert_eq!(cut_commit(Cut::Kill).await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_was_lost_is_not_handled_again() {
    // The frozen agent committed 1 to 3 when it went on.
    assert_eq!(cut_commit(Cut::Freeze).await, 2);
}

//! hax answers what peers ask from what Consul holds: entrypoints, NVEC GET,
//! failure vectors, keepalives; process events land under their keys and in
//! the BQ; malformed HTTP input changes nothing.

use hax_consul::schema::{ConfState, ObjState, ProcessState, ProcessStatus, ProcessType};
use hax_core::{Fid, FidType, HaState, ProcessEventKind};
use hax_e2e::{assert_no_violations, sets_with, wait_for, Env, Options, T};
use hax_sim::LinkOutcome;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entrypoint_events_and_answers() {
    let env = Env::start(Options::default()).await;
    let s = env.sample.clone();
    let peers = env.connect_peers(3).await;

    // Entrypoints: the sample's confd, quorum and principal RM (the rms
    // service of the confd process, on the leader's node).
    let rm = Fid::typed(FidType::Service, 1, 11);
    for p in &peers {
        let e = p.entrypoint().expect("entrypoint");
        assert_eq!(e.outcome, LinkOutcome::New);
        assert!(e.warnings().is_empty(), "{:?}", e.warnings());
        let confds: Vec<_> = e
            .reply
            .confds
            .iter()
            .map(|c| (c.fid, c.ep.clone()))
            .collect();
        assert_eq!(confds, vec![s.confd.clone()]);
        assert_eq!(e.reply.quorum, 1);
        assert_eq!(
            (e.reply.rm_fid, e.reply.rm_ep.as_str()),
            (rm, s.confd.1.as_str())
        );
    }

    // Process events: confirmed only once durable, so KV and the BQ hold
    // them as soon as each peer has its confirmations.
    for p in &peers {
        p.send_process_event(ProcessEventKind::Starting).unwrap();
        p.send_process_event(ProcessEventKind::Started).unwrap();
    }
    for p in &peers {
        p.wait_all_confirmed(T).await.unwrap();
    }
    for p in &peers {
        assert_eq!(
            env.process_status(p.fid()).await,
            Some(ProcessStatus {
                state: ProcessState::Started,
                kind: ProcessType::M0d
            }),
            "processes/{}",
            p.fid()
        );
        assert_eq!(
            env.bq_process_updates(p.fid()).await,
            vec![ProcessState::Starting, ProcessState::Started],
            "BQ entries of {}",
            p.fid()
        );
    }
    // Every peer hears that every peer started (DTM_RECOVERING).
    wait_for("every peer to hear of every start", T, || async {
        peers
            .iter()
            .all(|p| {
                peers
                    .iter()
                    .all(|q| sets_with(p, q.fid(), HaState::DtmRecovering) >= 1)
            })
            .then_some(())
    })
    .await;

    // NVEC GET answers from what Consul says.
    let p = &peers[0];
    let sdev = s.sdevs[0];
    let notes = p.nvec_get(&[sdev, s.drives[0]]).await.unwrap();
    assert_eq!(notes[0].state, HaState::Online, "{notes:?}");
    let key = env.sdev_key(0).await;
    for (word, state) in [
        (ObjState::Failed, HaState::Failed),
        (ObjState::Online, HaState::Online),
    ] {
        env.kv
            .set_conf_state(&key, ConfState::Word(word), &[])
            .await
            .unwrap();
        wait_for(
            &format!("NVEC GET of the sdev to answer {state}"),
            T,
            || async {
                let notes = p.nvec_get(&[sdev]).await.unwrap();
                (notes[0].state == state).then_some(())
            },
        )
        .await;
    }

    // Failure vector: the pool asked for, the cookie echoed (hax-sim checks
    // it), no failed devices.
    let pool = Fid::typed(FidType::Pool, 1, 1);
    let rep = peers[1].failvec(pool).await.unwrap();
    assert_eq!(rep.pool, pool);
    assert!(rep.notes.is_empty(), "{:?}", rep.notes);

    // Keepalive answered with the request's id (hax-sim checks it).
    peers[2].keepalive().await.unwrap();

    let m = env.metrics().await;
    assert_eq!(m.n("hax_links"), 4, "three peers and hax's own link");
    assert_eq!(m.entrypoint_answers(), 4);
    // Six from the peers, two from hax's own start on its self link.
    assert_eq!(
        m.n("hax_messages_total{direction=\"in\",type=\"event_process\"}"),
        8
    );
    assert_eq!(
        m.n("hax_messages_total{direction=\"in\",type=\"keepalive_req\"}"),
        1
    );
    assert_eq!(
        m.n("hax_messages_total{direction=\"out\",type=\"keepalive_rep\"}"),
        1
    );
    assert_no_violations(&peers);
    env.assert_no_contract_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http_input_changes_nothing() {
    let env = Env::start(Options::default()).await;
    let peers = env.connect_peers(1).await;
    let before = env.settle_started(&peers[0]).await;
    // Over the body limit (16 MiB): refused before it is read whole.
    let huge = format!("[{}]", " ".repeat(17 << 20));

    let bad = [
        ("/", "{not json"),
        ("/", "{\"a\": 1}"),
        (
            "/",
            r#"[{"Node": {"Node": "n", "Address": "127.0.0.1"},
                 "Service": {"ID": "not-a-key", "Service": "ios", "Port": 0},
                 "Checks": [{"Node": "n", "CheckID": "service:x", "Name": "x",
                             "Status": "critical", "ServiceID": "x", "ServiceName": "ios"}]}]"#,
        ),
        (
            "/watcher/bq",
            r#"[{"Key": "bq/999", "Value": "***", "Flags": 0}]"#,
        ),
        ("/watcher/bq", "null null"),
        (
            "/watcher/processes",
            r#"{"Key": "processes/zz", "Value": null}"#,
        ),
        ("/no/such/route", "{}"),
    ];
    for (path, body) in bad.into_iter().chain([("/watcher/bq", huge.as_str())]) {
        let (status, answer) = env.http_post(path, body).await.unwrap();
        assert!(
            (400..500).contains(&status),
            "POST {path} {body:?}: {status} {answer}"
        );
    }

    // Nothing changed. (Consul's own watches may POST meanwhile: updates
    // are not counted here.)
    env.assert_unchanged_since(&before, &peers[0]).await;
    env.assert_no_contract_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_entrypoint_answer_is_counted() {
    let env = Env::start(Options::default()).await;
    let _peers = env.connect_peers(3).await;
    let m = env.metrics().await;
    // Each answer counted once, under one outcome: the outcomes add up to
    // the requests, none waits.
    assert_eq!(m.entrypoint_answers(), 4, "three peers and hax itself");
    assert_eq!(
        m.n("hax_entrypoint_requests_total{outcome=\"accepted\"}"),
        4
    );
    assert_eq!(m.n("hax_entrypoint_requests_pending"), 0);
}

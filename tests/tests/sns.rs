//! SNS repair and rebalance through hax's HTTP API, against the emulator's
//! model of Motr (a pool over the sample's ioservices, shaped through
//! hax-sim's control connection): the answers are Motr's (done, busy,
//! unknown pool, not ready, failed, timed out), status follows the copy
//! machine, rebalance status is rebalance's, and bad requests get a 4xx.
//! As on real Motr, a control operation is done (200) from any state of the
//! machine and what it did shows in the status; busy (409) comes from a
//! call Motr refuses, here an injected `-EBUSY`.

use std::time::Duration;

use hax_consul::schema::QueueMessage;
use hax_core::{Fid, PverState};
use hax_e2e::{ios_fid, json, pool_fid, pver_fid, stats_options, wait_for, Env, T};
use hax_sim::{ClientOp, PoolDef, PverDef, SimControl};
use serde_json::Value;

/// `m0_cm_status` numbers.
const IDLE: i64 = 1;
const STARTED: i64 = 2;
const FAILED: i64 = 3;
const PAUSED: i64 = 4;

const EBUSY: i32 = -16;
const EIO: i32 = -5;
const ETIMEDOUT: i32 = -110;

async fn define_pool(ctl: &SimControl, ioservices: usize) {
    ctl.define_pool(PoolDef {
        fid: pool_fid(),
        ioservices: (0..ioservices).map(ios_fid).collect(),
        pvers: vec![PverDef {
            fid: pver_fid(0),
            state: PverState::Healthy,
            data_units: 4,
            parity_units: 2,
            pool_width: 8,
            unit_size: 1 << 20,
        }],
    })
    .await
    .expect("pool defined");
}

async fn op(env: &Env, name: &str, pool: Fid) -> (u16, Value) {
    let (status, body) = env
        .http_post(
            &format!("/api/v1/sns/{name}"),
            &format!(r#"{{"fid": "{pool}"}}"#),
        )
        .await
        .expect("POST");
    (status, json(&body))
}

/// The status answer as (ioservice fid, state, progress).
async fn status(env: &Env, kind: &str, pool: Fid) -> (u16, Value) {
    let (status, body) = env
        .http_get(&format!("/api/v1/sns/{kind}-status?pool_fid={pool}"))
        .await
        .expect("GET");
    (status, json(&body))
}

fn entries(v: &Value) -> Vec<(String, i64, i64)> {
    v.as_array()
        .unwrap_or_else(|| panic!("a list: {v}"))
        .iter()
        .map(|e| {
            (
                e["fid"].as_str().expect("fid").to_owned(),
                e["state"].as_i64().expect("state"),
                e["progress"].as_i64().expect("progress"),
            )
        })
        .collect()
}

/// The one state every ioservice of the pool reports.
async fn state_of(env: &Env, kind: &str) -> (i64, i64) {
    let (code, v) = status(env, kind, pool_fid()).await;
    assert_eq!(code, 200, "{kind} status: {v}");
    let e = entries(&v);
    assert_eq!(e.len(), 3, "one entry per ioservice: {v}");
    assert!(
        e.iter().all(|x| (x.1, x.2) == (e[0].1, e[0].2)),
        "the pool's state on each: {v}"
    );
    (e[0].1, e[0].2)
}

async fn post(env: &Env, path: &str, body: String) -> (u16, Value) {
    let (code, body) = env.http_post(path, &body).await.expect("POST");
    (code, json(&body))
}

fn assert_refused(what: &str, got: (u16, Value), code: u16, kind: &str) {
    assert_eq!(got.0, code, "{what}: {}", got.1);
    assert_eq!(got.1["status_code"], code, "{what}: {}", got.1);
    assert_eq!(got.1["error_type"], kind, "{what}: {}", got.1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_runs_pauses_resumes_and_rebalance_aborts() {
    let env = Env::start(stats_options(0, 0)).await;
    let ctl = env.control().await;
    define_pool(&ctl, 3).await;
    // Runs do not advance until the test says so.
    ctl.set_sns_rate(0).await.expect("rate");
    let _peers = env.ioservices_up(3).await;
    env.wait_rconfc().await;

    let (code, v) = status(&env, "repair", pool_fid()).await;
    assert_eq!(code, 200, "{v}");
    let e = entries(&v);
    assert_eq!(
        e.iter().map(|x| x.0.clone()).collect::<Vec<_>>(),
        (0..3).map(|i| ios_fid(i).to_string()).collect::<Vec<_>>(),
        "one entry per ioservice of the pool, in order"
    );
    assert_ne!(state_of(&env, "repair").await.0, STARTED);

    let (code, v) = op(&env, "repair-start", pool_fid()).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["result"], "ok");
    assert_eq!(v["fid"], pool_fid().to_string());
    assert_eq!(state_of(&env, "repair").await, (STARTED, 0));
    assert_eq!(op(&env, "repair-start", pool_fid()).await.0, 200, "again");
    assert_eq!(state_of(&env, "repair").await, (STARTED, 0));
    // Rebalance has a machine of its own, and its own status.
    assert_ne!(state_of(&env, "rebalance").await.0, STARTED);

    assert_eq!(op(&env, "repair-pause", pool_fid()).await.0, 200);
    assert_eq!(state_of(&env, "repair").await.0, PAUSED);
    assert_eq!(op(&env, "repair-pause", pool_fid()).await.0, 200, "again");
    assert_eq!(op(&env, "repair-start", pool_fid()).await.0, 200);
    assert_eq!(state_of(&env, "repair").await.0, PAUSED, "start keeps it");
    assert_eq!(op(&env, "repair-resume", pool_fid()).await.0, 200);
    assert_eq!(state_of(&env, "repair").await.0, STARTED);
    assert_eq!(op(&env, "repair-resume", pool_fid()).await.0, 200, "again");
    assert_eq!(state_of(&env, "repair").await.0, STARTED);
    // Busy is Motr refusing the call; the machine stays as it was.
    ctl.fail_next(ClientOp::Sns, 1, EBUSY).await.expect("fault");
    assert_refused(
        "refused by Motr",
        op(&env, "repair-pause", pool_fid()).await,
        409,
        "busy",
    );
    assert_eq!(state_of(&env, "repair").await.0, STARTED);

    // Progress with time, up to done (idle again).
    ctl.set_sns_rate(40).await.expect("rate");
    let seen = std::cell::RefCell::new(Vec::new());
    wait_for("the repair to finish", T, || {
        let (seen, env) = (&seen, &env);
        async move {
            let (state, progress) = state_of(env, "repair").await;
            seen.borrow_mut().push((state, progress));
            (state == IDLE).then_some(())
        }
    })
    .await;
    let seen = seen.into_inner();
    let running: Vec<i64> = seen
        .iter()
        .filter(|(s, _)| *s == STARTED)
        .map(|(_, p)| *p)
        .collect();
    assert!(
        running.windows(2).all(|w| w[0] <= w[1]),
        "progress never goes back: {seen:?}"
    );
    assert!(
        running.iter().any(|p| *p > 0 && *p < 100),
        "progress seen between 0 and 100: {seen:?}"
    );
    // Pausing an idle machine pauses it; stopping it makes it idle again.
    assert_eq!(op(&env, "repair-pause", pool_fid()).await.0, 200);
    assert_eq!(state_of(&env, "repair").await, (PAUSED, 0));
    assert_eq!(op(&env, "repair-stop", pool_fid()).await.0, 200);
    assert_eq!(state_of(&env, "repair").await.0, IDLE);

    // Rebalance: start, then abort (stop) before it is done.
    ctl.set_sns_rate(0).await.expect("rate");
    assert_eq!(op(&env, "rebalance-start", pool_fid()).await.0, 200);
    assert_eq!(state_of(&env, "rebalance").await.0, STARTED);
    assert_eq!(state_of(&env, "repair").await.0, IDLE);
    assert_eq!(op(&env, "rebalance-stop", pool_fid()).await.0, 200);
    assert_eq!(state_of(&env, "rebalance").await.0, IDLE);

    // A machine that fails shows it, and can be started again.
    ctl.fail_sns(pool_fid(), hax_core::SnsKind::Repair)
        .await
        .expect("fail");
    assert_eq!(state_of(&env, "repair").await.0, FAILED);
    assert_eq!(op(&env, "repair-stop", pool_fid()).await.0, 200);
    assert_eq!(state_of(&env, "repair").await.0, FAILED, "stop keeps it");
    assert_eq!(op(&env, "repair-start", pool_fid()).await.0, 200);
    assert_eq!(state_of(&env, "repair").await.0, STARTED);

    // Every operation was answered, and counted, with its own outcome.
    let m = env.metrics().await;
    let answered = |code: u16| {
        m.n(&format!(
            "hax_api_requests_total{{route=\"/api/v1/sns/{{operation}}\",code=\"{code}\"}}"
        ))
    };
    assert_eq!((answered(200), answered(409)), (13, 1));
    env.assert_no_contract_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_and_motr_failures() {
    let env = Env::start(stats_options(0, 0)).await;
    let ctl = env.control().await;
    define_pool(&ctl, 3).await;

    // rconfc waits for the ioservices: not ready yet.
    assert_refused(
        "before rconfc",
        op(&env, "repair-start", pool_fid()).await,
        503,
        "not_ready",
    );
    assert_refused(
        "status before rconfc",
        status(&env, "repair", pool_fid()).await,
        503,
        "not_ready",
    );
    let _peers = env.ioservices_up(3).await;
    env.wait_rconfc().await;

    let pool = &format!(r#"{{"fid": "{}"}}"#, pool_fid());
    let post = |path: &'static str, body: &str| post(&env, path, body.to_owned());
    assert_refused(
        "unknown operation",
        post("/api/v1/sns/repair-begin", pool).await,
        404,
        "unknown_operation",
    );
    assert_refused(
        "disk-attach",
        post("/api/v1/sns/disk-attach", pool).await,
        501,
        "unsupported",
    );
    assert_refused(
        "not JSON",
        post("/api/v1/sns/repair-start", "fid=0x6f").await,
        400,
        "bad_json",
    );
    assert_refused(
        "not an object",
        post("/api/v1/sns/repair-start", "[]").await,
        400,
        "bad_request",
    );
    assert_refused(
        "no fid",
        post("/api/v1/sns/repair-start", r#"{"pool": "x"}"#).await,
        400,
        "bad_request",
    );
    assert_refused(
        "malformed fid",
        post("/api/v1/sns/repair-start", r#"{"fid": "0x6f:"}"#).await,
        400,
        "bad_request",
    );
    assert_refused(
        "not a pool fid",
        post(
            "/api/v1/sns/repair-start",
            r#"{"fid": "0x7200000000000001:0x14"}"#,
        )
        .await,
        400,
        "bad_request",
    );
    let stranger = Fid::typed(hax_core::FidType::Pool, 1, 77);
    assert_refused(
        "unknown pool",
        op(&env, "repair-start", stranger).await,
        404,
        "not_found",
    );
    assert_refused(
        "status of an unknown pool",
        status(&env, "rebalance", stranger).await,
        404,
        "not_found",
    );
    let (code, body) = env
        .http_get("/api/v1/sns/repair-status")
        .await
        .expect("GET");
    assert_refused(
        "status without a pool",
        (code, json(&body)),
        400,
        "bad_request",
    );
    let (code, body) = env
        .http_get("/api/v1/sns/repair-status?pool_fid=pool-1")
        .await
        .expect("GET");
    assert_refused(
        "status of a bad fid",
        (code, json(&body)),
        400,
        "bad_request",
    );
    // Nothing of that started anything.
    assert_ne!(state_of(&env, "repair").await.0, STARTED);

    // Extra keys are ignored, as the original did.
    let (code, v) = env
        .http_post(
            "/api/v1/sns/repair-start",
            &format!(r#"{{"fid": "{}", "note": "extra"}}"#, pool_fid()),
        )
        .await
        .expect("POST");
    assert_eq!(code, 200, "{v}");

    // Motr's failures: an error is a 502, a Motr timeout a 504; the next
    // call works again.
    ctl.fail_next(ClientOp::Sns, 1, EIO).await.expect("fault");
    assert_refused(
        "Motr failure",
        op(&env, "repair-pause", pool_fid()).await,
        502,
        "motr",
    );
    ctl.fail_next(ClientOp::SnsStatus, 1, ETIMEDOUT)
        .await
        .expect("fault");
    assert_refused(
        "Motr timeout",
        status(&env, "repair", pool_fid()).await,
        504,
        "timeout",
    );
    assert_eq!(op(&env, "repair-pause", pool_fid()).await.0, 200);
    assert_eq!(state_of(&env, "repair").await.0, PAUSED);

    // A slow Motr call does not hold up the daemon's other routes.
    ctl.delay_next(ClientOp::SnsStatus, 1, Duration::from_secs(2))
        .await
        .expect("delay");
    let slow = status(&env, "repair", pool_fid());
    let other = async {
        let started = std::time::Instant::now();
        assert!(env.healthz().await);
        started.elapsed()
    };
    let ((code, _), quick) = tokio::join!(slow, other);
    assert_eq!(code, 200);
    assert!(quick < Duration::from_secs(2), "healthz took {quick:?}");
    env.assert_no_contract_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_changing_requests_need_the_token() {
    // The token file goes where hax's own files are.
    let dir = tempfile::tempdir().expect("dir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "open-sesame\n").expect("token file");
    let mut opts = stats_options(0, 0);
    opts.hax_args
        .extend(["--http-token-file".into(), token_file.display().to_string()]);
    let env = Env::start(opts).await;
    let ctl = env.control().await;
    define_pool(&ctl, 3).await;
    let _peers = env.ioservices_up(3).await;
    env.wait_rconfc().await;

    let body = format!(r#"{{"fid": "{}"}}"#, pool_fid());
    let (code, v) = env
        .http_post("/api/v1/sns/repair-start", &body)
        .await
        .expect("POST");
    assert_refused("no token", (code, json(&v)), 401, "auth");
    let (code, v) = env
        .http_post_auth("/api/v1/sns/repair-start", &body, "open-sesam")
        .await
        .expect("POST");
    assert_refused("wrong token", (code, json(&v)), 401, "auth");
    let (code, v) = env
        .http_post_auth(
            "/v1/events/subscribe",
            r#"{"node": "health_message"}"#,
            "nope",
        )
        .await
        .expect("POST");
    assert_refused(
        "subscription without the token",
        (code, json(&v)),
        401,
        "auth",
    );
    assert_ne!(state_of(&env, "repair").await.0, STARTED);

    let (code, v) = env
        .http_post_auth("/api/v1/sns/repair-start", &body, "open-sesame")
        .await
        .expect("POST");
    assert_eq!(code, 200, "{v}");
    // Reading needs no token.
    assert_eq!(state_of(&env, "repair").await.0, STARTED);
    let (code, _) = env.http_get("/v1/cluster/status").await.expect("GET");
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_operations_are_carried_out() {
    let env = Env::start(stats_options(0, 0)).await;
    let ctl = env.control().await;
    define_pool(&ctl, 3).await;
    ctl.set_sns_rate(0).await.expect("rate");
    let sns_op = |name: &str| {
        QueueMessage::new(
            "2026-01-01 00:00:00.000000",
            "SNS_OP",
            serde_json::json!({"op_name": name, "fid": pool_fid().to_string()}),
        )
    };
    // Queued before rconfc runs: carried out once it does.
    env.publish_bq(&sns_op("repair-start")).await;
    env.wait_bq_consumed().await;
    let _peers = env.ioservices_up(3).await;
    env.wait_rconfc().await;
    wait_for("the queued repair to run", T, || async {
        (state_of(&env, "repair").await.0 == STARTED).then_some(())
    })
    .await;
    // Then in order: an operation Motr refuses (logged), one that is not
    // supported (skipped), and a pause.
    ctl.fail_next(ClientOp::Sns, 1, EBUSY).await.expect("fault");
    for name in ["rebalance-start", "disk-detach", "repair-pause"] {
        env.publish_bq(&sns_op(name)).await;
    }
    env.wait_bq_consumed().await;
    wait_for("the queued pause", T, || async {
        (state_of(&env, "repair").await.0 == PAUSED).then_some(())
    })
    .await;
    assert_eq!(state_of(&env, "rebalance").await.0, IDLE);
    env.assert_no_contract_violations();
}

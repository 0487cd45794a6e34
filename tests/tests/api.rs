//! The read-only and bookkeeping routes of hax's API: the cluster status
//! (hare-status's JSON, computed by hax) and event subscriptions.

use hax_consul::schema::{keys, FsStats, FsStatsRecord, PverHealth};
use hax_core::ProcessEventKind;
use hax_e2e::{ft, ios_fid, json, pool_fid, stats_options, wait_for, Env, T};
use serde_json::{json, Value};

fn svc<'a>(status: &'a Value, fid: &str) -> &'a Value {
    status["nodes"][0]["svcs"]
        .as_array()
        .expect("svcs")
        .iter()
        .find(|s| s["fid"] == fid)
        .unwrap_or_else(|| panic!("{fid} missing from {status}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_is_computed_by_hax() {
    let env = Env::start(stats_options(0, 0)).await;
    env.client
        .kv_put(&keys::conf_pool(ft(pool_fid())), "tier1-nvme")
        .await
        .expect("pool");
    // ioservices 0 and 1 run, 1 then stops; 2 never came.
    let peers = env.ioservices_up(2).await;
    let tag = peers[1]
        .send_process_event(ProcessEventKind::Stopped)
        .expect("event");
    peers[1].wait_confirmed(tag, T).await.expect("confirmed");

    let status = wait_for("ioservice 1 offline in the status", T, || async {
        let (code, body) = env.http_get("/v1/cluster/status").await.expect("GET");
        assert_eq!(code, 200, "{body}");
        let v = json(&body);
        (svc(&v, &ios_fid(1).to_string())["status"] == "offline").then_some(body)
    })
    .await;
    // The stopped process's FAILED is held back from hax's own link while
    // its link is up.
    let m = env.metrics().await;
    assert_eq!(m.n("hax_held_failures_total{end=\"held\"}"), 1);
    // hare-status's keys, in its order.
    let at = |k: &str| {
        status
            .find(&format!("\"{k}\":"))
            .unwrap_or_else(|| panic!("{k} missing: {status}"))
    };
    assert!(
        at("bytecount") < at("pools")
            && at("pools") < at("profiles")
            && at("profiles") < at("filesystem")
            && at("filesystem") < at("nodes"),
        "{status}"
    );
    let v = json(&status);
    assert_eq!(v["bytecount"], json!({}));
    assert_eq!(
        v["pools"],
        json!([{"fid": pool_fid().to_string(), "name": "tier1-nvme"}])
    );
    let profiles = v["profiles"].as_array().expect("profiles");
    assert_eq!(profiles.len(), 1);
    assert_eq!(profiles[0]["name"], "Profile_the_pool");
    assert_eq!(profiles[0]["pools"], json!([pool_fid().to_string()]));
    assert_eq!(v["filesystem"], json!({"stats": {}}));
    let nodes = v["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["name"], env.sample.node);
    let svcs = nodes[0]["svcs"].as_array().expect("svcs");
    assert_eq!(svcs.len(), 5, "hax, confd, three ioservices: {v}");
    let keys_in_order: Vec<u64> = svcs
        .iter()
        .map(|s| {
            let fid: hax_core::Fid = s["fid"].as_str().expect("fid").parse().expect("a fid");
            fid.key
        })
        .collect();
    assert!(keys_in_order.windows(2).all(|w| w[0] < w[1]), "{v}");
    let hax = svc(&v, &env.sample.hax.to_string());
    assert_eq!(
        (&hax["name"], &hax["ep"]),
        (&json!("hax"), &json!(env.hax_endpoint))
    );
    let confd = svc(&v, &env.sample.confd.0.to_string());
    assert_eq!(
        (&confd["name"], &confd["ep"], &confd["status"]),
        (
            &json!("confd"),
            &json!(env.sample.confd.1),
            &json!("unknown")
        )
    );
    for (i, expected) in [(0, "started"), (1, "offline"), (2, "unknown")] {
        let s = svc(&v, &ios_fid(i).to_string());
        assert_eq!(s["name"], "ioservice");
        assert_eq!(s["ep"], env.sample.ioservices[i].1);
        assert_eq!(s["status"], expected, "ioservice {i}: {v}");
    }

    // The statistics keys, as they appear.
    let record = FsStatsRecord {
        stats: FsStats {
            fs_free_seg: 1,
            fs_total_seg: 2,
            fs_free_disk: 3,
            fs_avail_disk: 4,
            fs_total_disk: 5,
            fs_svc_total: 3,
            fs_svc_replied: 2,
        },
        timestamp: 1_700_000_000.25,
        date: "2023-11-14T22:13:20.250000".into(),
    };
    env.kv.put_fs_stats(&record).await.expect("stats");
    env.kv
        .put_bytecount_totals(&PverHealth::ALL.map(|h| (h, 7)))
        .await
        .expect("totals");
    let (code, body) = env.http_get("/v1/cluster/status").await.expect("GET");
    assert_eq!(code, 200);
    let v = json(&body);
    assert_eq!(
        v["filesystem"],
        serde_json::to_value(&record).expect("record")
    );
    assert_eq!(
        v["bytecount"],
        json!({"critical": 7, "damaged": 7, "degraded": 7, "healthy": 7})
    );
    let (code, body) = env
        .http_get("/v1/cluster/status/bytecount")
        .await
        .expect("GET");
    assert_eq!(
        (code, json(&body)),
        (200, json!({"bytecount": v["bytecount"]}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_subscriptions() {
    let env = Env::start(stats_options(0, 0)).await;
    let key = keys::event_subscription("node").expect("key");
    let stored = || async {
        env.client
            .kv_get(&key)
            .await
            .expect("get")
            .value
            .map(|p| String::from_utf8(p.value).expect("text"))
    };
    let subscribe = r#"{"node": "health_message"}"#;

    for _ in 0..2 {
        let (code, body) = env
            .http_post("/v1/events/subscribe", subscribe)
            .await
            .expect("POST");
        assert_eq!(code, 200, "{body}");
        assert_eq!(
            json(&body),
            json!({"subscriptions": {"node": ["health_message"]}})
        );
    }
    assert_eq!(stored().await.as_deref(), Some(r#"["health_message"]"#));

    for (body, needle) in [
        (r#"{"disk": "health_message"}"#, "invalid resource type"),
        (r#"{"node": "sms"}"#, "invalid interface type"),
        (r#"{"node": ["health_message"]}"#, "must be a string"),
        (r#"{}"#, "no subscription"),
        ("node", "expected"),
    ] {
        for route in ["/v1/events/subscribe", "/v1/events/unsubscribe"] {
            let (code, answer) = env.http_post(route, body).await.expect("POST");
            assert_eq!(code, 400, "{route} {body}: {answer}");
            let v = json(&answer);
            assert_eq!(v["status_code"], 400);
            assert!(
                v["error_message"]
                    .as_str()
                    .is_some_and(|m| m.contains(needle)),
                "{route} {body}: {answer}"
            );
        }
    }
    // A body over the API's 64 KiB.
    let big = format!(r#"{{"node": "{}"}}"#, "x".repeat(100 * 1024));
    let (code, answer) = env
        .http_post("/v1/events/subscribe", &big)
        .await
        .expect("POST");
    assert_eq!(code, 413, "{answer}");
    assert_eq!(json(&answer)["error_type"], "body");
    assert_eq!(stored().await.as_deref(), Some(r#"["health_message"]"#));

    let (code, body) = env
        .http_post("/v1/events/unsubscribe", subscribe)
        .await
        .expect("POST");
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body), json!({"subscriptions": {"node": []}}));
    assert_eq!(stored().await.as_deref(), Some("[]"));
    let m = env.metrics().await;
    assert_eq!(
        m.n("hax_api_requests_total{route=\"/v1/events/subscribe\",code=\"400\"}"),
        5
    );
}

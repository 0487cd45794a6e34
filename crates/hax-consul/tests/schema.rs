//! The typed KV schema against a real Consul agent, on a small configuration
//! tree laid out as hare's cfgen writes it.

use std::time::Duration;

use hax_consul::schema::{
    keys, ByteCount, ConfKey, ConfState, ConfValue, FidText, FsStats, FsStatsRecord, HaxKv,
    LeaderValue, NcState, ObjState, ProcessState, ProcessStatus, ProcessType, PverHealth,
    SchemaError,
};
use hax_consul::session::SessionRequest;
use hax_consul::ConsulClient;
use hax_testkit::dev_agent::DevAgent;

const NODE: FidText = FidText::new(0x6e00_0000_0000_0001, 0x3);
const PROC: FidText = FidText::new(0x7200_0000_0000_0001, 0x6);
const IOS: FidText = FidText::new(0x7300_0000_0000_0001, 0x8);
const SDEV: FidText = FidText::new(0x6400_0000_0000_0001, 0x2c);
const DRIVE: FidText = FidText::new(0x6b00_0000_0000_0001, 0x2d);

async fn load_tree(c: &ConsulClient) {
    let site = "m0conf/sites/0x5300000000000001:0x1/racks/0x6100000000000001:0x2/encls/0x6500000000000001:0x21";
    let entries = [
        (
            format!("m0conf/nodes/{NODE}"),
            r#"{"name": "srvnode-1", "state": "M0_NC_UNKNOWN"}"#.to_owned(),
        ),
        (
            format!("m0conf/nodes/{NODE}/processes/{PROC}"),
            r#"{"name": "m0_server", "state": "M0_NC_UNKNOWN"}"#.to_owned(),
        ),
        (
            format!("m0conf/nodes/{NODE}/processes/{PROC}/services/{IOS}"),
            r#"{"name": "ios", "state": "M0_NC_UNKNOWN"}"#.to_owned(),
        ),
        (
            format!("m0conf/nodes/{NODE}/processes/{PROC}/services/{IOS}/sdevs/{SDEV}"),
            r#"{"path": "/dev/vdf", "state": "M0_NC_UNKNOWN"}"#.to_owned(),
        ),
        (
            "m0conf/nodes/srvnode-1/processes/6/services/ios".to_owned(),
            "8".to_owned(),
        ),
        (
            "m0conf/nodes/srvnode-1/processes/6/services/rms".to_owned(),
            "9".to_owned(),
        ),
        (
            "m0conf/nodes/srvnode-1/processes/6/endpoint".to_owned(),
            "inet:tcp:10.0.0.1@3001".to_owned(),
        ),
        (
            site.to_owned(),
            format!(r#"{{"node": "{NODE}", "state": "M0_NC_UNKNOWN"}}"#),
        ),
        (
            format!("{site}/ctrls/0x6300000000000001:0x22"),
            r#"{"state": "M0_NC_UNKNOWN"}"#.to_owned(),
        ),
        (
            format!("{site}/ctrls/0x6300000000000001:0x22/drives/{DRIVE}"),
            format!(r#"{{"sdev": "{SDEV}", "state": "M0_NC_UNKNOWN"}}"#),
        ),
        (
            "m0conf/profiles/0x7000000000000001:0x1".to_owned(),
            r#"{"name": "Profile_the_pool", "pools": ["0x6f00000000000001:0x9"]}"#.to_owned(),
        ),
        ("m0conf/something/new".to_owned(), "x".to_owned()),
    ];
    for (k, v) in entries {
        c.kv_put(&k, v).await.expect("load tree");
    }
}

#[tokio::test]
async fn conf_tree_is_parsed_and_states_rewritten_in_place() {
    let agent = DevAgent::start().await.expect("agent");
    let c = agent.client().expect("client");
    load_tree(&c).await;
    let kv = HaxKv::new(c.clone());

    let tree = kv.conf_tree().await.expect("tree");
    assert_eq!(tree.unrecognised, ["m0conf/something/new"]);
    assert_eq!(tree.node_fid_by_name("srvnode-1"), Some(NODE));
    assert_eq!(tree.node_name(NODE), Some("srvnode-1"));
    assert_eq!(tree.node_of_process(PROC), Some(NODE));
    assert_eq!(tree.processes_of(NODE).len(), 1);
    let mut services = tree.services_of_process_key(6);
    services.sort();
    assert_eq!(services, [("ios", 8), ("rms", 9)]);
    assert_eq!(
        tree.endpoint_of_process_key(6),
        Some("inet:tcp:10.0.0.1@3001")
    );
    assert_eq!(
        tree.sdevs_of_service(IOS)[0].1.path.as_deref(),
        Some("/dev/vdf")
    );
    assert_eq!(tree.drive_of_sdev(SDEV).map(|(_, d)| d), Some(DRIVE));
    assert_eq!(tree.sdev_of_drive(DRIVE), Some(SDEV));
    assert_eq!(tree.profiles()[0].1.pools.as_ref().map(Vec::len), Some(1));

    // Rewriting a state keeps the other fields and Python's formatting.
    let sdev_key = ConfKey::Sdev {
        node: NODE,
        process: PROC,
        service: IOS,
        sdev: SDEV,
    };
    assert!(kv
        .set_conf_state(&sdev_key, ConfState::Word(ObjState::Failed), &[])
        .await
        .expect("write"));
    let raw = c
        .kv_get(&sdev_key.to_key())
        .await
        .expect("get")
        .value
        .expect("present");
    assert_eq!(
        raw.value_str().expect("utf8"),
        r#"{"path": "/dev/vdf", "state": "failed"}"#
    );
    // A failed device is not overwritten by a process-driven update.
    assert!(!kv
        .set_conf_state(
            &sdev_key,
            ConfState::Word(ObjState::Online),
            &[
                ConfState::Word(ObjState::Failed),
                ConfState::Word(ObjState::Repairing)
            ]
        )
        .await
        .expect("kept"));
    let entry = kv
        .conf_entry(&sdev_key)
        .await
        .expect("entry")
        .expect("present");
    match entry.value {
        ConfValue::Object(o) => {
            assert_eq!(o.obj_state("k").expect("state"), Some(ObjState::Failed))
        }
        other => panic!("{other:?}"),
    }
    let node_key = ConfKey::Node { node: NODE };
    assert!(kv
        .set_conf_state(&node_key, ConfState::Nc(NcState::Transient), &[])
        .await
        .expect("node state"));
    let raw = c
        .kv_get(&node_key.to_key())
        .await
        .expect("get")
        .value
        .expect("present");
    assert_eq!(
        raw.value_str().expect("utf8"),
        r#"{"name": "srvnode-1", "state": "M0_NC_TRANSIENT"}"#
    );
    // Wrong vocabulary for the key, and missing keys.
    assert!(matches!(
        kv.set_conf_state(&node_key, ConfState::Word(ObjState::Online), &[])
            .await,
        Err(SchemaError::BadKey { .. })
    ));
    let absent = ConfKey::Node {
        node: FidText::new(0x6e00_0000_0000_0001, 0x99),
    };
    assert!(!kv
        .set_conf_state(&absent, ConfState::Nc(NcState::Online), &[])
        .await
        .expect("not created"));

    // A malformed value of a known key is an error naming it.
    let bad = format!("m0conf/nodes/{NODE}/processes/{PROC}");
    c.kv_put(&bad, "{not json").await.expect("put");
    let err = kv.conf_tree().await.expect_err("malformed");
    assert!(err.to_string().contains(&bad), "{err}");
}

#[tokio::test]
async fn process_states_restarts_leader_and_stats() {
    let agent = DevAgent::start().await.expect("agent");
    let c = agent.client().expect("client");
    let kv = HaxKv::new(c.clone());

    assert_eq!(kv.process_status(PROC).await.expect("absent"), None);
    let started = ProcessStatus {
        state: ProcessState::Started,
        kind: ProcessType::M0d,
    };
    kv.put_process_status(PROC, started).await.expect("put");
    let raw = c
        .kv_get(&keys::process(PROC))
        .await
        .expect("get")
        .value
        .expect("present");
    assert_eq!(
        raw.value_str().expect("utf8"),
        r#"{"state": "M0_CONF_HA_PROCESS_STARTED", "type": "M0_CONF_HA_PROCESS_M0D"}"#
    );
    assert_eq!(kv.process_status(PROC).await.expect("get"), Some(started));
    let all = kv.process_statuses().await.expect("all");
    assert_eq!(all.get(&PROC), Some(&started));
    c.kv_put(
        &keys::process(FidText::new(0x7200_0000_0000_0001, 7)),
        r#"{"state": "NOPE", "type": "M0_CONF_HA_PROCESS_M0D"}"#,
    )
    .await
    .expect("put bad");
    let err = kv.process_statuses().await.expect_err("bad state");
    assert!(
        err.to_string().contains("processes/0x7200000000000001:0x7"),
        "{err}"
    );

    kv.put_node_process_status("srvnode-2", PROC, started)
        .await
        .expect("put");
    assert_eq!(
        kv.node_process_status("srvnode-2", PROC)
            .await
            .expect("get"),
        Some(started)
    );
    assert!(matches!(
        kv.node_process_status("a/b", PROC).await,
        Err(SchemaError::BadSegment { .. })
    ));

    assert_eq!(
        kv.process_restarts("srvnode-1", PROC)
            .await
            .expect("absent"),
        0
    );
    kv.put_process_restarts("srvnode-1", PROC, 2)
        .await
        .expect("put");
    let raw = c
        .kv_get(&keys::process_restarts("srvnode-1", PROC).expect("key"))
        .await
        .expect("get")
        .value
        .expect("present");
    assert_eq!(raw.value, br#""2""#);
    assert_eq!(
        kv.process_restarts("srvnode-1", PROC).await.expect("get"),
        2
    );

    // Leader: absent, then locked by a session with the node name.
    assert_eq!(kv.leader().await.expect("absent"), None);
    let session = c
        .session_create(&SessionRequest {
            lock_delay: Some(Duration::ZERO),
            ..SessionRequest::default()
        })
        .await
        .expect("session");
    assert!(c
        .kv_acquire(keys::LEADER, "srvnode-1", &session)
        .await
        .expect("acquire"));
    let leader = kv.leader().await.expect("leader").expect("present");
    assert_eq!(leader.value, LeaderValue::Node("srvnode-1".into()));
    assert_eq!(leader.session.as_deref(), Some(session.as_str()));
    c.kv_put(keys::LEADER, "elect2805").await.expect("put");
    assert!(matches!(
        kv.leader().await.expect("leader").expect("present").value,
        LeaderValue::ElectionPlaceholder(_)
    ));

    kv.put_consul_node("host-1", "host-1:abcd1234")
        .await
        .expect("put");
    assert_eq!(
        kv.consul_node_of("host-1").await.expect("get").as_deref(),
        Some("host-1:abcd1234")
    );

    let record = FsStatsRecord {
        stats: FsStats {
            fs_free_seg: 1,
            fs_total_seg: 2,
            fs_free_disk: 3,
            fs_avail_disk: 4,
            fs_total_disk: 5,
            fs_svc_total: 6,
            fs_svc_replied: 6,
        },
        timestamp: 1_637_233_483.5,
        date: "2021-11-18T11:04:43.500000".into(),
    };
    kv.put_fs_stats(&record).await.expect("put");
    assert_eq!(kv.fs_stats().await.expect("get"), Some(record));
    let raw = c
        .kv_get(keys::FS_STATS)
        .await
        .expect("get")
        .value
        .expect("present");
    assert!(raw
        .value_str()
        .expect("utf8")
        .starts_with(r#"{"stats": {"fs_free_seg": 1, "#));

    let pver = FidText::new(0x7600_0000_0000_0001, 0x5);
    kv.put_byte_count(
        IOS,
        pver,
        0,
        ByteCount {
            bc: 100,
            object_cnt: 2,
        },
    )
    .await
    .expect("put");
    assert_eq!(
        kv.byte_counts().await.expect("list"),
        [(
            IOS,
            pver,
            0,
            ByteCount {
                bc: 100,
                object_cnt: 2
            }
        )]
    );
    kv.put_bytecount_total(PverHealth::Degraded, 42)
        .await
        .expect("put");
    assert_eq!(
        kv.bytecount_total(PverHealth::Degraded).await.expect("get"),
        42
    );
    assert_eq!(
        kv.bytecount_total(PverHealth::Healthy)
            .await
            .expect("absent"),
        0
    );

    assert!(kv
        .event_subscriptions("node")
        .await
        .expect("absent")
        .is_empty());
    kv.put_event_subscriptions("node", &["health_message".to_owned()])
        .await
        .expect("put");
    assert_eq!(
        kv.event_subscriptions("node").await.expect("get"),
        ["health_message"]
    );
    let raw = c
        .kv_get("events/subscription/node")
        .await
        .expect("get")
        .value
        .expect("present");
    assert_eq!(raw.value, br#"["health_message"]"#);

    c.kv_put(
        keys::M0_CLIENT_TYPES,
        r#"["m0_client_s3", "m0_client_other"]"#,
    )
    .await
    .expect("put");
    assert_eq!(kv.m0_client_types().await.expect("get").len(), 2);
    c.kv_put(keys::SSL_HAX, r#"{"http_protocol": "https"}"#)
        .await
        .expect("put");
    assert_eq!(
        kv.ssl_config()
            .await
            .expect("get")
            .expect("present")
            .http_protocol,
        "https"
    );
    let base = FidText::new(0x7200_0000_0000_0001, 0x6);
    assert_eq!(kv.full_fid(base).await.expect("absent"), base);
    c.kv_put(&keys::dynamic_fid(base), r#""0x7200000100000001:0x6""#)
        .await
        .expect("put");
    assert_eq!(
        kv.full_fid(base).await.expect("get"),
        FidText::new(0x7200_0001_0000_0001, 0x6)
    );
}

#[test]
fn state_words_are_what_serde_writes_and_read_back() {
    for w in ObjState::ALL {
        assert_eq!(
            serde_json::to_value(w).expect("encoded"),
            serde_json::Value::String(w.as_str().to_owned())
        );
        assert_eq!(w.as_str().parse::<ObjState>(), Ok(w));
        assert_eq!(ConfState::Word(w).as_str(), w.as_str());
    }
    for n in NcState::ALL {
        assert_eq!(
            serde_json::to_value(n).expect("encoded"),
            serde_json::Value::String(n.as_str().to_owned())
        );
        assert_eq!(n.as_str().parse::<NcState>(), Ok(n));
        assert_eq!(ConfState::Nc(n).as_str(), n.as_str());
    }
    assert_eq!("M0_NC_UNKNOWN".parse::<ObjState>(), Ok(ObjState::Unknown));
    assert!("FAILED".parse::<ObjState>().is_err());
    assert!("failed".parse::<NcState>().is_err());
}

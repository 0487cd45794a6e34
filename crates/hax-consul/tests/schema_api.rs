//! The schema accessors of the HTTP API and the statistics against a real
//! Consul agent: pools and profiles as cfgen writes them, batched byte
//! counts, byte count totals, and event subscriptions updated with
//! check-and-set.

use hax_consul::schema::{keys, ByteCount, FidText, HaxKv, PoolRecord, PverHealth};
use hax_testkit::dev_agent::DevAgent;

const POOL: FidText = FidText::new(0x6f00_0000_0000_0001, 0x9);
const POOL2: FidText = FidText::new(0x6f00_0000_0000_0001, 0x10);
const PROFILE: FidText = FidText::new(0x7000_0000_0000_0001, 0x1);

#[tokio::test]
async fn pools_profiles_byte_counts_and_subscriptions() {
    let agent = DevAgent::start().await.expect("agent");
    let c = agent.client().expect("client");
    let kv = HaxKv::new(c.clone());

    // Empty store: empty answers, not errors.
    assert!(kv.pool_records().await.expect("pools").is_empty());
    assert!(kv.profile_records().await.expect("profiles").is_empty());
    assert!(kv.bytecount_entries().await.expect("totals").is_empty());

    // cfgen lists a profile's pools by name, with `null` for the pools it
    // does not name; other writers by fid.
    c.kv_put(&keys::conf_pool(POOL), "tier1-nvme")
        .await
        .expect("put");
    c.kv_put(&keys::conf_pool(POOL2), "tier2-hdd")
        .await
        .expect("put");
    c.kv_put(
        &keys::profile(PROFILE),
        r#"{"name": "default", "pools": ["tier1-nvme", "0x6f00000000000001:0x10", null]}"#,
    )
    .await
    .expect("put");
    assert_eq!(
        kv.pool_records().await.expect("pools"),
        // Consul's order: by key text.
        [
            PoolRecord {
                fid: POOL2,
                name: "tier2-hdd".into()
            },
            PoolRecord {
                fid: POOL,
                name: "tier1-nvme".into()
            },
        ]
    );
    let profiles = kv.profile_records().await.expect("profiles");
    assert_eq!(profiles.len(), 1);
    assert_eq!(
        (profiles[0].fid, profiles[0].name.as_str()),
        (PROFILE, "default")
    );
    assert_eq!(profiles[0].pools, ["tier1-nvme", "0x6f00000000000001:0x10"]);
    // A profile that cannot be read is left out, not the whole list.
    let other = FidText::new(0x7000_0000_0000_0001, 0x2);
    c.kv_put(&keys::profile(other), r#"{"pools": []}"#)
        .await
        .expect("put");
    let profiles = kv.profile_records().await.expect("profiles");
    assert_eq!(
        profiles.iter().map(|p| p.fid).collect::<Vec<_>>(),
        [PROFILE]
    );

    // More byte counts than one transaction holds.
    let ios = FidText::new(0x7200_0000_0000_0001, 0x20);
    let pver = FidText::new(0x7600_0000_0000_0001, 0x6);
    let counts: Vec<_> = (0..150u64)
        .map(|u| {
            (
                ios,
                pver,
                u,
                ByteCount {
                    bc: 4096 * u,
                    object_cnt: u,
                },
            )
        })
        .collect();
    kv.put_byte_counts(&counts).await.expect("byte counts");
    let mut back = kv.byte_counts().await.expect("read back");
    back.sort_by_key(|(_, _, u, _)| *u);
    assert_eq!(back, counts);
    let raw = c
        .kv_get(&keys::ioservice_user(ios, pver, 3))
        .await
        .expect("get")
        .value
        .expect("present");
    assert_eq!(raw.value, br#"{"bc": 12288, "object_cnt": 3}"#);

    kv.put_bytecount_totals(&[(PverHealth::Healthy, 100), (PverHealth::Damaged, 0)])
        .await
        .expect("totals");
    let totals = kv.bytecount_entries().await.expect("totals");
    assert_eq!(totals.len(), 2);
    assert_eq!(totals["healthy"], 100);
    assert_eq!(totals["damaged"], 0);
    assert_eq!(
        kv.bytecount_total(PverHealth::Healthy).await.expect("one"),
        100
    );

    // Subscriptions: added once, removed, nothing written when unchanged.
    let add = |l: &mut Vec<String>| {
        if l.iter().any(|i| i == "health_message") {
            false
        } else {
            l.push("health_message".into());
            true
        }
    };
    assert_eq!(
        kv.update_event_subscriptions("node", add)
            .await
            .expect("subscribe"),
        ["health_message"]
    );
    let key = keys::event_subscription("node").expect("key");
    let index = c
        .kv_get(&key)
        .await
        .expect("get")
        .value
        .expect("present")
        .modify_index;
    assert_eq!(
        kv.update_event_subscriptions("node", add)
            .await
            .expect("again"),
        ["health_message"]
    );
    let after = c.kv_get(&key).await.expect("get").value.expect("present");
    assert_eq!(
        after.modify_index, index,
        "an unchanged list is not rewritten"
    );
    assert_eq!(after.value, br#"["health_message"]"#);
    assert!(kv
        .update_event_subscriptions("node", |l| {
            l.clear();
            true
        })
        .await
        .expect("unsubscribe")
        .is_empty());
    assert!(kv
        .event_subscriptions("node")
        .await
        .expect("read")
        .is_empty());
    assert!(kv.update_event_subscriptions("no/de", add).await.is_err());
}

#[tokio::test]
async fn queue_offsets_of_every_consumer() {
    use hax_consul::schema::QueueKind;
    let agent = DevAgent::start().await.expect("agent");
    let c = agent.client().expect("client");
    let kv = HaxKv::new(c.clone());
    assert!(kv
        .queue_offsets(QueueKind::Broadcast)
        .await
        .expect("offsets")
        .is_empty());
    c.kv_put("bq-delivered/srvnode-1", "17").await.expect("put");
    // Hare's tools sometimes write the JSON string form.
    c.kv_put("bq-delivered/srvnode-2", "\"4\"")
        .await
        .expect("put");
    c.kv_put("bq-delivered/broken", "soon").await.expect("put");
    c.kv_put("eq-delivered/srvnode-1", "3").await.expect("put");
    let offsets = kv
        .queue_offsets(QueueKind::Broadcast)
        .await
        .expect("offsets");
    assert_eq!(
        offsets.into_iter().collect::<Vec<_>>(),
        [("srvnode-1".to_owned(), 17), ("srvnode-2".to_owned(), 4)],
        "numbers only, of the broadcast queue only"
    );
}

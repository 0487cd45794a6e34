//! The crate's examples, run against a real Consul agent, so that an example
//! that compiles but no longer works fails the suite.

use std::time::Duration;

use hax_testkit::dev_agent::DevAgent;

// The example's `main` is not called here.
#[allow(dead_code)]
#[path = "../examples/kv_typed.rs"]
mod kv_typed;

#[tokio::test]
async fn kv_typed_writes_reads_and_watches_the_status() {
    let agent = DevAgent::start().await.expect("agent");
    let client = agent.client().expect("client");
    tokio::time::timeout(Duration::from_secs(30), kv_typed::run(client.clone()))
        .await
        .expect("the example ends")
        .expect("the example succeeds");
    // What it left is what hare's tools read: Python's json.dumps layout.
    let key = format!("processes/{}", kv_typed::PROCESS);
    let pair = client
        .kv_get(&key)
        .await
        .expect("read")
        .value
        .expect("the key exists");
    assert_eq!(key, "processes/0x7200000000000001:0x15");
    assert_eq!(
        pair.value_str().expect("text"),
        r#"{"state": "M0_CONF_HA_PROCESS_STOPPED", "type": "M0_CONF_HA_PROCESS_M0D"}"#
    );
}

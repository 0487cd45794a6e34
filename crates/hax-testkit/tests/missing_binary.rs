//! A clear failure when the Consul binary is missing. Alone in its test
//! binary because it changes the environment.

use hax_testkit::dev_agent::{find_consul_binary, DevAgent, DevAgentError};

#[tokio::test]
async fn a_missing_binary_names_the_install_script() {
    std::env::set_var("HAX_CONSUL_BIN", "/nonexistent/consul");
    let err = find_consul_binary().expect_err("explicit path does not exist");
    assert!(matches!(err, DevAgentError::BinaryNotFound { .. }));
    let msg = DevAgent::start()
        .await
        .expect_err("cannot start")
        .to_string();
    std::env::remove_var("HAX_CONSUL_BIN");
    assert!(msg.contains("scripts/install-consul.sh"), "{msg}");
    assert!(msg.contains("/nonexistent/consul"), "{msg}");
}

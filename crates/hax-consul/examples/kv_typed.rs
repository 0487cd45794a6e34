//! Typed reads, writes and watches of Consul's KV store: the status of a
//! Motr process under `processes/<fid>`, as hax and hare's tools keep it.
//!
//! Against the agent named by `CONSUL_HTTP_ADDR` (default `127.0.0.1:8500`),
//! for instance a dev agent:
//!
//! ```text
//! consul agent -dev &
//! cargo run -p hax-consul --example kv_typed
//! ```
//!
//! `hax-consul/tests/examples.rs` runs this code against a dev agent.

use std::time::Duration;

use hax_consul::client::{ConsulClient, ConsulConfig, Indexed, QueryOptions};
use hax_consul::error::ConsulError;
use hax_consul::schema::{keys, FidText, HaxKv, ProcessState, ProcessStatus, ProcessType};
use hax_consul::watch::{WatchConfig, WatchSource, Watcher};
use tokio_util::sync::CancellationToken;

/// The process whose status the example writes.
pub const PROCESS: FidText = FidText::new(0x7200000000000001, 0x15);

/// `processes/<fid>`, decoded: what a watcher of it keeps.
#[derive(Debug)]
pub struct ProcessSource(pub FidText);

impl WatchSource for ProcessSource {
    type Value = Option<ProcessStatus>;

    async fn fetch(
        &self,
        client: &ConsulClient,
        opts: &QueryOptions,
    ) -> Result<Indexed<Self::Value>, ConsulError> {
        let key = keys::process(self.0);
        let got = client.kv_get_with(&key, opts).await?;
        let value = match got.value {
            None => None,
            Some(pair) => {
                Some(
                    serde_json::from_slice(&pair.value).map_err(|e| ConsulError::Decode {
                        what: format!("value of {key}"),
                        reason: e.to_string(),
                    })?,
                )
            }
        };
        Ok(Indexed {
            value,
            index: got.index,
        })
    }

    fn describe(&self) -> String {
        format!("process status {}", self.0)
    }
}

/// Writes STARTED, reads it back, then watches the key while writing STOPPED.
pub async fn run(client: ConsulClient) -> Result<(), Box<dyn std::error::Error>> {
    let kv = HaxKv::new(client.clone());
    let status = |state| ProcessStatus {
        state,
        kind: ProcessType::M0d,
    };

    kv.put_process_status(PROCESS, status(ProcessState::Started))
        .await?;
    println!("read back: {:?}", kv.process_status(PROCESS).await?);

    let cancel = CancellationToken::new();
    let watcher = Watcher::spawn(
        client,
        ProcessSource(PROCESS),
        WatchConfig::default(),
        &cancel,
    );
    let first = watcher.loaded(Duration::from_secs(10)).await?;
    println!("watching, at index {}: {:?}", first.index, first.value);

    kv.put_process_status(PROCESS, status(ProcessState::Stopped))
        .await?;
    let seen = watcher
        .wait_until(Duration::from_secs(10), |s| {
            *s.value == Some(status(ProcessState::Stopped))
        })
        .await?;
    println!("the watch saw, at index {}: {:?}", seen.index, seen.value);
    watcher.shutdown().await;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let client = ConsulClient::new(ConsulConfig::from_env())?;
    run(client).await
}

//! hax-core's Motr client operations against the emulator.

use hax_core::{
    Callbacks, ClientError, Ctx, EntrypointReply, EntrypointRequest, EntrypointResponder, Fid,
    FidType, Halon, HalonConfig,
};

struct Accept;

impl Callbacks for Accept {
    fn entrypoint_request(&self, cx: &Ctx<'_>, req: EntrypointRequest, reply: EntrypointResponder) {
        let rep = EntrypointReply {
            confds: vec![],
            quorum: 1,
            rm_fid: Fid::typed(FidType::Service, 1, 2),
            rm_endpoint: req.remote_endpoint.clone(),
        };
        if let Err(e) = reply.accept_now(cx, &rep) {
            panic!("entrypoint reply: {e}");
        }
    }
}

fn config() -> HalonConfig {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("free port: {e}"));
    HalonConfig {
        endpoint: format!("inet:tcp:127.0.0.1@{port}"),
        process_fid: Fid::typed(FidType::Process, 1, 3),
        ha_service_fid: Fid::typed(FidType::Service, 1, 4),
        rm_service_fid: Fid::typed(FidType::Service, 1, 5),
        debug_options: "emu-stop-timeout-ms=2000".into(),
        node_uuid: None,
    }
}

fn profile() -> Fid {
    Fid::typed(FidType::Profile, 1, 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rconfc_gates_the_operations_and_stop_ends_them() {
    let mut halon = tokio::task::spawn_blocking(|| Halon::start(config(), Accept))
        .await
        .expect("join")
        .expect("start");
    let client = halon.handle().client();
    assert!(!client.is_ready());
    assert_eq!(client.fs_stats().await, Err(ClientError::NotReady));
    client.start_rconfc(profile()).await.expect("rconfc");
    assert!(client.is_ready());
    assert_eq!(client.start_rconfc(profile()).await, Err(ClientError::Busy));
    let stats = client.fs_stats().await.expect("fs stats");
    assert_eq!(stats.total_disk, 0);
    let halon = tokio::task::spawn_blocking(move || {
        halon.stop().expect("stop");
        halon
    })
    .await
    .expect("join");
    assert!(!client.is_ready());
    assert_eq!(client.fs_stats().await, Err(ClientError::ShuttingDown));
    assert_eq!(
        halon.client().fs_stats().await,
        Err(ClientError::ShuttingDown)
    );
}

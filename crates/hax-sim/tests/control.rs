//! `SimControl` and `m0d-sim --model` against the emulator, checked through
//! hax-core's Motr client.

use std::process::{Command, Stdio};

use emu_support::{free_endpoint, halon_config};
use hax_core::{
    Callbacks, ClientError, Ctx, EntrypointReply, EntrypointRequest, EntrypointResponder, Fid,
    FidType, Halon, PverState,
};
use hax_sim::{ControlError, SimControl};

#[path = "../../hax-core/tests/emu_support/mod.rs"]
mod emu_support;

const SIM: &str = env!("CARGO_BIN_EXE_m0d-sim");

struct Accept;

impl Callbacks for Accept {
    fn entrypoint_request(&self, cx: &Ctx<'_>, req: EntrypointRequest, r: EntrypointResponder) {
        let rep = EntrypointReply {
            confds: vec![],
            quorum: 1,
            rm_fid: Fid::typed(FidType::Service, 1, 5),
            rm_endpoint: req.remote_endpoint.clone(),
        };
        r.accept_now(cx, &rep).expect("entrypoint reply");
    }
}

fn start() -> (Halon<Accept>, String) {
    let ep = free_endpoint();
    (Halon::start(halon_config(&ep), Accept).expect("start"), ep)
}

const MODEL: &str = r#"{
  "pools": [{"fid": "o|1:1", "ioservices": ["s|1:100", "s|1:101"],
             "pvers": [{"fid": "v|1:1", "state": "degraded", "n": 2, "k": 1, "p": 3,
                        "unit_size": 1048576}]}],
  "fs_stats": {"free_seg": 1, "total_seg": 2, "free_disk": 30, "avail_disk": 25,
               "total_disk": 40, "svc_total": 3, "svc_replied": 2},
  "counters": [{"ios": "r|1:20", "counts": [{"pver": "v|1:1", "user_id": 0,
                "byte_count": 8192, "object_count": 2}]}]
}"#;

#[test]
fn m0d_sim_loads_a_model() {
    let (mut halon, ep) = start();
    let dir = std::env::temp_dir().join(format!("hax-sim-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("model.json");
    std::fs::write(&path, MODEL).expect("write model");
    let out = Command::new(SIM)
        .args(["--ha-endpoint", &ep, "--duration", "0", "--model"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .expect("m0d-sim runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("client model loaded: 1 pools, 1 ioservice counters"),
        "{text}"
    );

    let client = halon.client();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        client
            .start_rconfc(Fid::typed(FidType::Profile, 1, 1))
            .await
            .expect("rconfc");
        let p = client
            .pver_status(Fid::typed(FidType::Pver, 1, 1))
            .await
            .expect("pver");
        assert_eq!(
            (
                p.state,
                p.data_units,
                p.parity_units,
                p.pool_width,
                p.unit_size
            ),
            (PverState::Degraded, 2, 1, 3, 1 << 20)
        );
        let s = client.fs_stats().await.expect("fs stats");
        assert_eq!((s.total_disk, s.svc_replied), (40, 2));
        let bc = client
            .proc_counters(Fid::typed(FidType::Process, 1, 20))
            .await
            .expect("counters");
        assert_eq!(bc.counts.len(), 1);
        assert_eq!(bc.counts[0].byte_count, 8192);
        let st = client
            .sns_status(hax_core::SnsKind::Repair, Fid::typed(FidType::Pool, 1, 1))
            .await
            .expect("status");
        assert_eq!(st.len(), 2);
    });
    halon.stop().expect("stop");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_bad_model_is_a_usage_error() {
    let dir = std::env::temp_dir().join(format!("hax-sim-badmodel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("model.json");
    std::fs::write(&path, r#"{"pools": [{"fid": "nonsense"}]}"#).expect("write");
    for arg in [path.clone(), dir.join("missing.json")] {
        let out = Command::new(SIM)
            .args(["--ha-endpoint", "inet:tcp:127.0.0.1@1", "--model"])
            .arg(&arg)
            .stdin(Stdio::null())
            .output()
            .expect("m0d-sim runs");
        assert_eq!(out.status.code(), Some(2), "{}", arg.display());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--model"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_come_back_as_errors() {
    let (mut halon, ep) = tokio::task::spawn_blocking(start).await.expect("join");
    let ctl = SimControl::connect(&ep).await.expect("connect");
    let err = ctl
        .set_pver_state(Fid::typed(FidType::Pver, 1, 9), PverState::Healthy)
        .await;
    assert!(
        matches!(
            err,
            Err(ControlError::Refused {
                op: "PVER_STATE",
                rc: -2
            })
        ),
        "{err:?}"
    );
    assert!(matches!(
        ctl.set_sns_rate(100_001).await,
        Err(ControlError::Refused { rc: -22, .. })
    ));
    ctl.set_sns_rate(0).await.expect("rate");
    let client = halon.client();
    assert_eq!(client.fs_stats().await, Err(ClientError::NotReady));
    tokio::task::spawn_blocking(move || halon.stop().expect("stop"))
        .await
        .expect("join");
    // hax is gone: the connection ends.
    assert!(matches!(ctl.clear().await, Err(ControlError::Io(_))));
}

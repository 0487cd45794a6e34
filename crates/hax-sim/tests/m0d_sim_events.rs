//! `m0d-sim --events` against the emulator: what hax receives on each
//! process's link is what a real m0d sends (docs/motr.md, "a real m0d with
//! hax as its HA"): process STARTING; STARTING and STARTED of the services
//! started before the configuration (fid 0; types 0, SSS, FDMI), then of
//! each configured service; process STARTED. At stop: process STOPPING,
//! SERVICE STOPPING for each configured service in reverse order, no
//! SERVICE STOPPED, process STOPPED.

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use emu_support::{free_endpoint, halon_config};
use hax_core::{
    Callbacks, Ctx, Delivery, EntrypointReply, EntrypointRequest, EntrypointResponder, Fid,
    FidType, HaMsg, HaMsgData, Halon, LinkId, LinkInfo, ServiceType, Tag,
};

#[path = "../../hax-core/tests/emu_support/mod.rs"]
mod emu_support;

const SIM: &str = env!("CARGO_BIN_EXE_m0d-sim");

/// The events each process fid sent, in the order hax received them.
#[derive(Default)]
struct Seen {
    links: HashMap<LinkId, Fid>,
    events: HashMap<Fid, Vec<String>>,
}

struct Cb(Arc<Mutex<Seen>>);

impl Callbacks for Cb {
    fn entrypoint_request(&self, cx: &Ctx<'_>, req: EntrypointRequest, r: EntrypointResponder) {
        let reply = EntrypointReply {
            confds: vec![],
            quorum: 1,
            rm_fid: Fid::typed(FidType::Service, 1, 5),
            rm_endpoint: req.remote_endpoint.clone(),
        };
        r.accept_now(cx, &reply).expect("entrypoint reply");
    }

    fn link_connected(&self, _cx: &Ctx<'_>, _req: hax_core::Uint128, link: &LinkInfo) {
        let mut g = self.0.lock().expect("lock");
        g.links.insert(link.id, link.process_fid);
    }

    fn msg_received(&self, cx: &Ctx<'_>, link: LinkId, _t: Tag, m: HaMsg, d: Delivery) {
        let line = match &m.data {
            HaMsgData::ProcessEvent(e) => Some(format!("process {} {:?}", m.fid, e.event)),
            HaMsgData::ServiceEvent(e) => Some(format!(
                "service {} {:?} {:?}",
                m.fid, e.service_type, e.event
            )),
            _ => None,
        };
        if let Some(line) = line {
            let mut g = self.0.lock().expect("lock");
            let fid = g.links.get(&link).copied().unwrap_or_default();
            g.events.entry(fid).or_default().push(line);
        }
        d.deliver_now(cx).expect("delivered");
    }
}

#[test]
fn events_are_a_real_m0ds() {
    let ep = free_endpoint();
    let seen = Arc::new(Mutex::new(Seen::default()));
    let mut halon = Halon::start(halon_config(&ep), Cb(Arc::clone(&seen))).expect("hax starts");
    let out = Command::new(SIM)
        .args([
            "--ha-endpoint",
            &ep,
            "--count",
            "2",
            "--fid-base",
            "30",
            "--events",
            "--duration",
            "0.2",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("m0d-sim runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    // m0d-sim waits for hax's confirmation of each message before it exits:
    // every event has been received by now.
    let report = halon.stop().expect("stop");
    assert_eq!(report.violations, 0);

    let g = seen.lock().expect("lock");
    let zero = Fid::default();
    for cfg in hax_sim::cluster::configs(&ep, 2, 30) {
        let p = cfg.fid;
        assert!(!cfg.services.is_empty(), "a process with services");
        let mut want = vec![format!("process {p} Starting")];
        let early = [
            ServiceType::Unused,
            ServiceType::Unused,
            ServiceType::Sss,
            ServiceType::Unused,
            ServiceType::Fdmi,
        ]
        .map(|t| (zero, t));
        for (fid, ty) in early.iter().chain(&cfg.services) {
            want.push(format!("service {fid} {ty:?} Starting"));
            want.push(format!("service {fid} {ty:?} Started"));
        }
        want.push(format!("process {p} Started"));
        want.push(format!("process {p} Stopping"));
        for (fid, ty) in cfg.services.iter().rev() {
            want.push(format!("service {fid} {ty:?} Stopping"));
        }
        want.push(format!("process {p} Stopped"));
        let got = g.events.get(&p).cloned().unwrap_or_default();
        assert_eq!(got, want, "process {p}; m0d-sim said:\n{text}");
    }
}

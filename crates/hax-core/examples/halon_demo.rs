//! A small HA side on the emulator: answers every entrypoint request from a
//! fixed configuration, prints each link event and message, answers NVEC GETs
//! (ONLINE for everything), keepalives and failure vector requests, and every
//! few seconds broadcasts a state change to every link.
//!
//! ```text
//! cargo run -p hax-core --example halon_demo -- inet:tcp:127.0.0.1@22001
//! cargo run -p hax-sim --bin m0d-sim -- --ha-endpoint inet:tcp:127.0.0.1@22001 --count 3 --events
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hax_core::{
    Callbacks, Confd, Ctx, Delivery, EntrypointReply, EntrypointRequest, EntrypointResponder, Fid,
    FidType, HaMsg, HaMsgData, HaNote, HaState, Halon, HalonConfig, LinkId, LinkInfo, NvecGet, Tag,
    Uint128,
};

struct Demo;

impl Callbacks for Demo {
    fn entrypoint_request(&self, cx: &Ctx<'_>, req: EntrypointRequest, reply: EntrypointResponder) {
        println!(
            "entrypoint request {} from {} ({}, pid {}, first {})",
            req.req_id, req.remote_endpoint, req.process_fid, req.pid, req.first_request
        );
        let confd = Confd {
            fid: Fid::typed(FidType::Process, 1, 0x10),
            endpoint: "inet:tcp:127.0.0.1@22002".into(),
        };
        let rep = EntrypointReply {
            confds: vec![confd.clone()],
            quorum: EntrypointReply::majority(1),
            rm_fid: Fid::typed(FidType::Service, 1, 0x11),
            rm_endpoint: confd.endpoint,
        };
        if let Err(e) = reply.accept_now(cx, &rep) {
            eprintln!("entrypoint reply failed: {e}");
        }
    }

    fn msg_received(&self, cx: &Ctx<'_>, link: LinkId, tag: Tag, msg: HaMsg, d: Delivery) {
        println!(
            "{link} tag {tag}: {} about {}",
            msg.data.type_name(),
            msg.fid
        );
        if let HaMsgData::KeepaliveReq { id } = msg.data {
            let rep = HaMsg::new(HaMsgData::KeepaliveRep { id, counter: 1 });
            if let Err(e) = cx.send(link, &rep) {
                eprintln!("keepalive reply failed: {e}");
            }
        }
        if let Err(e) = d.deliver_now(cx) {
            eprintln!("delivered failed: {e}");
        }
    }

    fn nvec_get(&self, cx: &Ctx<'_>, get: NvecGet, d: Delivery) {
        println!(
            "{} asks the state of {} objects",
            get.link(),
            get.fids().len()
        );
        if let Err(e) = get.answer_now(cx, |_| HaState::Online) {
            eprintln!("NVEC reply failed: {e}");
        }
        if let Err(e) = d.deliver_now(cx) {
            eprintln!("delivered failed: {e}");
        }
    }

    fn msg_delivered(&self, _cx: &Ctx<'_>, link: LinkId, tag: Tag) {
        println!("{link} delivered our message {tag}");
    }

    fn link_connected(&self, _cx: &Ctx<'_>, _req: Uint128, link: &LinkInfo) {
        println!(
            "{} connected: {} {}{}",
            link.id,
            link.endpoint,
            link.process_fid,
            if link.is_self { " (self)" } else { "" }
        );
    }

    fn link_reused(&self, _cx: &Ctx<'_>, _req: Uint128, link: LinkId) {
        println!("{link} reused");
    }

    fn link_disconnected(&self, _cx: &Ctx<'_>, link: LinkId) {
        println!("{link} disconnected");
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "inet:tcp:127.0.0.1@22001".into());
    let cfg = HalonConfig {
        endpoint,
        process_fid: Fid::typed(FidType::Process, 1, 3),
        ha_service_fid: Fid::typed(FidType::Service, 1, 4),
        rm_service_fid: Fid::typed(FidType::Service, 1, 5),
        debug_options: String::new(),
        receive_buffers: 0,
        node_uuid: None,
    };
    let mut halon = Halon::start(cfg, Demo)?;
    let ha = halon.handle();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = Arc::clone(&stop);
    ctrl_c(move || stop2.store(true, Ordering::SeqCst));
    let sdev = Fid::typed(FidType::Sdev, 1, 0x20);
    let mut round = 0u32;
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
        round += 1;
        if round % 15 != 0 {
            continue;
        }
        let state = if round % 30 == 0 {
            HaState::Online
        } else {
            HaState::Transient
        };
        let peers: Vec<LinkId> = ha
            .links()
            .into_iter()
            .filter(|l| !l.is_self)
            .map(|l| l.id)
            .collect();
        if peers.is_empty() {
            continue;
        }
        println!("broadcast: {sdev} is {state} to {} links", peers.len());
        let msg = HaMsg::nvec_set(vec![HaNote::new(sdev, state)]);
        for (link, r) in ha.broadcast(peers, msg).wait()? {
            if let Err(e) = r {
                eprintln!("{link}: {e}");
            }
        }
    }
    let report = halon.stop()?;
    println!("stopped: {} contract violations", report.violations);
    Ok(())
}

/// Calls `f` on SIGINT or SIGTERM.
fn ctrl_c(f: impl Fn() + Send + 'static) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let Ok(rt) = rt else { return };
    std::thread::spawn(move || {
        rt.block_on(async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return,
                };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            f();
        });
    });
}

//! hax on real Motr (feature `motr`) with a real `m0d`: a minimal single-node
//! configuration (one process with confd, RM and I/O services), `m0mkfs`,
//! then `m0d` with hax as its HA, both on endpoints in libfabric's form
//! `inet:tcp:127.0.0.1@<port>` as hare writes them, the m0d on hax's
//! transport. hax answers m0d's entrypoint request with
//! the confd and RM of that configuration, its failure vector request and its
//! NVEC GET; m0d gets to PROCESS STARTED, answers a keepalive request from
//! hax, and on SIGTERM stops cleanly, reporting it.
//!
//! Ignored unless hax-core is built with `--features motr`; built with it,
//! fails unless `MOTR_PREFIX` names an installed Motr with `m0d` and `m0mkfs`:
//!
//! ```text
//! MOTR_PREFIX=/opt/motr cargo test -p hax-core --features motr --test motr_m0d -- --nocapture
//! ```

use std::sync::Arc;
use std::time::Duration;

use hax_core::{
    Callbacks, Ctx, Delivery, EntrypointRequest, EntrypointResponder, FailvecRequest, Fid, FidType,
    HaMsg, HaMsgData, HaState, Halon, HalonConfig, LinkId, LinkInfo, NvecGet, Tag, Uint128,
};
use motr_support::{
    conf, entrypoint_reply, free_inet_endpoint, m0_args, scratch, shared_sockets, tail, tools,
    EventLog, Proc, PROCESS,
};

mod motr_support;

#[derive(Clone)]
struct Rec(Arc<EventLog>);

impl Rec {
    fn note(&self, s: String) {
        eprintln!("hax: {s}");
        self.0.note(s);
    }
}

impl Callbacks for Rec {
    fn entrypoint_request(&self, cx: &Ctx<'_>, req: EntrypointRequest, reply: EntrypointResponder) {
        self.note(format!(
            "entrypoint_request {} from {} process {} pid {} first {}",
            req.req_id, req.remote_endpoint, req.process_fid, req.pid, req.first_request
        ));
        if let Err(e) = reply.accept_now(cx, &entrypoint_reply(&self.0.m0d_ep())) {
            self.note(format!("entrypoint reply failed: {e}"));
        }
    }

    fn msg_received(&self, cx: &Ctx<'_>, link: LinkId, tag: Tag, msg: HaMsg, d: Delivery) {
        self.note(format!(
            "msg_received {link} tag {tag} {} about {} {:?}",
            msg.data.type_name(),
            msg.fid,
            msg.data
        ));
        if let HaMsgData::KeepaliveReq { id } = msg.data {
            let rep = HaMsg::new(HaMsgData::KeepaliveRep { id, counter: 1 });
            let r = cx.send(link, &rep);
            self.note(format!("keepalive reply on {link}: {r:?}"));
        }
        if let Err(e) = d.deliver_now(cx) {
            self.note(format!("delivered failed: {e}"));
        }
    }

    fn nvec_get(&self, cx: &Ctx<'_>, get: NvecGet, d: Delivery) {
        let link = get.link();
        self.note(format!(
            "nvec_get {link} id {} fids {:?}",
            get.id_of_get(),
            get.fids().iter().map(|f| f.to_string()).collect::<Vec<_>>()
        ));
        let r = get.answer_now(cx, |_| HaState::Online);
        self.note(format!("nvec answer on {link}: {r:?}"));
        if let Err(e) = d.deliver_now(cx) {
            self.note(format!("delivered failed: {e}"));
        }
    }

    fn failvec_request(&self, cx: &Ctx<'_>, req: FailvecRequest, d: Delivery) {
        let link = req.link();
        let pool = req.pool();
        let r = req.answer_now(cx, pool, Vec::new());
        self.note(format!("failvec_request {link} pool {pool} answered {r:?}"));
        if let Err(e) = d.deliver_now(cx) {
            self.note(format!("delivered failed: {e}"));
        }
    }

    fn msg_delivered(&self, _cx: &Ctx<'_>, link: LinkId, tag: Tag) {
        self.note(format!("msg_delivered {link} tag {tag}"));
    }

    fn msg_not_delivered(&self, _cx: &Ctx<'_>, link: LinkId, tag: Tag) {
        self.note(format!("msg_not_delivered {link} tag {tag}"));
    }

    fn link_connected(&self, _cx: &Ctx<'_>, req_id: Uint128, link: &LinkInfo) {
        self.note(format!(
            "link_connected {} req {req_id} ep {} process {} self {}",
            link.id, link.endpoint, link.process_fid, link.is_self
        ));
    }

    fn link_reused(&self, _cx: &Ctx<'_>, req_id: Uint128, link: LinkId) {
        self.note(format!("link_reused {link} req {req_id}"));
    }

    fn link_absent(&self, _cx: &Ctx<'_>, req_id: Uint128) {
        self.note(format!("link_absent req {req_id}"));
    }

    fn link_disconnected(&self, _cx: &Ctx<'_>, link: LinkId) {
        self.note(format!("link_disconnected {link}"));
    }
}

#[test]
#[cfg_attr(
    not(feature = "motr"),
    ignore = "needs --features motr and an installed Motr (MOTR_PREFIX)"
)]
fn m0d_connects_to_hax() {
    let tools = tools();
    let dir = scratch("hax-motr-m0d");
    std::env::set_var("M0_TRACE_DIR", &dir);
    let mut ports = Vec::new();
    let m0d_ep = free_inet_endpoint(&mut ports);
    let hax_ep = free_inet_endpoint(&mut ports);
    std::fs::write(dir.join("conf.xc"), conf(&m0d_ep, false)).expect("conf.xc");

    // m0mkfs formats the storage on its own (it is its own HA without -H).
    let mut mkfs = Proc::spawn(&tools.m0mkfs, &dir, &m0_args(&dir, &m0d_ep), "m0mkfs.log");
    let rc = mkfs.wait(Duration::from_secs(120));
    eprintln!("m0mkfs exit {rc:?}\n{}", tail(&dir, "m0mkfs.log", 30));
    assert_eq!(rc, Some(0), "m0mkfs");

    let rec = Arc::new(EventLog::default());
    *rec.m0d_ep.lock().unwrap() = m0d_ep.clone();
    let cfg = HalonConfig {
        endpoint: hax_ep.clone(),
        process_fid: Fid::typed(FidType::Process, 9, 1),
        ha_service_fid: Fid::typed(FidType::Service, 9, 2),
        rm_service_fid: Fid::typed(FidType::Service, 9, 3),
        debug_options: String::new(),
        receive_buffers: 0,
        node_uuid: None,
    };
    let mut halon = Halon::start(cfg, Rec(Arc::clone(&rec))).expect("halon interface starts");

    let mut args = m0_args(&dir, &m0d_ep);
    args.extend(["-H".to_string(), hax_ep.clone()]);
    let mut child = Proc::spawn(&tools.m0d, &dir, &args, "m0d.log");
    let m0d_fid = PROCESS.to_string();
    let connected = rec.wait_for("m0d's link", Duration::from_secs(60), |e| {
        e.starts_with("link_connected") && e.contains(&m0d_fid) && e.ends_with("self false")
    });
    // hax's listening socket (and every other descriptor of this process)
    // stays here: m0d is started with none of them.
    let inherited = shared_sockets(child.pid());
    let starting = rec.wait_for("m0d's PROCESS STARTING", Duration::from_secs(30), |e| {
        e.contains("event_process") && e.contains(&m0d_fid) && e.contains("Starting")
    });
    let started = rec.wait_for("m0d's PROCESS STARTED", Duration::from_secs(60), |e| {
        e.contains("event_process") && e.contains(&m0d_fid) && e.contains("Started")
    });
    let m0d_link = rec
        .events
        .lock()
        .unwrap()
        .iter()
        .find(|e| e.starts_with("link_connected") && e.contains(&m0d_fid))
        .and_then(|e| e.split_whitespace().nth(1).map(str::to_owned));
    // Motr's dispatcher answers a keepalive request with the same id.
    let mut keepalive_answered = false;
    if let (true, Some(link_name)) = (started, m0d_link.as_deref()) {
        let link = halon
            .handle()
            .links()
            .into_iter()
            .find(|l| l.id.to_string() == link_name)
            .map(|l| l.id)
            .expect("m0d's link is listed");
        let id = Uint128::new(0x4b41, 7);
        let r = halon
            .handle()
            .send(link, HaMsg::new(HaMsgData::KeepaliveReq { id }))
            .wait();
        rec.note(format!("keepalive request on {link}: {r:?}"));
        keepalive_answered = rec.wait_for("m0d's keepalive reply", Duration::from_secs(10), |e| {
            e.starts_with(&format!("msg_received {link_name} "))
                && e.contains("KeepaliveRep")
                && e.contains("lo: 7")
        });
    }
    // SIGTERM: m0d reports its stop and exits.
    child.signal("TERM");
    let rc = child.wait(Duration::from_secs(60));
    eprintln!("m0d exit {rc:?}\n{}", tail(&dir, "m0d.log", 30));
    let stopped = rec.wait_for("m0d's PROCESS STOPPED", Duration::from_secs(10), |e| {
        e.contains("event_process") && e.contains(&m0d_fid) && e.contains("Stopped")
    });
    let report = halon.stop().expect("stop");
    eprintln!("hax stopped: {report:?}");
    assert!(
        connected,
        "m0d's entrypoint request answered, link connected; m0d's log:\n{}",
        tail(&dir, "m0d.log", 30)
    );
    assert_eq!(
        inherited,
        Vec::<String>::new(),
        "m0d holds no socket of the test process"
    );
    assert!(starting, "m0d reported PROCESS STARTING to hax");
    let ev = rec.events.lock().unwrap().clone();
    let m0d_link = m0d_link.expect("m0d's link");
    let on_link = |what: &str| {
        ev.iter()
            .any(|e| e.starts_with(&format!("msg_received {m0d_link} ")) && e.contains(what))
    };
    assert!(on_link("event_service"), "m0d reported service events");
    assert!(
        ev.iter()
            .any(|e| e.starts_with(&format!("failvec_request {m0d_link} ")) && e.contains("Ok(")),
        "m0d's failure vector request answered"
    );
    assert!(
        ev.iter()
            .any(|e| e.starts_with(&format!("nvec answer on {m0d_link}")) && e.contains("Ok(")),
        "m0d's NVEC GET answered"
    );
    assert!(started, "m0d reached PROCESS STARTED");
    assert!(keepalive_answered, "m0d answered hax's keepalive request");
    assert!(stopped, "m0d reported PROCESS STOPPED");
    assert_eq!(rc, Some(0), "m0d exits 0 on SIGTERM");
    assert_eq!(report.violations, 0);
    let _ = std::fs::remove_dir_all(&dir);
}

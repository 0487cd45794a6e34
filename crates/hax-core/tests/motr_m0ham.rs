//! hax on real Motr (feature `motr`) against Motr's own HA test tool, m0ham,
//! which speaks the real RPC / HA link protocol.
//!
//! Ignored unless hax-core is built with `--features motr`; built with it,
//! fails unless `MOTR_PREFIX` names an installed Motr with `sbin/m0ham`:
//!
//! ```text
//! MOTR_PREFIX=/opt/motr cargo test -p hax-core --features motr --test motr_m0ham -- --nocapture
//! ```
//!
//! Two m0ham runs in connect mode (acting as an m0d), one hax:
//! 1. m0ham sends an entrypoint request, hax answers it (link connected);
//!    m0ham sends an NVEC GET (id 77, two fids), hax answers it with an NVEC
//!    SET; m0ham prints what it receives and exits 0.
//! 2. A second m0ham does the same, and hax, on its GET, first broadcasts an
//!    unsolicited NVEC SET to every peer link, then answers: m0ham prints the
//!    broadcast as the first message it receives.
//!
//! 3. FAILED notes of the m0ham process on hax's own link: the first one and a
//!    repeat with `ignore_same_state` leave its links; FAILED twice without
//!    it ends both (what hax sends its own link to fence a process).
//!
//! Then hax stops: the stop events reach the self link, every link gets the
//! disconnect handshake, and nothing was refused or forced.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hax_core::{
    Callbacks, Confd, Ctx, Delivery, Disconnect, EntrypointReply, EntrypointRequest,
    EntrypointResponder, Fid, FidType, HaMsg, HaMsgData, HaNote, HaState, Halon, HalonConfig,
    LinkId, LinkInfo, Nvec, NvecGet, NvecKind, Tag, Uint128,
};
use motr_support::{free_endpoint, installed, run_m0ham, scratch};

mod motr_support;

const HAM_PROCESS: Fid = Fid::typed(FidType::Process, 72, 1);
const CTRL_1: Fid = Fid::typed(FidType::Controller, 1, 1);
const CTRL_2: Fid = Fid::typed(FidType::Controller, 1, 2);
const BROADCAST_FID: Fid = Fid::typed(FidType::Controller, 1, 3);

#[derive(Default)]
struct Recorder {
    events: Mutex<Vec<String>>,
    broadcast_on_get: AtomicBool,
}

impl Recorder {
    fn note(&self, s: String) {
        eprintln!("hax: {s}");
        self.events.lock().unwrap().push(s);
    }

    fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }
}

#[derive(Clone)]
struct Rec(Arc<Recorder>);

impl Callbacks for Rec {
    fn entrypoint_request(&self, cx: &Ctx<'_>, req: EntrypointRequest, reply: EntrypointResponder) {
        self.0.note(format!(
            "entrypoint_request {} from {} process {} pid {} first {} git {}",
            req.req_id,
            req.remote_endpoint,
            req.process_fid,
            req.pid,
            req.first_request,
            req.git_rev_id
        ));
        let rep = EntrypointReply {
            confds: vec![Confd {
                fid: Fid::typed(FidType::Process, 1, 0x10),
                endpoint: "inet:tcp:127.0.0.1@1".into(),
            }],
            quorum: 1,
            rm_fid: Fid::typed(FidType::Service, 1, 5),
            rm_endpoint: "inet:tcp:127.0.0.1@1".into(),
        };
        if let Err(e) = reply.accept_now(cx, &rep) {
            self.0.note(format!("entrypoint reply failed: {e}"));
        }
    }

    fn msg_received(&self, cx: &Ctx<'_>, link: LinkId, tag: Tag, msg: HaMsg, d: Delivery) {
        self.0.note(format!(
            "msg_received {link} tag {tag} {} about {} {:?}",
            msg.data.type_name(),
            msg.fid,
            msg.data
        ));
        if let Err(e) = d.deliver_now(cx) {
            self.0.note(format!("delivered failed: {e}"));
        }
    }

    fn nvec_get(&self, cx: &Ctx<'_>, get: NvecGet, d: Delivery) {
        let link = get.link();
        self.0.note(format!(
            "nvec_get {link} tag {} id {} fids {:?}",
            d.tag(),
            get.id_of_get(),
            get.fids().iter().map(|f| f.to_string()).collect::<Vec<_>>()
        ));
        let is_self = cx.links().iter().any(|l| l.id == link && l.is_self);
        if !is_self && self.0.broadcast_on_get.load(Ordering::SeqCst) {
            let peers: Vec<LinkId> = cx
                .links()
                .into_iter()
                .filter(|l| !l.is_self)
                .map(|l| l.id)
                .collect();
            let msg = HaMsg::nvec_set(vec![HaNote::new(BROADCAST_FID, HaState::Transient)]);
            match cx.broadcast(&peers, &msg) {
                Ok(sent) => {
                    for (l, r) in sent {
                        self.0.note(format!("broadcast to {l}: {r:?}"));
                    }
                }
                Err(e) => self.0.note(format!("broadcast failed: {e}")),
            }
        }
        let r = get.answer_now(cx, |f| {
            if f == CTRL_1 {
                HaState::Online
            } else {
                HaState::Transient
            }
        });
        self.0.note(format!("nvec answer on {link}: {r:?}"));
        if let Err(e) = d.deliver_now(cx) {
            self.0.note(format!("delivered failed: {e}"));
        }
    }

    fn msg_delivered(&self, _cx: &Ctx<'_>, link: LinkId, tag: Tag) {
        self.0.note(format!("msg_delivered {link} tag {tag}"));
    }

    fn msg_not_delivered(&self, _cx: &Ctx<'_>, link: LinkId, tag: Tag) {
        self.0.note(format!("msg_not_delivered {link} tag {tag}"));
    }

    fn link_connected(&self, _cx: &Ctx<'_>, req_id: Uint128, link: &LinkInfo) {
        self.0.note(format!(
            "link_connected {} req {req_id} ep {} process {} self {}",
            link.id, link.endpoint, link.process_fid, link.is_self
        ));
    }

    fn link_reused(&self, _cx: &Ctx<'_>, req_id: Uint128, link: LinkId) {
        self.0.note(format!("link_reused {link} req {req_id}"));
    }

    fn link_absent(&self, _cx: &Ctx<'_>, req_id: Uint128) {
        self.0.note(format!("link_absent req {req_id}"));
    }

    fn link_is_disconnecting(&self, cx: &Ctx<'_>, link: LinkId, disconnect: Disconnect) {
        self.0.note(format!("link_is_disconnecting {link}"));
        if let Err(e) = disconnect.disconnect_now(cx) {
            self.0.note(format!("disconnect {link} failed: {e}"));
        }
    }

    fn link_disconnected(&self, _cx: &Ctx<'_>, link: LinkId) {
        self.0.note(format!("link_disconnected {link}"));
    }
}

/// The LNet portal of this test's endpoints (an LNet-style endpoint is what
/// every Motr transport parses, SOCK and libfabric alike).
const PORTAL: u16 = 34;

/// An NVEC GET as one `m0_ha_msg` in xcode text (`m0_xcode_read`): the fixed
/// note array must list all 1024 notes.
fn nvec_get_text(id_of_get: u64, fids: &[Fid]) -> String {
    let mut notes: Vec<String> = fids
        .iter()
        .map(|f| format!("(({:#x}, {:#x}), 0)", f.container, f.key))
        .collect();
    notes.resize(1024, "((0, 0), 0)".into());
    format!(
        "((0, 0), (0, 0), (0, 0), 0, 0, {{2| (1, {id_of_get}, 0, {}, <{}>)}}, 0)\n",
        fids.len(),
        notes.join(", ")
    )
}

/// (type, id_of_get, ignore_same, [(container, key, state)]) of a printed NVEC.
type NvecLine = (u64, u64, u64, Vec<(u64, u64, u64)>);

/// The NVEC payloads of m0ham's output lines (one `m0_ha_msg` in xcode
/// text per line): (type, id_of_get, ignore_same, [(container, key, state)]).
fn parse_nvecs(stdout: &str) -> Vec<NvecLine> {
    let mut out = Vec::new();
    for line in stdout.lines() {
        // m0_xcode_print writes the union tag in hex: `{0x2|(...)}`.
        let Some(at) = line.find("{0x2|").or_else(|| line.find("{2|")) else {
            continue;
        };
        let body = &line[at..];
        let nums: Vec<u64> = body[body.find('|').unwrap_or(0) + 1..]
            .split(|c: char| !c.is_ascii_alphanumeric())
            .filter(|t| !t.is_empty())
            .filter_map(|t| match t.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16).ok(),
                None => t.parse().ok(),
            })
            .collect();
        if nums.len() < 4 {
            continue;
        }
        let nr = nums[3] as usize;
        let notes = nums[4..]
            .chunks(3)
            .take(nr)
            .map(|c| (c[0], c[1], c.get(2).copied().unwrap_or(u64::MAX)))
            .collect();
        out.push((nums[0], nums[1], nums[2], notes));
    }
    out
}

#[test]
#[cfg_attr(
    not(feature = "motr"),
    ignore = "needs --features motr and an installed Motr (MOTR_PREFIX)"
)]
fn m0ham_entrypoint_nvec_get_and_broadcast() {
    let m0ham = installed("m0ham");
    let dir = scratch("hax-motr-m0ham");
    // Motr writes its trace buffer file there instead of the working dir.
    std::env::set_var("M0_TRACE_DIR", &dir);

    let mut ports = Vec::new();
    let hax_ep = free_endpoint(PORTAL, &mut ports);
    let rec = Arc::new(Recorder::default());
    let cfg = HalonConfig {
        endpoint: hax_ep.clone(),
        process_fid: Fid::typed(FidType::Process, 1, 3),
        ha_service_fid: Fid::typed(FidType::Service, 1, 4),
        rm_service_fid: Fid::typed(FidType::Service, 1, 5),
        debug_options: String::new(),
        receive_buffers: 0,
        node_uuid: None,
    };
    let t0 = Instant::now();
    let mut halon = Halon::start(cfg, Rec(Arc::clone(&rec))).expect("halon interface starts");
    eprintln!("hax: started on {hax_ep} in {:?}", t0.elapsed());

    // 1. Entrypoint, GET, answer.
    let get = nvec_get_text(77, &[CTRL_1, CTRL_2]);
    let ep1 = free_endpoint(PORTAL, &mut ports);
    let run1 = run_m0ham(&m0ham, &dir, &ep1, &hax_ep, &get, Duration::from_secs(60));
    eprintln!(
        "m0ham 1 exit {:?}\n--- stdout\n{}--- stderr\n{}",
        run1.status, run1.stdout, run1.stderr
    );
    assert_eq!(run1.status, Some(0), "m0ham 1 exits 0");
    let got1 = parse_nvecs(&run1.stdout);
    assert_eq!(got1.len(), 1, "m0ham 1 prints the one message it received");
    let (kind, id, _, notes) = &got1[0];
    assert_eq!((*kind, *id), (0, 77), "an NVEC SET answering GET 77");
    assert_eq!(
        notes,
        &vec![
            (CTRL_1.container, CTRL_1.key, HaState::Online as u64),
            (CTRL_2.container, CTRL_2.key, HaState::Transient as u64)
        ],
        "the GET's fids in its order, with hax's states"
    );

    // 2. On the next GET, a broadcast first, then the answer.
    rec.broadcast_on_get.store(true, Ordering::SeqCst);
    let ep2 = free_endpoint(PORTAL, &mut ports);
    let run2 = run_m0ham(&m0ham, &dir, &ep2, &hax_ep, &get, Duration::from_secs(60));
    eprintln!(
        "m0ham 2 exit {:?}\n--- stdout\n{}--- stderr\n{}",
        run2.status, run2.stdout, run2.stderr
    );
    assert_eq!(run2.status, Some(0), "m0ham 2 exits 0");
    let got2 = parse_nvecs(&run2.stdout);
    assert!(!got2.is_empty(), "m0ham 2 prints what it received");
    let (kind, id, ignore_same, notes) = &got2[0];
    assert_eq!(
        (*kind, *id, *ignore_same),
        (0, 0, 1),
        "the broadcast: unsolicited SET"
    );
    assert_eq!(
        notes,
        &vec![(
            BROADCAST_FID.container,
            BROADCAST_FID.key,
            HaState::Transient as u64
        )]
    );

    let ev = rec.events();
    let ham_requests = ev
        .iter()
        .filter(|e| e.starts_with("entrypoint_request") && e.contains(&HAM_PROCESS.to_string()))
        .count();
    assert_eq!(ham_requests, 2, "one entrypoint request per m0ham run");
    let peer_links = ev
        .iter()
        .filter(|e| e.starts_with("link_connected") && e.ends_with("self false"))
        .count();
    assert_eq!(peer_links, 2, "one link per m0ham run");
    assert!(ev
        .iter()
        .any(|e| e.starts_with("link_connected") && e.ends_with("self true")));

    // 3. What ends the links of a process whose m0ham runs are gone: a
    // FAILED for it on hax's own link, unless it is the first note of that
    // fid the interface sees, or (with ignore_same_state) the state it holds
    // already. Motr acts on receipt, before it confirms the message, so a
    // link not disconnecting by the delivery is a link Motr kept.
    let link = halon.handle();
    let own = link
        .links()
        .into_iter()
        .find(|l| l.is_self)
        .expect("hax's own link")
        .id;
    let send_to_self = |ignore_same_state: bool, times: usize| {
        let msg = HaMsg::new(HaMsgData::Nvec(Nvec {
            kind: NvecKind::Set,
            id_of_get: 0,
            ignore_same_state,
            notes: vec![HaNote::new(HAM_PROCESS, HaState::Failed); times],
        }));
        let tag = link.send(own, msg).wait().expect("sent to hax's own link");
        let delivered = format!("msg_delivered {own} tag {tag}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !rec.events().contains(&delivered) {
            assert!(Instant::now() < deadline, "{delivered} within 30 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let disconnecting = |ev: &[String]| {
        ev.iter()
            .filter(|e| e.starts_with("link_is_disconnecting"))
            .count()
    };
    // Motr decides on receipt, before it confirms the message, but tells
    // hax of a link disconnecting later, from the link's own state machine:
    // a decision not to fence is watched for a while after the delivery.
    let quiet = |what: &str| {
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            assert_eq!(disconnecting(&rec.events()), 0, "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    send_to_self(true, 1);
    quiet("the first note of a fid is recorded only");
    send_to_self(true, 1);
    quiet("the same state again, ignore_same_state: skipped");
    send_to_self(false, 2);
    // FAILED twice without ignore_same_state: both m0ham links end (a link
    // whose message to its gone peer waits for an RPC timeout is told it
    // is disconnecting once that ends, seconds later).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ev = rec.events();
        let gone = ev
            .iter()
            .filter(|e| e.starts_with("link_disconnected"))
            .count();
        if disconnecting(&ev) == 2 && gone == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "both fenced links disconnected within 60 s: {ev:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(link.links().len(), 1, "hax's own link only");

    // 4. Stop: events to self, handshake on every link, nothing forced.
    let t1 = Instant::now();
    let report = halon.stop().expect("stop");
    eprintln!("hax: stopped in {:?}: {report:?}", t1.elapsed());
    assert_eq!(report.violations, 0);
    assert!(!report.would_hang, "stop needed no forcing");
    let ev = rec.events();
    let disconnected = ev
        .iter()
        .filter(|e| e.starts_with("link_disconnected"))
        .count();
    assert_eq!(
        disconnected, 3,
        "both m0ham links (fenced) and the self link disconnected"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

//! hax-core against the emulator without peers: start, the self link, stop.

use std::sync::{Arc, Mutex};

use emu_support::{free_endpoint, halon_config, Log};
use hax_core::{
    Callbacks, Ctx, Delivery, EntrypointReply, EntrypointRequest, EntrypointResponder, Fid,
    FidType, HaMsg, HaMsgData, Halon, LinkId, LinkInfo, ProcessEventKind, Tag, Uint128,
};

mod emu_support;

struct Recorder(Arc<Log>);

impl Callbacks for Recorder {
    fn entrypoint_request(&self, cx: &Ctx<'_>, req: EntrypointRequest, reply: EntrypointResponder) {
        self.0.push(format!(
            "ep {} first={}",
            req.remote_endpoint, req.first_request
        ));
        reply
            .accept_now(
                cx,
                &EntrypointReply {
                    confds: vec![],
                    quorum: 1,
                    rm_fid: Fid::typed(FidType::Service, 1, 2),
                    rm_endpoint: req.remote_endpoint.clone(),
                },
            )
            .unwrap();
    }

    fn msg_received(&self, cx: &Ctx<'_>, link: LinkId, tag: Tag, msg: HaMsg, d: Delivery) {
        if let HaMsgData::ProcessEvent(e) = msg.data {
            self.0.push(format!("{link} {tag} process {}", e.event));
        } else if let HaMsgData::ServiceEvent(e) = msg.data {
            self.0.push(format!("{link} {tag} service {}", e.event));
        }
        d.deliver_now(cx).unwrap();
    }

    fn link_connected(&self, _cx: &Ctx<'_>, _req: Uint128, link: &LinkInfo) {
        self.0
            .push(format!("connected {} self={}", link.id, link.is_self));
    }

    fn link_disconnected(&self, _cx: &Ctx<'_>, link: LinkId) {
        self.0.push(format!("disconnected {link}"));
    }
}

#[test]
fn start_answers_self_entrypoint_and_stop_is_clean() {
    let log = Arc::new(Log::default());
    let mut halon =
        Halon::start(halon_config(&free_endpoint()), Recorder(Arc::clone(&log))).unwrap();
    let ev = log.wait_for("the six start events", |e| {
        e.iter()
            .filter(|s| s.contains("process") || s.contains("service"))
            .count()
            == 6
    });
    assert!(ev[0].starts_with("ep inet:tcp:127.0.0.1@"), "{ev:?}");
    assert!(ev[0].ends_with("first=true"));
    assert_eq!(ev[1], "connected link#1 self=true");
    let events: Vec<&String> = ev[2..].iter().collect();
    assert_eq!(
        events,
        [
            &format!("link#1 2 process {}", ProcessEventKind::Starting),
            &"link#1 4 service M0_CONF_HA_SERVICE_STARTING".to_string(),
            &"link#1 6 service M0_CONF_HA_SERVICE_STARTED".to_string(),
            &"link#1 8 service M0_CONF_HA_SERVICE_STARTING".to_string(),
            &"link#1 10 service M0_CONF_HA_SERVICE_STARTED".to_string(),
            &format!("link#1 12 process {}", ProcessEventKind::Started),
        ]
    );
    let handle = halon.handle();
    assert_eq!(handle.links().len(), 1);
    let report = halon.stop().unwrap();
    assert_eq!(report.violations, 0);
    assert!(!report.would_hang);
    let ev = log.wait_for("stop", |e| e.iter().any(|s| s == "disconnected link#1"));
    let stop_events: Vec<&String> = ev.iter().filter(|s| s.contains("STOP")).collect();
    assert_eq!(stop_events.len(), 6, "{ev:?}");
    // A second stop is harmless and a stopped handle refuses calls.
    assert_eq!(halon.stop().unwrap(), report);
    assert!(handle.links().is_empty());
    assert!(matches!(
        handle.send(LinkId(1), HaMsg::nvec_set(vec![])).wait(),
        Err(hax_core::Error::NotRunning)
    ));
}

/// Panics in its first message callback, counts every call.
struct Panicker {
    calls: Arc<Mutex<u32>>,
}

impl Callbacks for Panicker {
    fn entrypoint_request(&self, cx: &Ctx<'_>, req: EntrypointRequest, reply: EntrypointResponder) {
        reply
            .accept_now(
                cx,
                &EntrypointReply {
                    quorum: 1,
                    rm_fid: Fid::typed(FidType::Service, 1, 2),
                    rm_endpoint: req.remote_endpoint,
                    ..Default::default()
                },
            )
            .unwrap();
    }

    fn msg_received(&self, _cx: &Ctx<'_>, _l: LinkId, _t: Tag, _m: HaMsg, _d: Delivery) {
        *self.calls.lock().unwrap() += 1;
        panic!("boom in msg_received");
    }
}

#[test]
fn a_panicking_callback_is_contained_and_never_called_again() {
    let calls = Arc::new(Mutex::new(0));
    let mut halon = Halon::start(
        halon_config(&free_endpoint()),
        Panicker {
            calls: Arc::clone(&calls),
        },
    )
    .unwrap();
    // The three other start events and the four stop events still get
    // delivered (by the reply objects' fallbacks), so stop neither hangs nor
    // makes a violation.
    let err = halon.stop().unwrap_err();
    assert!(
        matches!(&err, hax_core::Error::CallbackPanicked(m) if m.contains("boom in msg_received")),
        "{err}"
    );
    assert_eq!(*calls.lock().unwrap(), 1, "called again after its panic");
    let report = halon.report().expect("stop ran");
    assert_eq!(report.violations, 0);
    assert!(!report.would_hang);
}

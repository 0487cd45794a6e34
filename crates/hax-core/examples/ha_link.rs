//! A minimal HA link: start the halon interface, give every Motr process that
//! asks for it a configuration, print the first HA message a process sends,
//! and stop.
//!
//! On the emulator backend, with a simulated m0d in a second terminal:
//!
//! ```text
//! cargo run -p hax-core --example ha_link -- inet:tcp:127.0.0.1@22001
//! cargo run -p hax-sim --bin m0d-sim -- --ha-endpoint inet:tcp:127.0.0.1@22001 --events
//! ```
//!
//! `hax-testkit/tests/examples.rs` runs this code against a hax-sim peer.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

use hax_core::{
    Callbacks, Confd, Ctx, Delivery, EntrypointReply, EntrypointRequest, EntrypointResponder, Fid,
    FidType, HaMsg, Halon, HalonConfig, LinkId, Tag,
};

/// What other processes send, with the link it came on.
pub type Inbox = Receiver<(LinkId, HaMsg)>;

/// hax's side of every link. Its methods run on Motr's threads, so they
/// answer at once and hand messages on without blocking.
#[derive(Debug)]
pub struct Ha {
    config: HalonConfig,
    messages: SyncSender<(LinkId, HaMsg)>,
}

impl Callbacks for Ha {
    fn entrypoint_request(
        &self,
        cx: &Ctx<'_>,
        _req: EntrypointRequest,
        reply: EntrypointResponder,
    ) {
        // Where the cluster's configuration server (confd) runs, and which
        // RM service is the active one: here hax's own.
        let confds = vec![Confd {
            fid: Fid::typed(FidType::Process, 1, 0x10),
            endpoint: "inet:tcp:127.0.0.1@22002".into(),
        }];
        let rep = EntrypointReply {
            quorum: EntrypointReply::majority(confds.len()),
            confds,
            rm_fid: self.config.rm_service_fid,
            rm_endpoint: self.config.endpoint.clone(),
        };
        if let Err(e) = reply.accept_now(cx, &rep) {
            eprintln!("entrypoint reply failed: {e}");
        }
    }

    fn msg_received(&self, cx: &Ctx<'_>, link: LinkId, _tag: Tag, msg: HaMsg, delivery: Delivery) {
        // hax's own process reports its start on a link of its own: skip it.
        // try_send never blocks; when nobody reads, messages are dropped.
        if !cx.links().iter().any(|l| l.id == link && l.is_self) {
            let _ = self.messages.try_send((link, msg));
        }
        // Confirms the message to its sender, which would send it again otherwise.
        if let Err(e) = delivery.deliver_now(cx) {
            eprintln!("delivered failed: {e}");
        }
    }
}

/// Starts the interface at `endpoint`.
pub fn start(endpoint: &str) -> hax_core::Result<(Halon<Ha>, Inbox)> {
    let config = HalonConfig {
        endpoint: endpoint.to_owned(),
        process_fid: Fid::typed(FidType::Process, 1, 3),
        ha_service_fid: Fid::typed(FidType::Service, 1, 4),
        rm_service_fid: Fid::typed(FidType::Service, 1, 5),
        debug_options: String::new(),
        receive_buffers: 0,
        node_uuid: None,
    };
    let (messages, rx) = sync_channel(64);
    let halon = Halon::start(config.clone(), Ha { config, messages })?;
    Ok((halon, rx))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let endpoint = std::env::args().nth(1);
    let endpoint = endpoint.as_deref().unwrap_or("inet:tcp:127.0.0.1@22001");
    let (mut halon, messages) = start(endpoint)?;
    println!("listening on {endpoint}");
    let (link, msg) = messages.recv()?;
    println!("{link}: {} about {}", msg.data.type_name(), msg.fid);
    let report = halon.stop()?;
    println!("stopped, {} contract violations", report.violations);
    Ok(())
}

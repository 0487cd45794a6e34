//! Misbehaving peers, for fault tests: a [`RoguePeer`] makes a link like a
//! well-behaved process (HELLO, first entrypoint request) and then does what
//! a broken `m0d` does: stops reading its socket (hung: hax's messages pile
//! up in the kernel buffers and then in hax), or floods hax with messages
//! without reading a single answer.
//!
//! Unlike [`crate::SimProcess`] it checks nothing and keeps no state beyond
//! the link's tags: it exists to put pressure on hax.

use hax_core::{Fid, HaMsg};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::endpoint::Endpoint;
use crate::wire::{split_frame, EpReq, HaxFrame, PeerFrame, HEADER_LEN};
use crate::SimError;

/// A peer that made its link and then misbehaves.
#[derive(Debug)]
pub struct RoguePeer {
    stream: TcpStream,
    link_id: u64,
    next_tag: u64,
    /// Bytes read past the entrypoint reply (never looked at).
    _rest: Vec<u8>,
}

impl RoguePeer {
    /// Connects to hax at `ha_endpoint` as process `fid` (endpoint
    /// `endpoint`) and makes a new link: HELLO, a first entrypoint request,
    /// hax's HELLO and entrypoint reply. Reads nothing after that.
    pub async fn connect(ha_endpoint: &str, fid: Fid, endpoint: &str) -> Result<Self, SimError> {
        let addr: Endpoint = ha_endpoint.parse()?;
        let Endpoint::Tcp { host, port } = addr else {
            return Err(SimError::Config("a rogue peer speaks TCP only".into()));
        };
        let lost = |e: std::io::Error| SimError::ConnectionLost(e.to_string());
        let mut stream = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(|source| SimError::Connect {
                endpoint: ha_endpoint.to_owned(),
                source,
            })?;
        let mut out = Vec::new();
        PeerFrame::Hello.encode(&mut out)?;
        PeerFrame::EpReq(EpReq {
            first_request: true,
            generation: 1,
            process_fid: fid,
            pid: u64::from(std::process::id()),
            cookie_expected: Default::default(),
            link_id: 0,
            next_out_tag: 0,
            next_in_tag: 0,
            endpoint: endpoint.to_owned(),
            git_rev_id: String::new(),
        })
        .encode(&mut out)?;
        stream.write_all(&out).await.map_err(lost)?;
        // HELLO, then EP_REP; anything else before them is not expected from
        // a fresh link.
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let mut used = 0;
            while let Some((frame, n)) = split_frame(&buf[used..])? {
                used += n;
                match HaxFrame::decode(frame)? {
                    HaxFrame::Hello => {}
                    HaxFrame::EpRep(rep) if rep.link_id != 0 => {
                        return Ok(RoguePeer {
                            stream,
                            link_id: rep.link_id,
                            next_tag: rep.next_out_tag.max(2),
                            _rest: buf[used..].to_vec(),
                        });
                    }
                    other => {
                        return Err(SimError::ConnectionLost(format!(
                            "{} before the link was made",
                            other.name()
                        )))
                    }
                }
            }
            buf.drain(..used);
            let n = stream.read(&mut chunk).await.map_err(lost)?;
            if n == 0 {
                return Err(SimError::ConnectionLost("closed by hax".into()));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The link hax made.
    pub fn link_id(&self) -> u64 {
        self.link_id
    }

    /// Sends `n` copies of `msg` with the link's next tags, as fast as the
    /// socket takes them, reading nothing. Returns how many were written
    /// (fewer if hax closed the connection or `deadline` passed).
    pub async fn flood(&mut self, msg: &HaMsg, n: u64, deadline: tokio::time::Instant) -> u64 {
        let mut sent = 0;
        let mut out = Vec::new();
        while sent < n {
            out.clear();
            // Batches of 64 frames per write.
            for _ in 0..64.min(n - sent) {
                let f = PeerFrame::Msg {
                    link_id: self.link_id,
                    tag: self.next_tag,
                    msg: msg.clone(),
                };
                if f.encode(&mut out).is_err() {
                    return sent;
                }
                self.next_tag += 2;
            }
            let frames = (out.len() > HEADER_LEN).then_some(64.min(n - sent));
            match tokio::time::timeout_at(deadline, self.stream.write_all(&out)).await {
                Ok(Ok(())) => sent += frames.unwrap_or(0),
                _ => return sent,
            }
        }
        sent
    }

    /// Closes the connection at once (a killed process).
    pub fn kill(self) {
        drop(self.stream);
    }
}

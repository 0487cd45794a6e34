//! [`SimControl`]: shapes the emulator's model of Motr's client side (what
//! hax's rconfc, SNS, stats and byte-count calls answer) over its own peer
//! connection, with the `CTL` frames of `docs/emulator-protocol.md`; and
//! [`Model`], a whole model read from JSON (what `m0d-sim --model` loads).
//!
//! ```no_run
//! # async fn demo() -> Result<(), hax_sim::ControlError> {
//! use std::time::Duration;
//! use hax_core::{Fid, FidType, PverState, SnsKind};
//! use hax_sim::{ClientOp, PoolDef, PverDef, SimControl};
//!
//! let ctl = SimControl::connect("inet:tcp:127.0.0.1@22001").await?;
//! ctl.define_pool(PoolDef {
//!     fid: Fid::typed(FidType::Pool, 1, 1),
//!     ioservices: vec![Fid::typed(FidType::Service, 1, 100)],
//!     pvers: vec![PverDef {
//!         fid: Fid::typed(FidType::Pver, 1, 1),
//!         state: PverState::Healthy,
//!         data_units: 1,
//!         parity_units: 0,
//!         pool_width: 1,
//!         unit_size: 1 << 20,
//!     }],
//! })
//! .await?;
//! ctl.set_sns_rate(50).await?;                                  // 2 s per run
//! ctl.fail_next(ClientOp::FsStats, 1, -110).await?;             // -ETIMEDOUT
//! ctl.delay_next(ClientOp::SnsStatus, 1, Duration::from_millis(500)).await?;
//! # Ok(()) }
//! ```

use std::io;
use std::time::Duration;

use hax_core::{Fid, FsStats, PverByteCount, PverState, SnsKind};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Mutex;

use crate::endpoint::{Endpoint, EndpointError};
use crate::process::{open, BoxRead, BoxWrite};
use crate::wire::{
    split_frame, ClientOp, CtlOp, Fault, HaxFrame, PeerFrame, PoolDef, PverDef, WireError,
    FAULT_DELAY_MAX_MS,
};

/// How long an operation waits for its `CTL_R` by default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors of [`SimControl`] and [`Model`].
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// hax's endpoint string names no socket.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The socket could not be opened.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// The socket.
        endpoint: String,
        /// Why.
        source: io::Error,
    },
    /// The connection failed or closed (hax drops it on a bad frame).
    #[error("control connection lost: {0}")]
    Io(#[from] io::Error),
    /// A frame that does not encode or decode.
    #[error(transparent)]
    Wire(#[from] WireError),
    /// hax sent something a control connection does not expect.
    #[error("unexpected {0} on the control connection")]
    Unexpected(&'static str),
    /// The model refused the operation with a negative errno.
    #[error("control {op} refused with {rc}")]
    Refused {
        /// The operation.
        op: &'static str,
        /// Its rc.
        rc: i32,
    },
    /// No answer in time.
    #[error("no answer to control {0} in time")]
    Timeout(&'static str),
    /// A model description that does not read.
    #[error("model: {0}")]
    Model(String),
}

struct Conn {
    r: BoxRead,
    w: BoxWrite,
    buf: Vec<u8>,
    seq: u64,
}

impl Conn {
    async fn write_frame(&mut self, f: &PeerFrame) -> Result<(), ControlError> {
        let mut out = Vec::new();
        f.encode(&mut out)?;
        self.w.write_all(&out).await?;
        self.w.flush().await?;
        Ok(())
    }

    async fn read_frame(&mut self) -> Result<HaxFrame, ControlError> {
        loop {
            if let Some((frame, used)) = split_frame(&self.buf)? {
                let f = HaxFrame::decode(frame)?;
                self.buf.drain(..used);
                return Ok(f);
            }
            let mut chunk = [0u8; 4096];
            let n = self.r.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// A control connection to the emulator behind hax's endpoint. Operations
/// take effect before they return. `Send + Sync`; operations from several
/// tasks run one after another.
pub struct SimControl {
    conn: Mutex<Conn>,
    timeout: Duration,
}

impl std::fmt::Debug for SimControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimControl")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl SimControl {
    /// Connects to hax's endpoint (as `m0d` processes do) and says `HELLO`.
    pub async fn connect(ha_endpoint: &str) -> Result<SimControl, ControlError> {
        let ep: Endpoint = ha_endpoint.parse()?;
        let (r, w) = open(&ep).await.map_err(|source| ControlError::Connect {
            endpoint: ha_endpoint.to_owned(),
            source,
        })?;
        let mut conn = Conn {
            r,
            w,
            buf: Vec::new(),
            seq: 0,
        };
        conn.write_frame(&PeerFrame::Hello).await?;
        let f = tokio::time::timeout(DEFAULT_TIMEOUT, conn.read_frame())
            .await
            .map_err(|_| ControlError::Timeout("HELLO"))??;
        if f != HaxFrame::Hello {
            return Err(ControlError::Unexpected(f.name()));
        }
        Ok(SimControl {
            conn: Mutex::new(conn),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// How long each operation waits for its answer (default 10 s).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends one operation and waits for its answer.
    /// [`ControlError::Refused`] carries the model's negative errno.
    pub async fn apply(&self, op: CtlOp) -> Result<(), ControlError> {
        let name = op.name();
        match self.ask(op).await? {
            0 => Ok(()),
            rc => Err(ControlError::Refused { op: name, rc }),
        }
    }

    /// Sends one operation and returns the `rc` of its answer.
    async fn ask(&self, op: CtlOp) -> Result<i32, ControlError> {
        let name = op.name();
        let mut conn = self.conn.lock().await;
        conn.seq += 1;
        let seq = conn.seq;
        let answer = async {
            conn.write_frame(&PeerFrame::Ctl { seq, op }).await?;
            loop {
                match conn.read_frame().await? {
                    HaxFrame::CtlReply { seq: s, rc } if s == seq => return Ok(rc),
                    // An answer to an operation that timed out before.
                    HaxFrame::CtlReply { .. } => continue,
                    f => return Err(ControlError::Unexpected(f.name())),
                }
            }
        };
        tokio::time::timeout(self.timeout, answer)
            .await
            .map_err(|_| ControlError::Timeout(name))?
    }

    /// How many client calls wait in an injected delay now: tells that a
    /// call hax made has reached the emulator and is being held there.
    pub async fn delayed_calls(&self) -> Result<u32, ControlError> {
        let rc = self.ask(CtlOp::Delayed).await?;
        u32::try_from(rc).map_err(|_| ControlError::Refused { op: "DELAYED", rc })
    }

    /// Defines a pool, or replaces the pool with the same fid (its repair
    /// and rebalance become idle).
    pub async fn define_pool(&self, pool: PoolDef) -> Result<(), ControlError> {
        self.apply(CtlOp::Pool(pool)).await
    }

    /// Sets a pool version's state.
    pub async fn set_pver_state(&self, pver: Fid, state: PverState) -> Result<(), ControlError> {
        self.apply(CtlOp::PverState { pver, state }).await
    }

    /// Sets what filesystem stats answer.
    pub async fn set_fs_stats(&self, stats: FsStats) -> Result<(), ControlError> {
        self.apply(CtlOp::FsStats(stats)).await
    }

    /// Sets the byte counts of ioservice process `ios` (which then exists
    /// for the byte-count call).
    pub async fn set_counters(
        &self,
        ios: Fid,
        counts: Vec<PverByteCount>,
    ) -> Result<(), ControlError> {
        self.apply(CtlOp::Counters { ios, counts }).await
    }

    /// Sets how fast running repairs and rebalances progress, in percent per
    /// second (0 stops them; 100000 ends them within a millisecond).
    pub async fn set_sns_rate(&self, percent_per_second: u32) -> Result<(), ControlError> {
        self.apply(CtlOp::SnsRate(percent_per_second)).await
    }

    /// Makes a pool's repair or rebalance fail.
    pub async fn fail_sns(&self, pool: Fid, kind: SnsKind) -> Result<(), ControlError> {
        self.apply(CtlOp::SnsFail { pool, kind }).await
    }

    /// Injects a fault.
    pub async fn inject(&self, fault: Fault) -> Result<(), ControlError> {
        self.apply(CtlOp::Fault(fault)).await
    }

    /// The next `count` calls of `op` fail with `rc` (a negative errno).
    /// SNS control calls, like real Motr's, are otherwise never refused
    /// (what they did shows in the status): this is how a test makes one
    /// busy (`-EBUSY`) or failed.
    pub async fn fail_next(&self, op: ClientOp, count: u32, rc: i32) -> Result<(), ControlError> {
        self.inject(Fault {
            op,
            count,
            rc,
            delay_ms: 0,
        })
        .await
    }

    /// The next `count` calls of `op` answer only after `delay` (cut short
    /// when hax stops).
    pub async fn delay_next(
        &self,
        op: ClientOp,
        count: u32,
        delay: Duration,
    ) -> Result<(), ControlError> {
        let delay_ms = u32::try_from(delay.as_millis())
            .ok()
            .filter(|ms| *ms <= FAULT_DELAY_MAX_MS)
            .ok_or_else(|| {
                ControlError::Model(format!("delay {delay:?} is over {FAULT_DELAY_MAX_MS} ms"))
            })?;
        self.inject(Fault {
            op,
            count,
            rc: 0,
            delay_ms,
        })
        .await
    }

    /// Forgets pools, stats, counters and faults.
    pub async fn clear(&self) -> Result<(), ControlError> {
        self.apply(CtlOp::Clear).await
    }

    /// Applies a whole model, in order.
    pub async fn load(&self, model: &Model) -> Result<(), ControlError> {
        for op in model.ops() {
            self.apply(op).await?;
        }
        Ok(())
    }
}

/// A whole client model: pools, stats, counters, rate.
///
/// Its JSON form (every key optional):
///
/// ```json
/// {
///   "pools": [{"fid": "o|1:1", "ioservices": ["s|1:100", "s|1:101"],
///              "pvers": [{"fid": "v|1:1", "state": "healthy", "n": 2, "k": 1,
///                         "p": 3, "unit_size": 1048576}]}],
///   "fs_stats": {"free_seg": 0, "total_seg": 0, "free_disk": 10, "avail_disk": 10,
///                "total_disk": 20, "svc_total": 3, "svc_replied": 3},
///   "counters": [{"ios": "r|1:20",
///                 "counts": [{"pver": "v|1:1", "user_id": 0, "byte_count": 4096,
///                             "object_count": 1}]}],
///   "sns_rate": 10
/// }
/// ```
///
/// Fids in any form [`Fid`] parses; states `healthy`, `degraded`, `critical`,
/// `damaged`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Model {
    /// Pools, defined in order.
    pub pools: Vec<PoolDef>,
    /// Filesystem stats, if set.
    pub fs_stats: Option<FsStats>,
    /// Byte counts per ioservice process.
    pub counters: Vec<(Fid, Vec<PverByteCount>)>,
    /// Progress rate, if set.
    pub sns_rate: Option<u32>,
}

impl Model {
    /// The control operations that build this model on a cleared emulator.
    pub fn ops(&self) -> Vec<CtlOp> {
        let mut v: Vec<CtlOp> = self.pools.iter().cloned().map(CtlOp::Pool).collect();
        v.extend(self.fs_stats.map(CtlOp::FsStats));
        v.extend(self.counters.iter().map(|(ios, counts)| CtlOp::Counters {
            ios: *ios,
            counts: counts.clone(),
        }));
        v.extend(self.sns_rate.map(CtlOp::SnsRate));
        v
    }

    /// Reads the JSON form.
    pub fn from_json(text: &str) -> Result<Model, ControlError> {
        let v: Value = serde_json::from_str(text).map_err(|e| bad(format!("not JSON: {e}")))?;
        let top = obj(&v, "the model")?;
        let mut m = Model::default();
        for (i, p) in arr(top.get("pools"), "pools")?.iter().enumerate() {
            let at = format!("pools[{i}]");
            let o = obj(p, &at)?;
            let ioservices = arr(o.get("ioservices"), &format!("{at}.ioservices"))?
                .iter()
                .enumerate()
                .map(|(j, f)| fid(Some(f), &format!("{at}.ioservices[{j}]")))
                .collect::<Result<_, _>>()?;
            let mut pvers = Vec::new();
            for (j, pv) in arr(o.get("pvers"), &format!("{at}.pvers"))?
                .iter()
                .enumerate()
            {
                let at = format!("{at}.pvers[{j}]");
                let po = obj(pv, &at)?;
                pvers.push(PverDef {
                    fid: fid(po.get("fid"), &format!("{at}.fid"))?,
                    state: match po.get("state") {
                        None => PverState::Healthy,
                        Some(s) => pver_state(s, &format!("{at}.state"))?,
                    },
                    data_units: u32_of(po.get("n"), &format!("{at}.n"))?,
                    parity_units: u32_of(po.get("k"), &format!("{at}.k"))?,
                    pool_width: u32_of(po.get("p"), &format!("{at}.p"))?,
                    unit_size: u64_of(po.get("unit_size"), &format!("{at}.unit_size"))?,
                });
            }
            m.pools.push(PoolDef {
                fid: fid(o.get("fid"), &format!("{at}.fid"))?,
                ioservices,
                pvers,
            });
        }
        if let Some(s) = top.get("fs_stats") {
            let o = obj(s, "fs_stats")?;
            let g = |k: &str| u64_of(o.get(k), &format!("fs_stats.{k}"));
            let g32 = |k: &str| u32_of(o.get(k), &format!("fs_stats.{k}"));
            m.fs_stats = Some(FsStats {
                free_seg: g("free_seg")?,
                total_seg: g("total_seg")?,
                free_disk: g("free_disk")?,
                avail_disk: g("avail_disk")?,
                total_disk: g("total_disk")?,
                svc_total: g32("svc_total")?,
                svc_replied: g32("svc_replied")?,
            });
        }
        for (i, c) in arr(top.get("counters"), "counters")?.iter().enumerate() {
            let at = format!("counters[{i}]");
            let o = obj(c, &at)?;
            let ios = fid(o.get("ios"), &format!("{at}.ios"))?;
            let mut counts = Vec::new();
            for (j, e) in arr(o.get("counts"), &format!("{at}.counts"))?
                .iter()
                .enumerate()
            {
                let at = format!("{at}.counts[{j}]");
                let eo = obj(e, &at)?;
                counts.push(PverByteCount {
                    pver: fid(eo.get("pver"), &format!("{at}.pver"))?,
                    user_id: u64_of(eo.get("user_id"), &format!("{at}.user_id"))?,
                    byte_count: u64_of(eo.get("byte_count"), &format!("{at}.byte_count"))?,
                    object_count: u64_of(eo.get("object_count"), &format!("{at}.object_count"))?,
                });
            }
            m.counters.push((ios, counts));
        }
        if let Some(r) = top.get("sns_rate") {
            m.sns_rate = Some(u32_of(Some(r), "sns_rate")?);
        }
        Ok(m)
    }
}

fn bad(s: String) -> ControlError {
    ControlError::Model(s)
}

fn obj<'a>(v: &'a Value, at: &str) -> Result<&'a serde_json::Map<String, Value>, ControlError> {
    v.as_object()
        .ok_or_else(|| bad(format!("{at} is not an object")))
}

fn arr<'a>(v: Option<&'a Value>, at: &str) -> Result<&'a [Value], ControlError> {
    match v {
        None => Ok(&[]),
        Some(v) => v
            .as_array()
            .map(Vec::as_slice)
            .ok_or_else(|| bad(format!("{at} is not an array"))),
    }
}

fn fid(v: Option<&Value>, at: &str) -> Result<Fid, ControlError> {
    let s = v
        .and_then(Value::as_str)
        .ok_or_else(|| bad(format!("{at} is missing or not a string")))?;
    s.parse::<Fid>().map_err(|e| bad(format!("{at}: {e}")))
}

fn u64_of(v: Option<&Value>, at: &str) -> Result<u64, ControlError> {
    v.and_then(Value::as_u64)
        .ok_or_else(|| bad(format!("{at} is missing or not an unsigned integer")))
}

fn u32_of(v: Option<&Value>, at: &str) -> Result<u32, ControlError> {
    u32::try_from(u64_of(v, at)?).map_err(|_| bad(format!("{at} is over {}", u32::MAX)))
}

fn pver_state(v: &Value, at: &str) -> Result<PverState, ControlError> {
    match v.as_str() {
        Some("healthy") => Ok(PverState::Healthy),
        Some("degraded") => Ok(PverState::Degraded),
        Some("critical") => Ok(PverState::Critical),
        Some("damaged") => Ok(PverState::Damaged),
        _ => Err(bad(format!(
            "{at} must be healthy, degraded, critical or damaged"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hax_core::FidType;

    #[test]
    fn a_model_reads_from_json_into_operations() {
        let m = Model::from_json(
            r#"{
              "pools": [{"fid": "o|1:1", "ioservices": ["s|1:100", "0x7300000000000001:0x65"],
                         "pvers": [{"fid": "v|1:1", "state": "degraded", "n": 2, "k": 1,
                                    "p": 3, "unit_size": 4096},
                                   {"fid": "v|1:2", "n": 1, "k": 0, "p": 1, "unit_size": 1}]}],
              "fs_stats": {"free_seg": 1, "total_seg": 2, "free_disk": 3, "avail_disk": 4,
                           "total_disk": 5, "svc_total": 6, "svc_replied": 7},
              "counters": [{"ios": "r|1:20", "counts": [{"pver": "v|1:1", "user_id": 0,
                            "byte_count": 4096, "object_count": 1}]}],
              "sns_rate": 25
            }"#,
        )
        .expect("model");
        let ops = m.ops();
        assert_eq!(ops.len(), 4);
        let CtlOp::Pool(p) = &ops[0] else {
            panic!("{:?}", ops[0])
        };
        assert_eq!(p.fid, Fid::typed(FidType::Pool, 1, 1));
        assert_eq!(p.ioservices[1], Fid::typed(FidType::Service, 1, 0x65));
        assert_eq!(p.pvers[0].state, PverState::Degraded);
        assert_eq!(
            p.pvers[1].state,
            PverState::Healthy,
            "state defaults to healthy"
        );
        assert_eq!((p.pvers[0].data_units, p.pvers[0].parity_units), (2, 1));
        assert!(matches!(ops[1], CtlOp::FsStats(s) if s.svc_replied == 7));
        assert!(
            matches!(&ops[2], CtlOp::Counters { ios, counts } if ios.key == 20 && counts[0].byte_count == 4096)
        );
        assert_eq!(ops[3], CtlOp::SnsRate(25));
        assert_eq!(Model::from_json("{}").expect("empty").ops(), vec![]);
    }

    #[test]
    fn bad_models_say_where() {
        for (text, at) in [
            ("[]", "the model is not an object"),
            ("{\"pools\": {}}", "pools is not an array"),
            ("{\"pools\": [{\"fid\": \"x\"}]}", "pools[0].fid"),
            (
                "{\"pools\": [{\"fid\": \"o|1:1\", \"pvers\": [{\"fid\": \"v|1:1\", \"n\": -1}]}]}",
                "pools[0].pvers[0].n",
            ),
            (
                "{\"pools\": [{\"fid\": \"o|1:1\", \"pvers\": [{\"fid\": \"v|1:1\", \"state\": \"ok\"}]}]}",
                "pools[0].pvers[0].state",
            ),
            ("{\"sns_rate\": 5000000000}", "sns_rate is over"),
            ("{\"fs_stats\": {\"free_seg\": 1}}", "fs_stats.total_seg"),
            ("not json", "not JSON"),
        ] {
            match Model::from_json(text) {
                Err(ControlError::Model(m)) => assert!(m.contains(at), "{text}: {m}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }
}

//! The records hax writes into Consul for what Motr processes tell it:
//! process states, their BQ messages, STOB I/O errors, restart counts.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hax_consul::pyjson;
use hax_consul::schema::{
    self, keys, ProcessStateUpdate, ProcessStatus, QueueMessage, SchemaError, StobId,
};
use hax_core::Fid;

use crate::model::civil::CivilTime;
use crate::model::vocab::fid_text;
use crate::model::StobIoqError;
use hax_consul::writer::{WriteError, WriteOp};

/// The payload of the EQ `stob-ioq` event (the original's `StobIoqError`
/// JSON).
pub fn stob_ioq_payload(fid: Fid, e: &StobIoqError) -> schema::StobIoqError {
    schema::StobIoqError {
        fid: fid_text(fid),
        conf_sdev: fid_text(e.conf_sdev),
        stob_id: StobId {
            domain_fid: fid_text(e.stob_domain),
            fid: fid_text(e.stob_fid),
        },
        fd: e.fd,
        opcode: e.opcode,
        rc: e.rc,
        offset: e.offset,
        size: e.size,
        bshift: e.bshift,
    }
}

/// Queue message time stamps: `YYYY-MM-DD HH:MM:SS.ffffff` as the original
/// writes them (consumers ignore them), in UTC.
pub fn timestamp_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format_timestamp(d)
}

pub(crate) fn format_timestamp(since_epoch: Duration) -> String {
    let t = CivilTime::from_epoch(since_epoch);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}",
        t.year, t.month, t.day, t.hour, t.minute, t.second, t.micros
    )
}

/// A BQ `PROCESS-STATE-UPDATE` message.
pub fn process_state_message(fid: Fid, status: ProcessStatus) -> QueueMessage {
    let payload = ProcessStateUpdate {
        fid: fid_text(fid),
        state: status.state,
        kind: status.kind,
    };
    QueueMessage::new(
        timestamp_now(),
        "PROCESS-STATE-UPDATE",
        serde_json::to_value(payload).unwrap_or_default(),
    )
}

/// The `processes/<fid>` write of a status.
pub fn process_status_write(fid: Fid, status: ProcessStatus) -> Result<WriteOp, WriteError> {
    let key = keys::process(fid_text(fid));
    let value = pyjson::to_string(&status).map_err(|e| WriteError::Invalid {
        key: key.clone(),
        reason: e.to_string(),
    })?;
    Ok(WriteOp::put(key, value))
}

/// The `<node>/process_restarts/<fid>` write of a count (a JSON string such
/// as `"2"`).
pub fn restart_count_write(node: &str, fid: Fid, count: u64) -> Result<WriteOp, SchemaError> {
    let key = keys::process_restarts(node, fid_text(fid))?;
    let value = pyjson::to_string(&count.to_string()).map_err(|e| SchemaError::BadValue {
        key: key.clone(),
        reason: e.to_string(),
    })?;
    Ok(WriteOp::put(key, value))
}

//! A stale RC leader session, destroyed at start.
//!
//! hare elects the RC leader by a session acquiring `leader` and writing its
//! node name there. `hctl shutdown` may leave the session alive with a stub
//! value (`elect<N>`, written while an election was under way) or none at
//! all; the lock is then held by nobody who leads, and no new election can
//! take it. The original hax destroys such a session when it starts; so does
//! this one: a session holding `leader` whose value is empty or `elect<N>`.
//! A session whose value names a node is a leader's, and is left alone.

use hax_consul::schema::keys;
use hax_consul::{ConsulClient, ConsulError};

/// Whether `value` (the text of `leader`) is what no leader writes: empty,
/// or the stub `elect<digits>`.
pub fn is_stub(value: &[u8]) -> bool {
    let v = String::from_utf8_lossy(value);
    let v = v.trim().trim_matches('"');
    v.is_empty()
        || v.strip_prefix("elect")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Destroys the session holding `leader` when its value is a stub; returns
/// the session destroyed, if any.
pub async fn remove_stale_session(client: &ConsulClient) -> Result<Option<String>, ConsulError> {
    let Some(pair) = client.kv_get(keys::LEADER).await?.value else {
        // A fresh KV: there can be no stale session.
        return Ok(None);
    };
    let Some(session) = pair.session.filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    if !is_stub(&pair.value) {
        return Ok(None);
    }
    client.session_destroy(&session).await?;
    tracing::info!(%session, value = %String::from_utf8_lossy(&pair.value), "stale RC leader session destroyed, so that a leader can be elected");
    Ok(Some(session))
}

#[cfg(test)]
mod tests {
    use super::is_stub;

    #[test]
    fn stubs_are_empty_or_elect_and_digits() {
        for v in ["", " ", "elect2805", "\"elect7\""] {
            assert!(is_stub(v.as_bytes()), "{v:?}");
        }
        for v in ["srvnode-1", "elect", "electx1", "node-elect2", "elect12a"] {
            assert!(!is_stub(v.as_bytes()), "{v:?}");
        }
    }
}

//! `hax sns repair|rebalance start|stop|pause|resume|status POOL`: the
//! daemon's SNS routes, the pool named by fid or by its name in
//! `m0conf/pools/`.

use hax_core::{Fid, FidType};
use hax_ha::http::status::ClusterStatus;
use serde::Deserialize;

use super::daemon_api::DaemonApi;
use super::CmdError;
use crate::cli::{SnsAction, SnsArgs};
use crate::config::Config;

/// What an unreachable daemon's message ends with.
const HINT: &str = "; is hax running?";

/// One ioservice's entry of a status answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StatusEntry {
    /// The ioservice.
    pub fid: String,
    /// Motr's `m0_cm_status`.
    pub state: i32,
    /// Its progress, as Motr reports it.
    pub progress: u64,
}

/// The word of an `m0_cm_status` number.
pub fn state_word(state: i32) -> String {
    match state {
        0 => "invalid".into(),
        1 => "idle".into(),
        2 => "started".into(),
        3 => "failed".into(),
        4 => "paused".into(),
        n => format!("state-{n}"),
    }
}

/// The pool `given` names, with its name when it was given by name.
/// A fid is taken as it is (the daemon says whether Motr knows it); a name
/// is looked up in the daemon's list of pools.
pub async fn resolve_pool(api: &DaemonApi, given: &str) -> Result<(Fid, Option<String>), CmdError> {
    let given = given.trim();
    if given.is_empty() {
        return Err(CmdError::Usage("POOL: empty".into()));
    }
    if let Ok(fid) = given.parse::<Fid>() {
        if !fid.is(FidType::Pool) {
            return Err(CmdError::Usage(format!(
                "{fid} is not a pool fid (type '{}')",
                FidType::Pool.letter()
            )));
        }
        return Ok((fid, None));
    }
    let body = api.get("/v1/cluster/status").await?;
    let status: ClusterStatus = serde_json::from_str(&body).map_err(|e| CmdError::Refused {
        url: api.url().to_owned(),
        status: 200,
        message: format!("not a cluster status: {e}"),
    })?;
    let found: Vec<_> = status.pools.iter().filter(|p| p.name == given).collect();
    match found.as_slice() {
        [one] => {
            let fid = one
                .fid
                .to_string()
                .parse::<Fid>()
                .map_err(|e| CmdError::Refused {
                    url: api.url().to_owned(),
                    status: 200,
                    message: format!("pool {given:?} has a bad fid: {e}"),
                })?;
            Ok((fid, Some(given.to_owned())))
        }
        [] => {
            let known: Vec<String> = status
                .pools
                .iter()
                .map(|p| format!("{} '{}'", p.fid, p.name))
                .collect();
            Err(CmdError::NotFound(format!(
                "no pool named {given:?} in m0conf/pools/ (pools: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )))
        }
        many => Err(CmdError::NotFound(format!(
            "{} pools are named {given:?}: give its fid ({})",
            many.len(),
            many.iter()
                .map(|p| p.fid.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn pool_text(fid: Fid, name: Option<&str>) -> String {
    match name {
        Some(n) => format!("{fid} '{n}'"),
        None => fid.to_string(),
    }
}

/// Runs `hax sns`: the text to print.
pub async fn run(cfg: &Config, args: &SnsArgs) -> Result<String, CmdError> {
    let mut api = DaemonApi::new(cfg, &args.client, HINT).await?;
    let kind = args.kind.as_str();
    if args.action != SnsAction::Status {
        // Read before anything is asked: a token file that cannot be read
        // is a configuration error, not a refusal.
        api = api.with_token(cfg.http_token()?);
    }
    let (pool, name) = resolve_pool(&api, &args.pool).await?;
    let pool_text = pool_text(pool, name.as_deref());
    if args.action == SnsAction::Status {
        let body = api
            .get(&format!("/api/v1/sns/{kind}-status?pool_fid={pool}"))
            .await?;
        if args.client.json {
            return Ok(with_newline(body));
        }
        let entries: Vec<StatusEntry> =
            serde_json::from_str(&body).map_err(|e| CmdError::Refused {
                url: api.url().to_owned(),
                status: 200,
                message: format!("not an SNS status: {e}"),
            })?;
        return Ok(render_status(kind, &pool_text, &entries));
    }
    let action = args.action.as_str();
    let body = api
        .post_json(
            &format!("/api/v1/sns/{kind}-{action}"),
            &serde_json::json!({ "fid": pool.to_string() }),
        )
        .await?;
    if args.client.json {
        return Ok(with_newline(body));
    }
    Ok(format!(
        "{kind} {action}: done by Motr for pool {pool_text} (see `hax sns {kind} status {pool}`)\n"
    ))
}

fn with_newline(mut body: String) -> String {
    if !body.ends_with('\n') {
        body.push('\n');
    }
    body
}

/// A status answer as text: one line per ioservice of the pool.
pub fn render_status(kind: &str, pool: &str, entries: &[StatusEntry]) -> String {
    let mut out = format!("SNS {kind} of pool {pool}:\n");
    out.push_str(&format!(
        "    # {:<21}  {:<8}  progress\n",
        "ioservice", "state"
    ));
    for e in entries {
        out.push_str(&format!(
            "    {:<23}  {:<8}  {}\n",
            e.fid,
            state_word(e.state),
            e.progress
        ));
    }
    if entries.is_empty() {
        out.push_str("    (no ioservice answered)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_have_motr_words() {
        let words: Vec<String> = (0..=5).map(state_word).collect();
        assert_eq!(
            words,
            ["invalid", "idle", "started", "failed", "paused", "state-5"]
        );
    }

    #[test]
    fn status_as_text() {
        let entries = [
            StatusEntry {
                fid: "0x7200000000000001:0xc".into(),
                state: 2,
                progress: 40,
            },
            StatusEntry {
                fid: "0x7200000000000001:0x14".into(),
                state: 4,
                progress: 0,
            },
        ];
        assert_eq!(
            render_status("repair", "0x6f00000000000001:0x9 'tier1'", &entries),
            "\
SNS repair of pool 0x6f00000000000001:0x9 'tier1':
    # ioservice              state     progress
    0x7200000000000001:0xc   started   40
    0x7200000000000001:0x14  paused    0
"
        );
        assert!(render_status("rebalance", "p", &[]).ends_with("(no ioservice answered)\n"));
    }
}

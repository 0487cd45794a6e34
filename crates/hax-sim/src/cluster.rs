//! N simulated processes at once: [`SimCluster`].

use std::time::Duration;

use hax_core::{Fid, FidType};
use tokio::task::JoinSet;

use crate::process::{SimConfig, SimError, SimProcess, SimStats, Violation};

/// Configurations of `count` processes: fids `r|1:(fid_base+i)`, each with its
/// own endpoint, pid and IOS service (see [`SimConfig::new`]).
pub fn configs(ha_endpoint: &str, count: usize, fid_base: u64) -> Vec<SimConfig> {
    (0..count as u64)
        .map(|i| SimConfig::new(ha_endpoint, Fid::typed(FidType::Process, 1, fid_base + i)))
        .collect()
}

/// A set of connected simulated processes.
#[derive(Debug)]
pub struct SimCluster {
    procs: Vec<SimProcess>,
}

impl SimCluster {
    /// Connects one process per configuration, all at once. If any fails, the
    /// others are closed and the first error (in configuration order) is
    /// returned.
    pub async fn connect(configs: Vec<SimConfig>) -> Result<SimCluster, SimError> {
        let mut set = JoinSet::new();
        for (i, cfg) in configs.into_iter().enumerate() {
            set.spawn(async move { (i, SimProcess::connect(cfg).await) });
        }
        let mut results: Vec<(usize, Result<SimProcess, SimError>)> = Vec::new();
        while let Some(r) = set.join_next().await {
            match r {
                Ok(r) => results.push(r),
                Err(e) => {
                    return Err(SimError::ConnectionLost(format!(
                        "a connecting task failed: {e}"
                    )))
                }
            }
        }
        results.sort_by_key(|(i, _)| *i);
        let mut procs = Vec::with_capacity(results.len());
        let mut first_err = None;
        for (_, r) in results {
            match r {
                Ok(p) => procs.push(p),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            for p in &procs {
                p.close();
            }
            return Err(e);
        }
        Ok(SimCluster { procs })
    }

    /// The processes, in configuration order.
    pub fn processes(&self) -> &[SimProcess] {
        &self.procs
    }

    /// Process `i`.
    pub fn get(&self, i: usize) -> Option<&SimProcess> {
        self.procs.get(i)
    }

    /// The process with `fid`.
    pub fn by_fid(&self, fid: Fid) -> Option<&SimProcess> {
        self.procs.iter().find(|p| p.fid() == fid)
    }

    /// How many processes.
    pub fn len(&self) -> usize {
        self.procs.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.procs.is_empty()
    }

    /// Counters summed over every process.
    pub fn stats(&self) -> SimStats {
        let mut s = SimStats::default();
        for p in &self.procs {
            s.add(&p.stats());
        }
        s
    }

    /// Every protocol violation seen, with the process that saw it.
    pub fn violations(&self) -> Vec<(Fid, Violation)> {
        self.procs
            .iter()
            .flat_map(|p| p.violations().into_iter().map(move |v| (p.fid(), v)))
            .collect()
    }

    /// Waits until hax confirmed every message every process sent.
    pub async fn wait_all_confirmed(&self, timeout: Duration) -> Result<(), SimError> {
        let deadline = tokio::time::Instant::now() + timeout;
        for p in &self.procs {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            p.wait_all_confirmed(left).await?;
        }
        Ok(())
    }

    /// Waits until every process received at least `n` messages.
    pub async fn wait_received(&self, n: usize, timeout: Duration) -> Result<(), SimError> {
        let deadline = tokio::time::Instant::now() + timeout;
        for p in &self.procs {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            p.wait_received(n, left).await?;
        }
        Ok(())
    }

    /// Closes every process.
    pub fn close(&self) {
        for p in &self.procs {
            p.close();
        }
    }

    /// The processes, taken out.
    pub fn into_processes(self) -> Vec<SimProcess> {
        self.procs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinct_fids_and_endpoints() {
        let c = configs("inet:tcp:127.0.0.1@1", 16, 10);
        assert_eq!(c[0].fid, Fid::typed(FidType::Process, 1, 10));
        assert_eq!(c[15].fid, Fid::typed(FidType::Process, 1, 25));
        let mut eps: Vec<_> = c.iter().map(|c| c.endpoint.clone()).collect();
        eps.sort();
        eps.dedup();
        assert_eq!(eps.len(), 16);
        let mut pids: Vec<_> = c.iter().map(|c| c.pid).collect();
        pids.dedup();
        assert_eq!(pids.len(), 16);
    }
}

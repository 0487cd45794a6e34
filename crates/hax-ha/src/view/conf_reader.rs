//! Reading `m0conf/` into a [`ConfTree`] that never fails as a whole: each
//! entry stands alone, and an entry hax cannot use is left out and reported
//! once with its key, however many snapshots of the prefix carry it.

use std::collections::BTreeMap;

use hax_consul::schema::ConfTree;
use hax_consul::KvPair;

use super::reported::Reported;

/// Parses snapshots of `m0conf/` and remembers what it has reported.
#[derive(Debug, Default)]
pub(super) struct ConfReader {
    malformed: Reported,
    unknown: Reported,
}

impl ConfReader {
    /// The tree of one snapshot, without the entries hax cannot use.
    pub(super) fn read(&mut self, pairs: &BTreeMap<String, KvPair>) -> ConfTree {
        let tree = ConfTree::from_pairs_tolerant(pairs.values());
        let bad = tree
            .malformed
            .iter()
            .map(|m| (m.key.as_str(), m.modify_index, m.reason.as_str()));
        for (key, _, reason) in self.malformed.update(bad) {
            tracing::warn!(%key, %reason, "configuration entry ignored: its value is not usable");
        }
        let unknown = tree.unrecognised.iter().map(|k| (k.as_str(), 0, ()));
        for (key, _, ()) in self.unknown.update(unknown) {
            tracing::info!(%key, "configuration key of an unknown shape ignored");
        }
        tree
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(entries: &[(&str, &str, u64)]) -> BTreeMap<String, KvPair> {
        entries
            .iter()
            .map(|(k, v, i)| {
                let p = KvPair {
                    key: (*k).into(),
                    value: v.as_bytes().to_vec(),
                    flags: 0,
                    create_index: 1,
                    modify_index: *i,
                    lock_index: 0,
                    session: None,
                };
                ((*k).to_owned(), p)
            })
            .collect()
    }

    #[test]
    fn entries_hax_cannot_use_are_remembered_until_rewritten() {
        let node = "m0conf/nodes/0x6e00000000000001:0x0";
        let svc = "m0conf/nodes/srvnode-1/processes/1/services/confd";
        let mut r = ConfReader::default();
        let bad = pairs(&[(node, "{not json", 4), (svc, "3", 5)]);
        let tree = r.read(&bad);
        assert_eq!(tree.entries.len(), 1);
        assert_eq!(tree.malformed.len(), 1);
        assert_eq!(r.malformed.len(), 1);
        r.read(&bad);
        assert_eq!(r.malformed.len(), 1);
        // Repaired: forgotten, so that a later bad write is reported.
        let tree = r.read(&pairs(&[
            (
                node,
                r#"{"name": "srvnode-1", "state": "M0_NC_UNKNOWN"}"#,
                7,
            ),
            (svc, "3", 5),
        ]));
        assert_eq!(tree.entries.len(), 2);
        assert_eq!(r.malformed.len(), 0);
    }
}

//! The view sample of [`hax_testkit::view_sample`], and the view data it
//! makes, for the unit tests.

pub use hax_testkit::view_sample::*;

use hax_testkit::view_sample::{
    conf_pairs as sample_conf_pairs, health_entries as sample_health_entries,
    process_statuses as sample_process_statuses,
};

use std::collections::BTreeMap;

use hax_consul::schema::ConfTree;

use crate::view::ViewData;

/// The whole sample as seen from node 1's hax, everything healthy.
pub fn view_data() -> ViewData {
    ViewData {
        local_node: Sample::NODE1_NAME.to_owned(),
        hax_fid: Sample::HAX1,
        conf: ConfTree::from_pairs(&sample_conf_pairs())
            .unwrap_or_else(|e| panic!("sample configuration: {e}")),
        processes: sample_process_statuses(),
        health: sample_health_entries(&[], true),
        consul_nodes: [
            (Sample::NODE1_NAME.to_owned(), Sample::CONSUL1.to_owned()),
            (Sample::NODE2_NAME.to_owned(), Sample::CONSUL2.to_owned()),
        ]
        .into_iter()
        .collect(),
        leader: None,
        leader_session_node: None,
        confds: Vec::new(),
        client_types: vec!["m0_client_s3".to_owned()],
        dynamic_fids: BTreeMap::new(),
    }
}

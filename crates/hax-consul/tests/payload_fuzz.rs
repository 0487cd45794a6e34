//! The watch payload decoders never panic, whatever the input.

use hax_consul::server::{
    decode_bq_payload, decode_checks_payload, decode_hax_service_payload, decode_key_payload,
    decode_keyprefix_payload, decode_processes_payload, decode_service_payload,
};
use proptest::prelude::*;

fn all_decoders(body: &[u8]) {
    let _ = decode_key_payload(body);
    let _ = decode_keyprefix_payload(body);
    let _ = decode_service_payload(body);
    let _ = decode_hax_service_payload(body);
    let _ = decode_checks_payload(body);
    let _ = decode_bq_payload(body);
    let _ = decode_processes_payload(body);
}

/// JSON-looking text built from the pieces real payloads are made of, so
/// that the generator reaches deep into the decoders, not only the parser.
fn jsonish() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        Just("null".to_owned()),
        Just("true".to_owned()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| n.to_string()),
        "[a-zA-Z0-9+/=:_\\-]{0,24}".prop_map(|s| format!("\"{s}\"")),
        Just("\"processes/0x7200000000000001:0x6\"".to_owned()),
        Just("\"bq/18446744073709551616\"".to_owned()),
        Just("\"eyJzdGF0ZSI6IDF9\"".to_owned()),
    ];
    let key = prop_oneof![
        Just("Key"),
        Just("Value"),
        Just("Node"),
        Just("Service"),
        Just("Checks"),
        Just("ID"),
        Just("Status"),
        Just("ServiceID"),
        Just("CheckID"),
        Just("Flags"),
        Just("ModifyIndex"),
        Just("Session"),
        Just("Meta"),
        Just("Port"),
    ];
    atom.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec((key.clone(), inner), 0..8).prop_map(|kv| {
                let fields: Vec<String> = kv
                    .into_iter()
                    .map(|(k, v)| format!("\"{k}\":{v}"))
                    .collect();
                format!("{{{}}}", fields.join(","))
            }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        all_decoders(&body);
    }

    #[test]
    fn structured_json_never_panics(body in jsonish()) {
        all_decoders(body.as_bytes());
    }
}

//! What decoding a watch payload costs in memory, against the body's size.

use hax_consul::server::{
    decode_bq_payload_above, decode_checks_payload, decode_hax_service_payload, decode_key_payload,
    decode_keyprefix_payload, decode_processes_payload, decode_service_payload,
};
use peak_alloc::PeakAlloc;

/// Counts the bytes allocated (a reallocation as a new block and the old
/// one at once, as when it moves).
#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc;

/// Bytes above what was allocated before `f`, at `f`'s peak.
fn peak_of<R>(f: impl FnOnce() -> R) -> usize {
    let base = ALLOC.current_usage();
    ALLOC.reset_peak_usage();
    let r = f();
    let peak = ALLOC.peak_usage();
    drop(r);
    peak - base
}

fn array(n: usize, item: &str) -> Vec<u8> {
    let mut s = String::with_capacity(n * (item.len() + 1) + 2);
    s.push('[');
    for i in 0..n {
        if i > 0 {
            s.push(',');
        }
        s.push_str(item);
    }
    s.push(']');
    s.into_bytes()
}

fn object_of(prefix: &str, inner: &[u8], suffix: &str) -> Vec<u8> {
    let mut v = prefix.as_bytes().to_vec();
    v.extend_from_slice(inner);
    v.extend_from_slice(suffix.as_bytes());
    v
}

fn numbered(n: usize, f: impl Fn(usize) -> String) -> String {
    (0..n).map(f).collect::<Vec<_>>().join(",")
}

/// A `bq/<epoch>` entry as Consul posts it, with a real message.
fn bq_entry(epoch: usize) -> String {
    use base64::Engine as _;
    let message = format!(
        r#"{{"message_type": "PROCESS-STATE-UPDATE", "payload": {{"fid": "0x7200000000000001:0x{epoch:x}", "state": "M0_CONF_HA_PROCESS_STARTED", "type": "M0_CONF_HA_PROCESS_M0D"}}, "timestamp": "2024-05-01T10:00:00.123456Z"}}"#
    );
    let value = base64::engine::general_purpose::STANDARD.encode(message);
    format!(
        r#"{{"LockIndex":0,"Key":"bq/{epoch}","Flags":0,"Value":"{value}","CreateIndex":{epoch},"ModifyIndex":{epoch}}}"#
    )
}

/// A health entry of a service as Consul 1.8 posts it.
const SERVICE_ENTRY: &str = r#"{"Node":{"ID":"40e4a748-2192-161a-0510-9bf59fe950b5","Node":"srvnode-1","Address":"192.168.1.10","Datacenter":"dc1","TaggedAddresses":{"lan":"192.168.1.10","wan":"10.0.10.10"},"Meta":{"consul-network-segment":""},"CreateIndex":12,"ModifyIndex":15},"Service":{"ID":"6","Service":"ios","Tags":[],"Address":"192.168.1.10","TaggedAddresses":null,"Meta":null,"Port":3001,"Weights":{"Passing":1,"Warning":1},"EnableTagOverride":false,"Proxy":{"MeshGateway":{},"Expose":{}},"Connect":{},"CreateIndex":21,"ModifyIndex":21},"Checks":[{"Node":"srvnode-1","CheckID":"serfHealth","Name":"Serf Health Status","Status":"passing","Notes":"","Output":"Agent alive and reachable","ServiceID":"","ServiceName":"","ServiceTags":[],"Type":"","Definition":{},"CreateIndex":12,"ModifyIndex":12},{"Node":"srvnode-1","CheckID":"service:6","Name":"Service 'ios' check","Status":"passing","Notes":"","Output":"","ServiceID":"6","ServiceName":"ios","ServiceTags":[],"Type":"script","Definition":{},"CreateIndex":21,"ModifyIndex":40}]}"#;

/// A check as Consul 1.8 posts it.
const CHECK: &str = r#"{"Node":"srvnode-1","CheckID":"service:6","Name":"Service 'ios' check","Status":"critical","Notes":"","Output":"exit status 1","ServiceID":"6","ServiceName":"ios","ServiceTags":[],"Type":"script","Definition":{},"CreateIndex":21,"ModifyIndex":40}"#;

const SIZE: usize = 2 << 20;

type Decoder = fn(&[u8]) -> bool;

const DECODERS: [(&str, Decoder); 7] = [
    ("key", |b| decode_key_payload(b).is_ok()),
    ("keyprefix", |b| decode_keyprefix_payload(b).is_ok()),
    ("service", |b| decode_service_payload(b).is_ok()),
    ("hax service", |b| decode_hax_service_payload(b).is_ok()),
    ("checks", |b| decode_checks_payload(b).is_ok()),
    ("bq", |b| decode_bq_payload_above(b, 0).is_ok()),
    ("processes", |b| decode_processes_payload(b).is_ok()),
];

/// Runs `decode` on `body`: whether it decoded, and its peak against the
/// body's size.
fn measure(what: &str, route: &str, decode: Decoder, body: &[u8]) -> (bool, f64) {
    let mut ok = false;
    let peak = peak_of(|| ok = decode(body));
    let factor = peak as f64 / body.len() as f64;
    eprintln!(
        "{what:>16} ({:.1} MiB) on {route:>11}: {} peak {:.1} MiB, x{factor:.2}",
        body.len() as f64 / (1 << 20) as f64,
        if ok { "decoded," } else { "refused," },
        peak as f64 / (1 << 20) as f64
    );
    (ok, factor)
}

/// One test in this binary: the allocation counters are global.
#[test]
fn decoding_costs_a_small_multiple_of_the_body() {
    // What Consul posts decodes, in about its size.
    let bq = format!(
        "[{}]",
        numbered(SIZE / bq_entry(1_000_000).len(), |i| bq_entry(
            1_000_000 + i
        ))
    );
    let legit: [(&str, &str, Vec<u8>); 5] = [
        ("bq entries", "bq", bq.clone().into_bytes()),
        ("bq entries", "keyprefix", bq.into_bytes()),
        (
            "service entries",
            "service",
            array(SIZE / SERVICE_ENTRY.len(), SERVICE_ENTRY),
        ),
        (
            "service entries",
            "hax service",
            array(SIZE / SERVICE_ENTRY.len(), SERVICE_ENTRY),
        ),
        ("checks", "checks", array(SIZE / CHECK.len(), CHECK)),
    ];
    for (what, route, body) in &legit {
        let (_, decode) = DECODERS
            .iter()
            .find(|(r, _)| r == route)
            .expect("a decoder");
        let (ok, factor) = measure(what, route, *decode, body);
        assert!(ok, "{what} refused by the {route} decoder");
        assert!(factor < 3.0, "{what} on {route}: x{factor:.2}");
    }
    let bq = &legit[0].2;
    let entries = decode_bq_payload_above(bq, 0).expect("decodes");
    assert!(
        entries.iter().all(|e| e.message.is_ok()),
        "a message of a real BQ was not decoded: {:?}",
        entries.iter().find(|e| e.message.is_err())
    );

    // Bodies built to blow up, on every route: refused before they do.
    let service = r#"{"Node":{"Node":""},"Service":{"ID":"1","Service":""}}"#;
    let check = r#"{"CheckID":"","Status":"passing"}"#;
    let hostile: Vec<(&str, Vec<u8>)> = vec![
        ("empty arrays", array(SIZE / 3, "[]")),
        ("empty objects", array(SIZE / 3, "{}")),
        ("zeros", array(SIZE / 2, "0")),
        ("kv pairs", array(SIZE / 11, r#"{"Key":""}"#)),
        ("bq pairs", array(SIZE / 15, r#"{"Key":"bq/1"}"#)),
        ("service entries", array(SIZE / 55, service)),
        ("checks", array(SIZE / 34, check)),
        (
            "tags",
            object_of(
                r#"[{"Node":{"Node":""},"Service":{"ID":"1","Service":"","Tags":"#,
                &array(SIZE / 3, r#""""#),
                "}}]",
            ),
        ),
        (
            "meta",
            format!(
                r#"[{{"Node":{{"Node":""}},"Service":{{"ID":"1","Service":"","Meta":{{{}}}}}}}]"#,
                numbered(SIZE / 12, |i| format!(r#""{i}":"""#))
            )
            .into_bytes(),
        ),
        (
            "nested checks",
            object_of(
                r#"[{"Node":{"Node":""},"Service":{"ID":"1","Service":""},"Checks":"#,
                &array(SIZE / 34, check),
                "}]",
            ),
        ),
        (
            "junk in a key",
            object_of(
                r#"{"Key":"processes/0x7200000000000001:0x6","Junk":"#,
                &array(SIZE / 3, "[]"),
                "}",
            ),
        ),
    ];
    let mut worst = 0.0f64;
    for (what, body) in &hostile {
        for (route, decode) in &DECODERS {
            let (_, factor) = measure(what, route, *decode, body);
            worst = worst.max(factor);
        }
    }
    eprintln!("worst x{worst:.2}");
    // serde_json::Value took x16 to x62 here.
    // At most the allowance (four times the body, `decode_allowance`) and
    // what is built from it once decoded.
    assert!(worst < 4.5, "a hostile body took x{worst:.2} its size");
}

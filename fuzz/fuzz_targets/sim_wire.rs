#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hax_fuzz::sim_wire(data));

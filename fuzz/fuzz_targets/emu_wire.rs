#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hax_fuzz::emu_wire(data));

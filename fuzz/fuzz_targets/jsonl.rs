#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    psa_vlm::fuzzing::jsonl(data);
});

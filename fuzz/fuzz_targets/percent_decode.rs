//! The request model's percent-decoder and URI escaper: decoding never grows its input,
//! escaped bytes decode back, an escaped path is always a valid URI.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    appserver::fuzzing::percent_decoding(data);
});

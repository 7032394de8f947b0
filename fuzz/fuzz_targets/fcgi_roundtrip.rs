//! encode(decode(bytes)) == consumed bytes for every record (padding and reserved byte aside),
//! and PARAMS streams survive a decode/encode/decode round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    appserver_proto::fuzzing::fcgi_roundtrip(data);
});

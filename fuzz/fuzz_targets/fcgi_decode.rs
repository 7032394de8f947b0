//! Record framing, typed bodies and the streaming PARAMS parser on arbitrary bytes: no panic,
//! no record larger than the spec allows, no allocation of a claimed size.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    appserver_proto::fuzzing::fcgi_decode(data);
});

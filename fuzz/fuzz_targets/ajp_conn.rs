//! The ajp server connection played by an arbitrary web server, in input-chosen chunk
//! sizes: no panic, and the invariants checked in `appserver_proto::fuzzing::ajp_conn`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    appserver_proto::fuzzing::ajp_conn(data);
});

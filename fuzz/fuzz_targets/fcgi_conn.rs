//! The server connection played by an arbitrary web server, in input-chosen chunk sizes:
//! no panic, well-formed output, nothing sent after a request's FCGI_END_REQUEST.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    appserver_proto::fuzzing::fcgi_conn(data);
});

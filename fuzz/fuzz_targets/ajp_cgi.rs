//! A `FORWARD_REQUEST` payload loaded and mapped to CGI variables (`ajp::cgi_params`): the
//! variables carry method, URI and every header; encode(load(b)) loads to the same request.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    appserver_proto::fuzzing::ajp_cgi(data);
});

//! Building a handler's request from arbitrary CGI variables (`request::build`): method, URI,
//! headers, `Content-Length` and `SCRIPT_NAME`/`PATH_INFO` agree with the variables sent.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    appserver::fuzzing::request_build(data);
});

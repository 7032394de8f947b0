//! The `app=cgi` response-head parser on arbitrary script output: the head ends at the first
//! empty line, and a parsed head written out again parses to the same status and fields.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    appserver::fuzzing::cgi_head(data);
});

//! The script-name rule (`request::resolve_script_name`) on arbitrary CGI variables: a sent
//! `PATH_INFO` is kept, `script_name=` wins, without a rewrite `SCRIPT_NAME` is kept.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    appserver::fuzzing::request_script_name(data);
});

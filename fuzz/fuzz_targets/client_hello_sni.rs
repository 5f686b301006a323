//! The ClientHello SNI reader: never panics on any byte string, and is stable under extension
//! (once a ClientHello is complete, trailing bytes do not change the answer).
#![no_main]

use krbottle::daemon::gateway::sni::{SniParse, parse_client_hello};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let first = parse_client_hello(data);
    if let SniParse::Done(_) = &first {
        let mut longer = data.to_vec();
        longer.extend_from_slice(b"\x17\x03\x03trailing");
        assert_eq!(parse_client_hello(&longer), first);
    }
});

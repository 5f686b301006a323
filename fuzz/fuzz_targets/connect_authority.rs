//! The CONNECT authority parser: never panics, and what it accepts is canonical (parsing the
//! printed form again gives the same host and port).
#![no_main]

use krbottle::net::host::parse_authority;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    for default in [None, Some(80)] {
        if let Ok((host, port)) = parse_authority(data, default) {
            assert_ne!(port, 0);
            let again = parse_authority(&format!("{host}:{port}"), None)
                .expect("a canonical authority parses");
            assert_eq!(again, (host, port));
        }
    }
});

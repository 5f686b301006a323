//! The host canonicaliser: never panics, is idempotent, and a canonical name has no character
//! that could change its meaning downstream (userinfo, port, path, upper case, trailing dot).
#![no_main]

use krbottle::net::host::{Host, HostRule};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &str| {
    if let Ok(host) = Host::parse(data) {
        let printed = host.to_string();
        assert_eq!(Host::parse(&printed).as_ref(), Ok(&host), "not idempotent: {printed}");
        if let Host::Domain(d) = &host {
            assert!(d.is_ascii() && !d.ends_with('.'));
            assert!(!d.bytes().any(|b| b.is_ascii_uppercase() || b"@:/\\?#%[] ".contains(&b)));
        }
    }
    if let Ok(rule) = HostRule::parse(data) {
        assert_eq!(HostRule::parse(&rule.to_string()).as_ref(), Ok(&rule));
    }
});

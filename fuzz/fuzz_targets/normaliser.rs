//! The shared normaliser and scrubber: never panic; a scrubbed buffer holds no form of a
//! secret the scanner would find; and a stream cut anywhere scrubs exactly like the whole.
#![no_main]

use std::sync::OnceLock;

use krbottle::secrets::{SecretSet, normalise};
use libfuzzer_sys::fuzz_target;

fn set() -> &'static SecretSet {
    static SET: OnceLock<SecretSet> = OnceLock::new();
    SET.get_or_init(|| {
        SecretSet::new([
            ("A", &b"sk-fuzz-0123456789abcdef"[..]),
            ("B", &b"7e57ab1e-d00d/+=?%\\x"[..]),
        ])
        .expect("long enough")
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = normalise(data);
    let (cut, text) = match data.split_first() {
        Some((&c, rest)) => (usize::from(c) * rest.len() / 256, rest),
        None => return,
    };
    let s = set();
    let whole = s.scrub(text);
    assert_eq!(s.find_in(&whole, None), None, "a secret survived scrubbing");
    let mut sc = s.scrubber();
    let mut streamed = match sc.push(&text[..cut]) {
        Ok(out) => out,
        Err(_) => return,
    };
    match sc.push(&text[cut..]) {
        Ok(out) => streamed.extend(out),
        Err(_) => return,
    }
    streamed.extend(sc.finish());
    assert_eq!(streamed, whole, "cut at {cut}");
});

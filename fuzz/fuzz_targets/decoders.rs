//! The content/transfer-coding decoders: never panic on any bytes, however they arrive; each
//! step stays bounded; and what the encoders make decodes back exactly.
#![no_main]

use std::io::Write;

use krbottle::daemon::gateway::decode::{Coding, Decoder, STEP_OUT, decode_all, sniff};
use libfuzzer_sys::fuzz_target;

const CODINGS: [Coding; 3] = [Coding::Gzip, Coding::Deflate, Coding::Zstd];

fn encode(c: Coding, data: &[u8]) -> Vec<u8> {
    match c {
        Coding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Coding::Deflate => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Coding::Zstd => zstd::encode_all(data, 1).unwrap(),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, body)) = data.split_first() else {
        return;
    };
    let _ = sniff(body);
    // Hostile bytes, under a stack of one to three codings, fed in pieces.
    let stack: Vec<Coding> = (0..1 + usize::from(sel >> 6) % 3)
        .map(|i| CODINGS[usize::from(sel >> (2 * i)) % 3])
        .collect();
    let mut d = Decoder::new(&stack);
    let piece = 1 + usize::from(sel) % 97;
    'feed: for chunk in body.chunks(piece) {
        d.push(chunk);
        loop {
            match d.pull() {
                Ok(Some(out)) => assert!(out.len() <= STEP_OUT),
                Ok(None) => break,
                Err(_) => break 'feed,
            }
        }
    }
    let _ = d.end();
    // Round trip: the encoders' output decodes to the input.
    let mut encoded = body.to_vec();
    for &c in &stack {
        encoded = encode(c, &encoded);
    }
    let decoded = decode_all(&stack, &encoded, 1 << 24, &mut |_| true).expect("valid stream");
    assert_eq!(decoded, body);
});

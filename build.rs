//! Lets the dynamic loader find a `libkrunfw` shipped beside the binary.
//!
//! libkrun (linked into this binary) `dlopen`s `libkrunfw.so.5` at VM start. `dlopen` honours the
//! calling object's RUNPATH, so the binary carries two: `$ORIGIN/../lib` for an installed layout
//! (`bin/krbottle` + `lib/libkrunfw.so.5`) and `$ORIGIN/../../lib` for a build tree
//! (`target/<profile>/krbottle` + the `lib/` that `scripts/setup.sh` fills in the checkout).

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" {
        println!("cargo::rustc-link-arg-bins=-Wl,-rpath,$ORIGIN/../lib:$ORIGIN/../../lib");
    } else if os == "macos" {
        println!("cargo::rustc-link-arg-bins=-Wl,-rpath,@executable_path/../lib");
        println!("cargo::rustc-link-arg-bins=-Wl,-rpath,@executable_path/../../lib");
    }
    println!("cargo::rerun-if-changed=build.rs");
}

//! Seatbelt, the macOS sandbox: confines this process, for the rest of its life, with a profile
//! (SBPL text, made by `vm::seatbelt`). There is no way back out: the VMM child applies it
//! before it configures libkrun, and everything it does afterwards is checked against it.
//!
//! `sandbox_init` is deprecated in the SDK headers but still exported by libSystem (it is what
//! `sandbox-exec` and OpenSSH's sandbox call); with flags 0 its first argument is profile text.
//! Never called on a Mac by this project yet.

use std::ffi::{CStr, CString, c_char, c_int};

#[derive(Debug, thiserror::Error)]
pub enum SeatbeltError {
    #[error("The Seatbelt profile contains a NUL byte")]
    Nul,
    #[error(
        "macOS refused the VMM's Seatbelt profile ({0}); this is a krbottle bug: report it with the output of `krbottle -v`"
    )]
    Refused(String),
}

// From <sandbox.h> (libsystem_sandbox, re-exported by libSystem).
unsafe extern "C" {
    fn sandbox_init(profile: *const c_char, flags: u64, errorbuf: *mut *mut c_char) -> c_int;
    fn sandbox_free_error(errorbuf: *mut c_char);
}

/// Applies the SBPL `profile` to this process.
pub fn apply(profile: &str) -> Result<(), SeatbeltError> {
    let text = CString::new(profile).map_err(|_| SeatbeltError::Nul)?;
    let mut error: *mut c_char = std::ptr::null_mut();
    // SAFETY: `text` is a NUL-terminated string that outlives the call; `error` is a valid place
    // for the library to store a pointer to its message (or leave NULL). Flags 0: the first
    // argument is profile text, not a profile name.
    let rc = unsafe { sandbox_init(text.as_ptr(), 0, &mut error) };
    if rc == 0 {
        return Ok(());
    }
    let message = if error.is_null() {
        format!("sandbox_init returned {rc}")
    } else {
        // SAFETY: on failure `error` points to a NUL-terminated message the library allocated;
        // it is copied here and then freed exactly once with the library's own function.
        unsafe {
            let m = CStr::from_ptr(error).to_string_lossy().into_owned();
            sandbox_free_error(error);
            m
        }
    };
    Err(SeatbeltError::Refused(message))
}

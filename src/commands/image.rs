//! `krbottle image …`: unpack, prepare, list and prune root filesystems.

use crate::cli::ImageCommand;
use crate::output::Reporter;

pub fn run(cmd: ImageCommand, _reporter: &Reporter) -> anyhow::Result<u8> {
    match cmd {
        ImageCommand::Unpack(_args) => anyhow::bail!("image unpack: not wired yet"),
    }
}

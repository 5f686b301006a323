//! The hidden subcommands krbottle re-executes itself as, defined once: `cli` names them and the
//! code that spawns each child uses the same constant. Not for users.

/// The VMM child of `run` and `start` (`vm::launch` spawns it, `vm::child` is its body).
pub const VMM_CHILD: &str = "__vmm";
/// The unpacker child of the `userns` ownership mode (`image::rootless`).
pub const UNPACK_CHILD: &str = "__unpack";
/// The child that deletes a tree unpacked in `userns` mode, in the user's id mapping.
pub const REMOVE_TREE_CHILD: &str = "__remove-tree";
/// git-gate's pre-receive hook, `krbottle bundle git-hook` (the gate writes it into each of
/// its repositories; git runs it).
pub const GIT_HOOK: &str = "git-hook";

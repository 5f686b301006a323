//! The ref policy of one gate repository: which ref updates of a push may go upstream. Pure:
//! the hook finds the facts (is it a fast-forward?) and this decides.
//!
//! Order of the rules, first refusal wins: `protected` (never, whatever else matches), then the
//! `push` patterns (a tag needs a pattern under `refs/tags/`), then delete, then force (a
//! non-fast-forward branch update, or moving a tag that exists).

use super::config::RepoConfig;

/// The stable `rule` values of refusals, in decision lines and in what the agent is told.
pub mod rules {
    pub const PROTECTED: &str = "protected";
    pub const NOT_IN_PUSH: &str = "not_in_push";
    pub const TAG: &str = "tag";
    pub const DELETE: &str = "delete";
    pub const FORCE: &str = "force";
    pub const TOO_LARGE: &str = "max_push_mib";
    pub const SECRET: &str = "secret";
    pub const CREDENTIAL: &str = "credential";
    pub const OTHER_REF: &str = "other_ref_refused";
    pub const UPSTREAM: &str = "upstream_refused";
    pub const GATE: &str = "gate_error";
}

/// What an update does to its ref.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Create,
    /// An existing ref moves; `fast_forward` when the old commit is an ancestor of the new.
    Update {
        fast_forward: bool,
    },
    Delete,
}

/// Why an update is refused: the rule's name and words for the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    pub rule: &'static str,
    pub reason: String,
}

/// The all-zero object name git uses for "no object" (a create's old, a delete's new).
pub fn is_zero(oid: &str) -> bool {
    !oid.is_empty() && oid.bytes().all(|b| b == b'0')
}

/// Decides one ref update of `repo`: `Ok` with the `push` pattern that allows it.
pub fn check<'a>(repo: &'a RepoConfig, refname: &str, change: Change) -> Result<&'a str, Refusal> {
    let refuse = |rule, reason: String| Err(Refusal { rule, reason });
    if let Some(p) = repo.rules.protected.iter().find(|p| p.matches(refname)) {
        return refuse(
            rules::PROTECTED,
            format!("{refname} is protected (`protected` pattern {p}); push to another branch"),
        );
    }
    let Some(allowed) = repo.rules.push.iter().find(|p| p.matches(refname)) else {
        let patterns: Vec<&str> = repo.rules.push.iter().map(|p| p.as_str()).collect();
        if refname.starts_with("refs/tags/") {
            return refuse(
                rules::TAG,
                format!("{refname}: tags are refused unless a `push` pattern names refs/tags/…"),
            );
        }
        return refuse(
            rules::NOT_IN_PUSH,
            format!(
                "{refname} matches no `push` pattern; this gate accepts: {}",
                if patterns.is_empty() {
                    "nothing (no `push` patterns)".to_string()
                } else {
                    patterns.join(", ")
                }
            ),
        );
    };
    match change {
        Change::Delete if !repo.rules.allow_delete => refuse(
            rules::DELETE,
            format!("{refname}: deleting refs is refused (`allow_delete = false`)"),
        ),
        Change::Update { fast_forward } if !repo.rules.allow_force => {
            if refname.starts_with("refs/tags/") {
                refuse(
                    rules::FORCE,
                    format!("{refname}: moving an existing tag is refused (`allow_force = false`)"),
                )
            } else if !fast_forward {
                refuse(
                    rules::FORCE,
                    format!(
                        "{refname}: a non-fast-forward update (force push) is refused (`allow_force = false`); fetch, rebase or merge, and push again"
                    ),
                )
            } else {
                Ok(allowed.as_str())
            }
        }
        _ => Ok(allowed.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refs::RefPattern;

    fn repo(push: &[&str], protected: &[&str], force: bool, delete: bool) -> RepoConfig {
        let p = |l: &[&str]| l.iter().map(|s| RefPattern::parse(s).unwrap()).collect();
        RepoConfig {
            name: "app".into(),
            upstream: "git@h:o/app.git".into(),
            identity_file: "/k".into(),
            known_hosts: "/kh".into(),
            rules: crate::refs::PushRules {
                push: p(push),
                protected: p(protected),
                allow_force: force,
                allow_delete: delete,
            },
            max_push_bytes: 1 << 20,
            fetch_interval_secs: 5,
        }
    }

    #[test]
    fn policy_table() {
        use Change::*;
        let ff = Update { fast_forward: true };
        let nonff = Update {
            fast_forward: false,
        };
        let strict = repo(&["agent/*"], &["main", "release/*"], false, false);
        let loose = repo(&["*", "refs/tags/v*"], &["main"], true, true);
        let cases: &[(&RepoConfig, &str, Change, Result<&str, &str>)] = &[
            (
                &strict,
                "refs/heads/agent/x",
                Create,
                Ok("refs/heads/agent/*"),
            ),
            (&strict, "refs/heads/agent/x", ff, Ok("refs/heads/agent/*")),
            (&strict, "refs/heads/agent/x", nonff, Err(rules::FORCE)),
            (&strict, "refs/heads/agent/x", Delete, Err(rules::DELETE)),
            (&strict, "refs/heads/main", ff, Err(rules::PROTECTED)),
            (
                &strict,
                "refs/heads/feature",
                Create,
                Err(rules::NOT_IN_PUSH),
            ),
            (&strict, "refs/tags/v1", Create, Err(rules::TAG)),
            (
                &strict,
                "refs/notes/commits",
                Create,
                Err(rules::NOT_IN_PUSH),
            ),
            (
                &strict,
                "refs/heads/release/1",
                Create,
                Err(rules::PROTECTED),
            ),
            (&loose, "refs/heads/main", nonff, Err(rules::PROTECTED)),
            (&loose, "refs/heads/main", Delete, Err(rules::PROTECTED)),
            (&loose, "refs/heads/any", nonff, Ok("refs/heads/*")),
            (&loose, "refs/heads/any", Delete, Ok("refs/heads/*")),
            (&loose, "refs/tags/v1", Create, Ok("refs/tags/v*")),
            (&loose, "refs/tags/x1", Create, Err(rules::TAG)),
            (&loose, "refs/tags/v1", ff, Ok("refs/tags/v*")),
        ];
        for (repo, refname, change, want) in cases {
            let got = check(repo, refname, *change).map_err(|r| r.rule);
            assert_eq!(got, *want, "{refname} {change:?}");
        }
        let tag_repo = repo(&["refs/tags/*"], &[], false, false);
        assert_eq!(
            check(&tag_repo, "refs/tags/v1", ff).map_err(|r| r.rule),
            Err(rules::FORCE),
            "a tag that exists does not move"
        );
        let reason = check(&strict, "refs/heads/main", ff).unwrap_err().reason;
        assert!(reason.contains("refs/heads/main") && reason.contains("protected"));
        let none = repo(&[], &[], false, false);
        assert!(
            check(&none, "refs/heads/x", Create)
                .unwrap_err()
                .reason
                .contains("no `push` patterns")
        );
    }

    #[test]
    fn zero_ids() {
        assert!(is_zero("0000000000000000000000000000000000000000"));
        assert!(!is_zero("0000000000000000000000000000000000000001"));
        assert!(!is_zero(""));
    }
}

//! git ref patterns as the manifest writes them (`push = ["agent/*"]`, `protected = ["main"]`),
//! checked once and matched by git-gate's pre-receive hook.
//!
//! A pattern names a full ref (`refs/tags/v*`) or, without the `refs/` prefix, a branch
//! (`agent/*` is `refs/heads/agent/*`). `*` matches any run of characters, `/` included, as in
//! git's refspecs: `release/*` protects `release/1.0/hotfix` too. A pattern is refused when no
//! valid ref name could ever match it (git's `check-ref-format` rules, with `*` standing for a
//! non-empty component part).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefPatternError {
    #[error("is empty; name a branch such as `agent/*` or a ref such as `refs/tags/v*`")]
    Empty,
    #[error("no git ref can match it: {0}")]
    CannotMatch(&'static str),
}

/// What an agent may push to one repository, as the manifest gives it and git-gate's hook
/// applies it ([`crate::daemon::git_gate::policy`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRules {
    /// Refs the agent may create and update.
    pub push: Vec<RefPattern>,
    /// Refs the agent may never push, even when `push` matches.
    pub protected: Vec<RefPattern>,
    /// Whether a non-fast-forward update is allowed.
    pub allow_force: bool,
    /// Whether deleting a ref is allowed.
    pub allow_delete: bool,
}

/// A validated ref pattern, stored in its full form (`refs/heads/…` added to a branch pattern).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RefPattern(String);

impl RefPattern {
    pub fn parse(s: &str) -> Result<RefPattern, RefPatternError> {
        if s.is_empty() {
            return Err(RefPatternError::Empty);
        }
        let full = if s.starts_with("refs/") {
            s.to_string()
        } else {
            format!("refs/heads/{s}")
        };
        // The pattern with `*` as one ordinary character must itself be a valid ref name.
        check_ref_format(&full.replace('*', "x")).map_err(RefPatternError::CannotMatch)?;
        if full.strip_prefix("refs/").is_some_and(|r| !r.contains('/')) {
            return Err(RefPatternError::CannotMatch(
                "a ref under refs/ needs a namespace and a name, e.g. refs/tags/v1",
            ));
        }
        Ok(RefPattern(full))
    }

    /// Whether `refname` (a full ref name, `refs/heads/x`) matches.
    pub fn matches(&self, refname: &str) -> bool {
        glob(self.0.as_bytes(), refname.as_bytes())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether the pattern can only match tags.
    pub fn is_tag(&self) -> bool {
        self.0.starts_with("refs/tags/")
    }
}

impl fmt::Display for RefPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for RefPattern {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for RefPattern {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RefPattern::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// `*` matches any run of bytes (none included); everything else itself.
fn glob(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if p < pattern.len() && pattern[p] == name[n] {
            p += 1;
            n += 1;
        } else if let Some((sp, sn)) = star {
            p = sp + 1;
            n = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// git's rules for a ref name (`git check-ref-format`), the reason when it breaks one.
pub fn check_ref_format(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("it is empty");
    }
    if name.ends_with('/') || name.starts_with('/') || name.contains("//") {
        return Err("it has an empty path component");
    }
    if name.ends_with('.') {
        return Err("it ends with `.`");
    }
    if name.contains("..") {
        return Err("it contains `..`");
    }
    if name.contains("@{") || name == "@" {
        return Err("it contains `@{`");
    }
    if name
        .bytes()
        .any(|b| b < 0x20 || b == 0x7f || b" ~^:?[\\".contains(&b))
    {
        return Err("it contains a space, a control character or one of ~ ^ : ? [ \\");
    }
    for component in name.split('/') {
        if component.starts_with('.') {
            return Err("a path component starts with `.`");
        }
        if component.ends_with(".lock") {
            return Err("a path component ends with `.lock`");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_like_refspecs() {
        let cases: &[(&str, &str, bool)] = &[
            ("agent/*", "refs/heads/agent/x", true),
            ("agent/*", "refs/heads/agent/x/y", true),
            ("agent/*", "refs/heads/agent/", true),
            ("agent/*", "refs/heads/agentx", false),
            ("agent/*", "refs/heads/main", false),
            ("agent/*", "refs/tags/agent/x", false),
            ("main", "refs/heads/main", true),
            ("main", "refs/heads/main2", false),
            ("main", "refs/heads/x/main", false),
            ("release/*", "refs/heads/release/1.0/hotfix", true),
            ("refs/tags/v*", "refs/tags/v1.2", true),
            ("refs/tags/v*", "refs/heads/v1", false),
            ("*", "refs/heads/anything/at/all", true),
            ("a*b*c", "refs/heads/aXbYc", true),
            ("a*b*c", "refs/heads/aXbY", false),
            ("feat-*-x", "refs/heads/feat-1-x", true),
            ("feat-*-x", "refs/heads/feat-1-y", false),
        ];
        for (pattern, name, want) in cases {
            let p = RefPattern::parse(pattern).unwrap();
            assert_eq!(p.matches(name), *want, "{pattern} ~ {name}");
        }
        assert!(RefPattern::parse("refs/tags/v*").unwrap().is_tag());
        assert!(!RefPattern::parse("agent/*").unwrap().is_tag());
    }

    #[test]
    fn patterns_that_cannot_match_are_refused() {
        for bad in [
            "",
            "a..b",
            "agent/",
            "/main",
            "a//b",
            "x.lock",
            "a b",
            "a:b",
            "a~1",
            "a^",
            "a?",
            "a[b]",
            "a\\b",
            ".hidden/*",
            "a/.x",
            "main.",
            "a@{1}",
            "refs/x",
        ] {
            assert!(RefPattern::parse(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["main", "agent/*", "*", "refs/tags/*", "refs/heads/a-b_c.d"] {
            assert!(RefPattern::parse(good).is_ok(), "{good:?} refused");
        }
    }
}

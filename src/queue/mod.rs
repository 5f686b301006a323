//! The approval queue: the record format and the store that the supervise daemon (inside the
//! bundle) and the host's `krbottle queue`, `approve` and `deny` share.
//!
//! One directory per bottle (`BottleDirs::queue_dir`, bind-mounted into the bundle and never
//! shared with the guest), one JSON file per request (`<id>.json`), each written whole to a
//! temporary file and renamed into place, so a reader never sees half a record.
//!
//! Invariants:
//! - A request moves from pending to approved, denied or expired once; a decision is final.
//! - The daemon only creates records (and drops its oldest notices past [`MAX_NOTICES`]): it
//!   never rewrites a request, so nothing the agent sends can change a request once written,
//!   let alone decide one. Decisions are written on the host ([`Queue::decide`]). Expiry is a
//!   matter of time ([`Record::effective`]); the host writes it down when it meets it.
//! - Every change is made under the queue's lock file (`flock`), so of two deciders one wins
//!   and the other is told the request was already answered.
//! - Text from the agent reaches the human's terminal only through [`printable`].

pub mod watch;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use crate::state::{BottleDirs, StateRoot};
use crate::sys::fs::write_atomic;

/// The record format's version, in every record.
pub const FORMAT: u32 = 1;
/// The longest title, in characters.
pub const MAX_TITLE_CHARS: usize = 200;
/// The longest `kind`, in characters.
pub const MAX_KIND_CHARS: usize = 40;
/// Notices kept per bottle; older ones are dropped when a new one comes.
pub const MAX_NOTICES: usize = 50;
/// The lock file every change of the queue is made under.
const LOCK_FILE: &str = ".lock";
/// The largest record file read (a record is at most the daemon's request cap, 4 MiB).
const MAX_RECORD_BYTES: u64 = 8 * 1024 * 1024;

/// Characters of an id: Crockford's base 32, lowercase (no i, l, o, u: nothing to misread).
const ID_ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
/// Characters in an id: 30 random bits, short enough to type.
pub const ID_LEN: usize = 6;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(
        "Bad request id `{0}`: an id is {ID_LEN} letters and digits, as `krbottle queue` shows it"
    )]
    BadId(String),
    #[error("No request {id} in {scope}; see `krbottle queue`")]
    Unknown { id: Id, scope: String },
    #[error("Request {id} was already {state} by {by} at {at}; a decision is final")]
    AlreadyDecided {
        id: Id,
        state: State,
        by: String,
        at: String,
    },
    #[error("Request {id} expired at {at} without an answer; the agent has to ask again")]
    Expired { id: Id, at: String },
    #[error("{id} is a notice from the agent: there is nothing to answer")]
    Notice { id: Id },
    #[error("Id {id} is in the queues of bottles {bottles}; name the bottle with --bottle")]
    Ambiguous { id: Id, bottles: String },
    #[error(
        "{max} requests of bottle {bottle} are already waiting for an answer; wait for them (await_decision) before asking again"
    )]
    TooManyPending { bottle: String, max: u32 },
    #[error("Bad {field}: {why}")]
    Invalid { field: &'static str, why: String },
    #[error("Cannot read the queue record {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a queue record; move it out of the queue directory", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("Cannot write the queue record {}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot lock the queue {}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot create the queue directory {}", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error("Cannot draw a random request id")]
    Random(#[source] getrandom::Error),
    #[error("The queue's worker thread failed")]
    Worker(#[source] tokio::task::JoinError),
}

/// Runs queue work (file I/O) on tokio's blocking threads.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, QueueError> + Send + 'static,
) -> Result<T, QueueError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(QueueError::Worker(e)))
}

/// A request id: `ID_LEN` characters of `ID_ALPHABET`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Id(String);

impl Id {
    /// Reads an id as a person typed it: any case, and the letters Crockford's alphabet leaves
    /// out read as the digits they look like (`o` → `0`, `i` and `l` → `1`).
    pub fn parse(text: &str) -> Result<Id, QueueError> {
        let id: String = text
            .trim()
            .chars()
            .map(|c| match c.to_ascii_lowercase() {
                'o' => '0',
                'i' | 'l' => '1',
                c => c,
            })
            .collect();
        let ok = id.len() == ID_LEN && id.bytes().all(|b| ID_ALPHABET.contains(&b));
        if ok {
            Ok(Id(id))
        } else {
            Err(QueueError::BadId(text.to_string()))
        }
    }

    /// A new random id.
    pub fn random() -> Result<Id, QueueError> {
        let mut bytes = [0u8; 4];
        getrandom::fill(&mut bytes).map_err(QueueError::Random)?;
        let mut bits = u32::from_le_bytes(bytes);
        let mut id = String::with_capacity(ID_LEN);
        for _ in 0..ID_LEN {
            id.push(char::from(ID_ALPHABET[(bits & 31) as usize]));
            bits >>= 5;
        }
        Ok(Id(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    fn file_name(&self) -> String {
        format!("{}.json", self.0)
    }
}

impl std::fmt::Display for Id {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(&self.0)
    }
}

impl TryFrom<String> for Id {
    type Error = QueueError;
    fn try_from(s: String) -> Result<Id, QueueError> {
        // Stored ids are exact: no reading-as-typed here.
        match Id::parse(&s) {
            Ok(id) if id.0 == s => Ok(id),
            _ => Err(QueueError::BadId(s)),
        }
    }
}

impl From<Id> for String {
    fn from(id: Id) -> String {
        id.0
    }
}

/// Where a record is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Waiting for a human.
    Pending,
    Approved,
    Denied,
    /// Nobody answered in time.
    Expired,
    /// A message from the agent (`notify`): never pending, nothing to answer.
    Notice,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Approved => "approved",
            State::Denied => "denied",
            State::Expired => "expired",
            State::Notice => "notice",
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A human's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Approve,
    Deny,
}

/// Who ended a request, when, and what they said.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub by: String,
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// Who [`Decision::by`] names for an expiry.
pub const EXPIRED_BY: &str = "krbottle (no answer in time)";

/// One file of the queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// [`FORMAT`] when written.
    pub format: u32,
    pub id: Id,
    pub bottle: String,
    pub state: State,
    /// The agent's own word for what it asks about (`push`, `deploy`…), if it gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    pub title: String,
    #[serde(default)]
    pub details: String,
    pub created_at: DateTime<Utc>,
    /// When a pending request expires (a notice has none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
}

impl Record {
    /// The record as of `now`: a pending request past its expiry is expired.
    pub fn effective(mut self, now: DateTime<Utc>) -> Record {
        if let (State::Pending, Some(at)) = (self.state, self.expires_at)
            && now >= at
        {
            self.state = State::Expired;
            self.decision = Some(Decision {
                by: EXPIRED_BY.to_string(),
                at,
                comment: None,
            });
        }
        self
    }

    /// Whether a human can still answer it.
    pub fn is_pending(&self) -> bool {
        self.state == State::Pending
    }
}

/// What the agent asks, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRequest {
    title: String,
    details: String,
    kind: Option<String>,
}

impl NewRequest {
    /// A title of one non-empty line of at most [`MAX_TITLE_CHARS`], any details, and an
    /// optional one-word-ish kind of at most [`MAX_KIND_CHARS`].
    pub fn new(title: &str, details: &str, kind: Option<&str>) -> Result<NewRequest, QueueError> {
        let title = title.trim();
        if title.is_empty() {
            return Err(invalid(
                "title",
                "it is empty; say in one line what you want to do",
            ));
        }
        if title.contains(['\n', '\r']) {
            return Err(invalid(
                "title",
                "it must be one line; put the rest in `details`",
            ));
        }
        if title.chars().count() > MAX_TITLE_CHARS {
            return Err(invalid(
                "title",
                format!(
                    "it is longer than {MAX_TITLE_CHARS} characters; put the rest in `details`"
                ),
            ));
        }
        let kind = match kind.map(str::trim).filter(|k| !k.is_empty()) {
            Some(k) if k.chars().count() > MAX_KIND_CHARS || k.chars().any(char::is_control) => {
                return Err(invalid(
                    "kind",
                    format!("it must be a short word of at most {MAX_KIND_CHARS} characters"),
                ));
            }
            k => k.map(str::to_string),
        };
        Ok(NewRequest {
            title: title.to_string(),
            details: details.to_string(),
            kind,
        })
    }
}

fn invalid(field: &'static str, why: impl Into<String>) -> QueueError {
    QueueError::Invalid {
        field,
        why: why.into(),
    }
}

/// The limits a queue enforces when a request comes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Requests that may be pending at once.
    pub max_pending: u32,
    /// How long a request stays answerable.
    pub expire_after: std::time::Duration,
}

/// One bottle's queue directory.
#[derive(Clone, Debug)]
pub struct Queue {
    dir: PathBuf,
    bottle: String,
}

impl Queue {
    /// The queue of `bottle` in `dir` (the daemon's view: the directory mounted into it).
    pub fn at(dir: impl Into<PathBuf>, bottle: &str) -> Queue {
        Queue {
            dir: dir.into(),
            bottle: bottle.to_string(),
        }
    }

    /// The queue in a bottle's state (the host's view).
    pub fn of(bottle: &BottleDirs) -> Queue {
        Queue::at(bottle.queue_dir(), bottle.name())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn bottle(&self) -> &str {
        &self.bottle
    }

    /// Creates the directory (private to the user) and its lock file, if they do not exist.
    pub fn create(&self) -> Result<(), QueueError> {
        crate::sys::fs::create_private_dir(&self.dir).map_err(|source| QueueError::CreateDir {
            path: self.dir.clone(),
            source,
        })?;
        drop(self.lock()?);
        Ok(())
    }

    fn lock(&self) -> Result<fs::File, QueueError> {
        let path = self.dir.join(LOCK_FILE);
        crate::lockfile::lock_exclusive(&path).map_err(|source| QueueError::Lock { path, source })
    }

    fn path(&self, id: &Id) -> PathBuf {
        self.dir.join(id.file_name())
    }

    fn write(&self, record: &Record) -> Result<(), QueueError> {
        let path = self.path(&record.id);
        let write_err = |source| QueueError::Write {
            path: path.clone(),
            source,
        };
        let json = serde_json::to_vec_pretty(record).map_err(|e| write_err(e.into()))?;
        write_atomic(&path, &json, 0o600).map_err(write_err)
    }

    /// A fresh id no record of this queue has (the lock is held).
    fn fresh_id(&self) -> Result<Id, QueueError> {
        loop {
            let id = Id::random()?;
            if !self.path(&id).exists() {
                return Ok(id);
            }
        }
    }

    /// Queues a request of the agent's, pending until a human answers or `limits.expire_after`
    /// passes; refused when `limits.max_pending` requests are already waiting.
    pub fn submit(
        &self,
        request: NewRequest,
        limits: Limits,
        now: DateTime<Utc>,
    ) -> Result<Record, QueueError> {
        let _lock = self.lock()?;
        let pending = self
            .read_all(now)?
            .iter()
            .filter(|r| r.is_pending())
            .count();
        if pending >= limits.max_pending as usize {
            return Err(QueueError::TooManyPending {
                bottle: self.bottle.clone(),
                max: limits.max_pending,
            });
        }
        let expire_after = Duration::from_std(limits.expire_after).unwrap_or(Duration::MAX);
        let record = Record {
            format: FORMAT,
            id: self.fresh_id()?,
            bottle: self.bottle.clone(),
            state: State::Pending,
            kind: request.kind,
            title: request.title,
            details: request.details,
            created_at: now,
            expires_at: Some(
                now.checked_add_signed(expire_after)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC),
            ),
            decision: None,
        };
        self.write(&record)?;
        Ok(record)
    }

    /// Leaves a message for the human; the oldest notices past [`MAX_NOTICES`] are dropped.
    pub fn notify(&self, message: &str, now: DateTime<Utc>) -> Result<Record, QueueError> {
        let message = message.trim();
        if message.is_empty() {
            return Err(invalid("message", "it is empty"));
        }
        let _lock = self.lock()?;
        let notices: Vec<Record> = self
            .read_all(now)?
            .into_iter()
            .filter(|r| r.state == State::Notice)
            .collect();
        let excess = (notices.len() + 1).saturating_sub(MAX_NOTICES);
        for old in notices.iter().take(excess) {
            let _ = fs::remove_file(self.path(&old.id));
        }
        let first_line = message.lines().next().unwrap_or_default();
        let title: String = first_line.chars().take(MAX_TITLE_CHARS).collect();
        let record = Record {
            format: FORMAT,
            id: self.fresh_id()?,
            bottle: self.bottle.clone(),
            state: State::Notice,
            kind: None,
            title,
            details: message.to_string(),
            created_at: now,
            expires_at: None,
            decision: None,
        };
        self.write(&record)?;
        Ok(record)
    }

    /// The record `id` as of `now`, if this queue has it.
    pub fn get(&self, id: &Id, now: DateTime<Utc>) -> Result<Option<Record>, QueueError> {
        Ok(self.read(&self.path(id))?.map(|r| r.effective(now)))
    }

    fn read(&self, path: &Path) -> Result<Option<Record>, QueueError> {
        use std::io::Read;
        let file = match fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(QueueError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let mut text = Vec::new();
        file.take(MAX_RECORD_BYTES)
            .read_to_end(&mut text)
            .map_err(|source| QueueError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|source| QueueError::Parse {
                path: path.to_path_buf(),
                source,
            })
    }

    /// Every record as of `now`, oldest first. Files that are not records are skipped (with a
    /// warning for those named like one).
    pub fn list(&self, now: DateTime<Utc>) -> Result<Vec<Record>, QueueError> {
        self.read_all(now)
    }

    fn read_all(&self, now: DateTime<Utc>) -> Result<Vec<Record>, QueueError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(QueueError::Read {
                    path: self.dir.clone(),
                    source,
                });
            }
        };
        let mut records = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| QueueError::Read {
                path: self.dir.clone(),
                source,
            })?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| Id::try_from(n.to_string()).ok())
            else {
                continue; // the lock file, a temporary file being renamed, anything else
            };
            match self.read(&entry.path()) {
                Ok(Some(r)) if r.id == id => records.push(r.effective(now)),
                Ok(Some(_)) => {
                    tracing::warn!(
                        "{}: its id is not its name; skipped",
                        entry.path().display()
                    );
                }
                Ok(None) => {} // decided and replaced meanwhile: gone from this listing
                Err(e) => tracing::warn!("{e}; skipped"),
            }
        }
        records.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(records)
    }

    /// Answers the pending request `id` (the host's side). Answering twice, a notice, or an
    /// expired request is an error; an expiry met here is written down.
    pub fn decide(
        &self,
        id: &Id,
        verdict: Verdict,
        by: &str,
        comment: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Record, QueueError> {
        let _lock = self.lock()?;
        let Some(stored) = self.read(&self.path(id))? else {
            return Err(QueueError::Unknown {
                id: id.clone(),
                scope: format!("the queue of bottle {}", self.bottle),
            });
        };
        let record = stored.clone().effective(now);
        match record.state {
            State::Pending => {}
            State::Notice => return Err(QueueError::Notice { id: id.clone() }),
            State::Expired => {
                let at = record.decision.as_ref().map(|d| d.at).unwrap_or(now);
                if stored.state == State::Pending {
                    self.write(&record)?;
                }
                return Err(QueueError::Expired {
                    id: id.clone(),
                    at: at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                });
            }
            state @ (State::Approved | State::Denied) => {
                let d = record.decision.as_ref();
                return Err(QueueError::AlreadyDecided {
                    id: id.clone(),
                    state,
                    by: d.map(|d| d.by.clone()).unwrap_or_default(),
                    at: d
                        .map(|d| d.at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        .unwrap_or_default(),
                });
            }
        }
        let mut record = record;
        record.state = match verdict {
            Verdict::Approve => State::Approved,
            Verdict::Deny => State::Denied,
        };
        record.decision = Some(Decision {
            by: by.to_string(),
            at: now,
            comment: comment
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(str::to_string),
        });
        self.write(&record)?;
        Ok(record)
    }

    /// Writes down the expiry of every pending request past it (the host's side).
    pub fn expire_due(&self, now: DateTime<Utc>) -> Result<(), QueueError> {
        let _lock = self.lock()?;
        for id in self.stored_pending()? {
            if let Some(stored) = self.read(&self.path(&id))?
                && stored.state == State::Pending
            {
                let record = stored.effective(now);
                if record.state == State::Expired {
                    self.write(&record)?;
                }
            }
        }
        Ok(())
    }

    /// Ids whose file says pending, whatever the time.
    fn stored_pending(&self) -> Result<Vec<Id>, QueueError> {
        // Reading as of the earliest time keeps every stored-pending request pending.
        Ok(self
            .read_all(DateTime::<Utc>::MIN_UTC)?
            .into_iter()
            .filter(|r| r.is_pending())
            .map(|r| r.id)
            .collect())
    }
}

/// The queues of every bottle in `state`, or of `bottle` only.
pub fn queues(state: &StateRoot, bottle: Option<&str>) -> Result<Vec<Queue>, QueueError> {
    let names = match bottle {
        Some(name) => vec![name.to_string()],
        None => state.names()?,
    };
    names
        .iter()
        .map(|n| Ok(Queue::of(&state.bottle(n)?)))
        .collect()
}

/// What `krbottle queue` shows: the pending requests and the notices of one bottle or all,
/// oldest first, expiries written down on the way.
pub fn waiting(
    state: &StateRoot,
    bottle: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Vec<Record>, QueueError> {
    let mut all = Vec::new();
    for q in queues(state, bottle)? {
        if !q.dir().exists() {
            continue;
        }
        q.expire_due(now)?;
        all.extend(
            q.list(now)?
                .into_iter()
                .filter(|r| matches!(r.state, State::Pending | State::Notice)),
        );
    }
    all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    Ok(all)
}

/// `krbottle approve` / `deny`: answers request `id` of `bottle`, or of whichever bottle has it.
pub fn answer(
    state: &StateRoot,
    bottle: Option<&str>,
    id: &Id,
    verdict: Verdict,
    comment: Option<&str>,
    now: DateTime<Utc>,
) -> Result<Record, QueueError> {
    let mut holders = Vec::new();
    for q in queues(state, bottle)? {
        if q.path(id).exists() {
            holders.push(q);
        }
    }
    match holders.as_slice() {
        [] => Err(QueueError::Unknown {
            id: id.clone(),
            scope: match bottle {
                Some(b) => format!("the queue of bottle {b}"),
                None => "any bottle's queue".to_string(),
            },
        }),
        [q] => q.decide(id, verdict, &reviewer(), comment, now),
        many => Err(QueueError::Ambiguous {
            id: id.clone(),
            bottles: many
                .iter()
                .map(|q| q.bottle.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// The person answering: the login name of this process, else its user id.
pub fn reviewer() -> String {
    std::env::var(crate::env_vars::USER)
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| format!("uid {}", rustix::process::getuid().as_raw()))
}

/// `text` as it may be shown on a terminal: control characters (except newlines and tabs when
/// `multiline`) and bidirectional-text controls are shown as `\u{…}` escapes, so text from the
/// agent cannot move the cursor, recolour the screen or reorder what the human reads.
pub fn printable(text: &str, multiline: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let bidi = matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        let kept = multiline && (c == '\n' || c == '\t');
        if (c.is_control() && !kept) || bidi {
            out.push_str(&c.escape_unicode().to_string());
        } else {
            out.push(c);
        }
    }
    out
}

/// A duration as a person reads an age: `42s`, `5m`, `2h05m`, `3d04h`.
pub fn age(d: Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::time::Duration as StdDuration;

use chrono::{Duration, TimeZone, Utc};

use super::*;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap()
}

const LIMITS: Limits = Limits {
    max_pending: 3,
    expire_after: StdDuration::from_secs(3600),
};

fn req(title: &str) -> NewRequest {
    NewRequest::new(title, "the details", Some("push")).unwrap()
}

/// A request submitted and decided at once.
fn decided(q: &Queue, verdict: Verdict, by: &str, comment: Option<&str>) -> Record {
    let r = q.submit(req("Push"), LIMITS, t0()).unwrap();
    q.decide(&r.id, verdict, by, comment, t0()).unwrap()
}

fn queue() -> (tempfile::TempDir, Queue) {
    let dir = tempfile::tempdir().unwrap();
    let q = Queue::at(dir.path().join("queue"), "b");
    q.create().unwrap();
    (dir, q)
}

#[test]
fn random_ids_are_short_valid_and_distinct() {
    let ids: HashSet<Id> = (0..1000).map(|_| Id::random().unwrap()).collect();
    assert!(ids.len() > 995, "{} distinct of 1000", ids.len());
    for id in &ids {
        assert_eq!(id.as_str().len(), ID_LEN);
        assert_eq!(Id::parse(id.as_str()).unwrap(), *id);
        assert_eq!(Id::try_from(id.to_string()).unwrap(), *id);
    }
}

#[test]
fn ids_are_read_as_typed_and_nothing_else_passes() {
    let good = [
        ("k3m9xq", "k3m9xq"),
        ("K3M9XQ", "k3m9xq"),
        (" k3m9xq\n", "k3m9xq"),
        ("OIL123", "011123"),
    ];
    for (typed, id) in good {
        assert_eq!(Id::parse(typed).unwrap().as_str(), id, "{typed:?}");
    }
    for bad in [
        "", "k3m9x", "k3m9xqq", "k3m9xu", "../x/y", "k3m9x/", "k3m9é",
    ] {
        assert!(
            matches!(Id::parse(bad), Err(QueueError::BadId(_))),
            "{bad:?}"
        );
    }
    // Stored ids are exact: a file may not smuggle in a typed form.
    assert!(Id::try_from("K3M9XQ".to_string()).is_err());
}

#[test]
fn a_request_is_pending_then_decided_once() {
    let (_d, q) = queue();
    let r = q.submit(req("Push fix"), LIMITS, t0()).unwrap();
    assert_eq!(r.state, State::Pending);
    assert_eq!(r.expires_at, Some(t0() + Duration::hours(1)));
    assert_eq!(q.get(&r.id, t0()).unwrap().unwrap(), r);

    let later = t0() + Duration::minutes(5);
    let d = q
        .decide(&r.id, Verdict::Approve, "alice", Some(" ok, go "), later)
        .unwrap();
    assert_eq!(d.state, State::Approved);
    let decision = d.decision.clone().unwrap();
    assert_eq!(
        (
            decision.by.as_str(),
            decision.at,
            decision.comment.as_deref()
        ),
        ("alice", later, Some("ok, go"))
    );
    assert_eq!(q.get(&r.id, later).unwrap().unwrap(), d);

    for verdict in [Verdict::Approve, Verdict::Deny] {
        let e = q.decide(&r.id, verdict, "bob", None, later).unwrap_err();
        match e {
            QueueError::AlreadyDecided { state, by, .. } => {
                assert_eq!((state, by.as_str()), (State::Approved, "alice"));
            }
            other => panic!("{other:?}"),
        }
    }
    // Still alice's decision.
    assert_eq!(q.get(&r.id, later).unwrap().unwrap(), d);
}

#[test]
fn deny_records_who_when_and_why() {
    let (_d, q) = queue();
    let d = decided(&q, Verdict::Deny, "carol", Some("not in prod"));
    assert_eq!(d.state, State::Denied);
    assert_eq!(d.decision.unwrap().comment.as_deref(), Some("not in prod"));
}

#[test]
fn an_unanswered_request_expires_and_cannot_be_answered_then() {
    let (_d, q) = queue();
    let r = q.submit(req("Deploy"), LIMITS, t0()).unwrap();
    let late = t0() + Duration::hours(2);
    let seen = q.get(&r.id, late).unwrap().unwrap();
    assert_eq!(seen.state, State::Expired);
    assert_eq!(seen.decision.as_ref().unwrap().by, EXPIRED_BY);
    assert_eq!(
        seen.decision.as_ref().unwrap().at,
        t0() + Duration::hours(1)
    );
    // Reading changed nothing on disk: the file still says pending.
    let stored: Record = serde_json::from_slice(&fs::read(q.path(&r.id)).unwrap()).unwrap();
    assert_eq!(stored.state, State::Pending);

    let e = q
        .decide(&r.id, Verdict::Approve, "alice", None, late)
        .unwrap_err();
    assert!(matches!(e, QueueError::Expired { .. }), "{e:?}");
    // The host wrote the expiry down.
    let stored: Record = serde_json::from_slice(&fs::read(q.path(&r.id)).unwrap()).unwrap();
    assert_eq!(stored.state, State::Expired);
    assert!(e.to_string().contains("ask again"), "{e}");
}

#[test]
fn expire_due_writes_down_only_what_is_due() {
    let (_d, q) = queue();
    let old = q.submit(req("old"), LIMITS, t0()).unwrap();
    let new = q
        .submit(req("new"), LIMITS, t0() + Duration::minutes(50))
        .unwrap();
    q.expire_due(t0() + Duration::minutes(70)).unwrap();
    let state = |id: &Id| {
        serde_json::from_slice::<Record>(&fs::read(q.path(id)).unwrap())
            .unwrap()
            .state
    };
    assert_eq!(
        (state(&old.id), state(&new.id)),
        (State::Expired, State::Pending)
    );
}

#[test]
fn unknown_ids_and_notices_cannot_be_answered() {
    let (_d, q) = queue();
    let id = Id::parse("zzzzzz").unwrap();
    let e = q
        .decide(&id, Verdict::Approve, "a", None, t0())
        .unwrap_err();
    assert!(matches!(e, QueueError::Unknown { .. }), "{e:?}");
    let n = q.notify("built ok", t0()).unwrap();
    assert_eq!(n.state, State::Notice);
    let e = q
        .decide(&n.id, Verdict::Approve, "a", None, t0())
        .unwrap_err();
    assert!(matches!(e, QueueError::Notice { .. }), "{e:?}");
}

#[test]
fn the_pending_cap_counts_only_what_still_waits() {
    let (_d, q) = queue();
    let ids: Vec<Id> = (0..3)
        .map(|i| q.submit(req(&format!("r{i}")), LIMITS, t0()).unwrap().id)
        .collect();
    let e = q.submit(req("one more"), LIMITS, t0()).unwrap_err();
    assert!(
        matches!(e, QueueError::TooManyPending { max: 3, .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("await_decision"), "{e}");
    // Notices do not count, and do not get in the way.
    q.notify("hello", t0()).unwrap();
    q.decide(&ids[0], Verdict::Deny, "a", None, t0()).unwrap();
    q.submit(req("now it fits"), LIMITS, t0()).unwrap();
    // Expired requests free their place too.
    let later = t0() + Duration::hours(2);
    q.submit(req("after expiry"), LIMITS, later).unwrap();
}

#[test]
fn writes_are_whole_private_and_leave_no_temporary_files() {
    use std::os::unix::fs::PermissionsExt;
    let (_d, q) = queue();
    decided(&q, Verdict::Approve, "x", None);
    q.notify("n", t0()).unwrap();
    let mut names: Vec<String> = fs::read_dir(q.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(names[0], LOCK_FILE);
    for n in &names[1..] {
        assert!(n.ends_with(".json") && n.len() == ID_LEN + 5, "{n}");
        let mode = fs::metadata(q.dir().join(n)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{n}");
    }
    let dir_mode = fs::metadata(q.dir()).unwrap().permissions().mode();
    assert_eq!(dir_mode & 0o777, 0o700);
}

#[test]
fn readers_never_see_half_a_record() {
    let (_d, q) = queue();
    let big = "x".repeat(512 * 1024);
    let ids: Vec<Id> = (0..3)
        .map(|_| {
            let r = NewRequest::new("big", &big, None).unwrap();
            q.submit(r, LIMITS, t0()).unwrap().id
        })
        .collect();
    let reader = {
        let q = q.clone();
        let ids = ids.clone();
        std::thread::spawn(move || {
            let mut reads = 0;
            for _ in 0..300 {
                for id in &ids {
                    // A parse error here would be a torn write.
                    q.get(id, t0()).unwrap().unwrap();
                    reads += 1;
                }
            }
            reads
        })
    };
    for id in &ids {
        q.decide(id, Verdict::Deny, "x", Some(&big), t0()).unwrap();
    }
    assert_eq!(reader.join().unwrap(), 900);
}

#[test]
fn of_two_racing_deciders_exactly_one_wins() {
    for _ in 0..20 {
        let (_d, q) = queue();
        let id = q.submit(req("race"), LIMITS, t0()).unwrap().id;
        let racers: Vec<_> = [Verdict::Approve, Verdict::Deny]
            .into_iter()
            .map(|v| {
                let (q, id) = (q.clone(), id.clone());
                std::thread::spawn(move || q.decide(&id, v, "r", None, t0()))
            })
            .collect();
        let results: Vec<_> = racers.into_iter().map(|t| t.join().unwrap()).collect();
        let won: Vec<&Record> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(won.len(), 1, "{results:?}");
        assert_eq!(q.get(&id, t0()).unwrap().unwrap(), *won[0]);
    }
}

#[test]
fn notices_are_capped_oldest_first_and_requests_are_kept() {
    let (_d, q) = queue();
    let r = q.submit(req("keep me"), LIMITS, t0()).unwrap();
    let first = q.notify("first", t0()).unwrap();
    for i in 1..MAX_NOTICES + 5 {
        q.notify(&format!("n{i}"), t0() + Duration::seconds(i as i64))
            .unwrap();
    }
    let all = q.list(t0()).unwrap();
    let notices = all.iter().filter(|r| r.state == State::Notice).count();
    assert_eq!(notices, MAX_NOTICES);
    assert!(all.iter().any(|x| x.id == r.id));
    assert!(!all.iter().any(|x| x.id == first.id));
    assert!(matches!(
        q.notify("  ", t0()),
        Err(QueueError::Invalid {
            field: "message",
            ..
        })
    ));
}

#[test]
fn new_requests_are_checked() {
    let ok = NewRequest::new("  Push  ", "d", Some(" ")).unwrap();
    assert_eq!((ok.title.as_str(), ok.kind), ("Push", None));
    let long_title = "t".repeat(MAX_TITLE_CHARS + 1);
    let long_kind = "k".repeat(MAX_KIND_CHARS + 1);
    let cases: &[(&str, Option<&str>, &str)] = &[
        ("", None, "title"),
        ("two\nlines", None, "title"),
        (&long_title, None, "title"),
        ("ok", Some(&long_kind), "kind"),
        ("ok", Some("a\u{1b}b"), "kind"),
    ];
    for (title, kind, field) in cases {
        match NewRequest::new(title, "", *kind) {
            Err(QueueError::Invalid { field: f, .. }) => assert_eq!(f, *field, "{title:?}"),
            other => panic!("{title:?} {kind:?}: {other:?}"),
        }
    }
}

#[test]
fn the_record_format_is_stable_json() {
    let (_d, q) = queue();
    let r = decided(&q, Verdict::Approve, "alice", Some("ok"));
    let v: serde_json::Value = serde_json::from_slice(&fs::read(q.path(&r.id)).unwrap()).unwrap();
    assert_eq!(v["format"], FORMAT);
    assert_eq!(v["id"], r.id.as_str());
    assert_eq!(v["bottle"], "b");
    assert_eq!(v["state"], "approved");
    assert_eq!(v["kind"], "push");
    assert_eq!(v["title"], "Push");
    assert_eq!(v["details"], "the details");
    assert_eq!(v["created_at"], "2026-01-02T03:04:05Z");
    assert_eq!(v["expires_at"], "2026-01-02T04:04:05Z");
    assert_eq!(v["decision"]["by"], "alice");
    assert_eq!(v["decision"]["comment"], "ok");
}

/// A state root with the queues of bottles `a` and `b`, created.
fn two_bottles() -> (tempfile::TempDir, StateRoot, Queue, Queue) {
    let dir = tempfile::tempdir().unwrap();
    let state = StateRoot::at(dir.path());
    let qa = Queue::of(&state.bottle("a").unwrap());
    let qb = Queue::of(&state.bottle("b").unwrap());
    qa.create().unwrap();
    qb.create().unwrap();
    (dir, state, qa, qb)
}

#[test]
fn waiting_lists_pending_requests_and_notices_of_all_bottles_oldest_first() {
    let (_dir, state, qa, qb) = two_bottles();
    let b1 = qb.submit(req("b1"), LIMITS, t0()).unwrap();
    let a1 = qa
        .submit(req("a1"), LIMITS, t0() + Duration::seconds(1))
        .unwrap();
    let an = qa.notify("note", t0() + Duration::seconds(2)).unwrap();
    let a2 = qa
        .submit(req("a2"), LIMITS, t0() + Duration::seconds(3))
        .unwrap();
    qa.decide(&a2.id, Verdict::Approve, "x", None, t0())
        .unwrap();
    let ids = |rs: Vec<Record>| rs.into_iter().map(|r| r.id).collect::<Vec<_>>();
    let now = t0() + Duration::seconds(10);
    assert_eq!(
        ids(waiting(&state, None, now).unwrap()),
        [b1.id.clone(), a1.id.clone(), an.id.clone()]
    );
    assert_eq!(
        ids(waiting(&state, Some("a"), now).unwrap()),
        [a1.id, an.id]
    );
    // A bottle without a queue has nothing waiting; a bad name is an error.
    assert!(waiting(&state, Some("c"), now).unwrap().is_empty());
    assert!(waiting(&state, Some("../x"), now).is_err());
}

#[test]
fn answer_finds_the_bottle_or_asks_which() {
    let (_dir, state, qa, qb) = two_bottles();
    let r = qa.submit(req("x"), LIMITS, t0()).unwrap();
    // The same id in another bottle (ids are drawn per bottle).
    let mut twin = r.clone();
    twin.bottle = "b".into();
    qb.write(&twin).unwrap();
    let e = answer(&state, None, &r.id, Verdict::Approve, None, t0()).unwrap_err();
    assert!(matches!(e, QueueError::Ambiguous { .. }), "{e:?}");
    assert!(e.to_string().contains("a, b"), "{e}");
    let done = answer(&state, Some("a"), &r.id, Verdict::Approve, None, t0()).unwrap();
    assert_eq!(done.state, State::Approved);
    let unknown = Id::parse("000000").unwrap();
    let e = answer(&state, None, &unknown, Verdict::Deny, None, t0()).unwrap_err();
    assert!(e.to_string().contains("any bottle's queue"), "{e}");
}

#[test]
fn printable_defuses_terminal_controls() {
    let cases = [
        ("plain text", false, "plain text"),
        ("red \u{1b}[31m", false, "red \\u{1b}[31m"),
        ("a\rb", true, "a\\u{d}b"),
        ("two\nlines\tok", true, "two\nlines\tok"),
        ("two\nlines", false, "two\\u{a}lines"),
        ("abc\u{202e}fed", false, "abc\\u{202e}fed"),
        ("\u{9b}2J", false, "\\u{9b}2J"),
        ("naïve ✓", false, "naïve ✓"),
    ];
    for (text, multiline, want) in cases {
        assert_eq!(printable(text, multiline), want, "{text:?}");
    }
}

#[test]
fn ages_read_like_ages() {
    let cases = [
        (0, "0s"),
        (59, "59s"),
        (60, "1m"),
        (3599, "59m"),
        (3600 + 5 * 60, "1h05m"),
        (86400 * 3 + 4 * 3600, "3d04h"),
        (-5, "0s"),
    ];
    for (secs, want) in cases {
        assert_eq!(age(Duration::seconds(secs)), want, "{secs}");
    }
}

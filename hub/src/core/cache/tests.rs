//! Tests of `cache.rs`.

use super::*;

fn deploy() -> KindKey {
    KindKey {
        group: "apps".into(),
        kind: "Deployment".into(),
    }
}

fn event(change: Change, kind: &KindKey, ns: &str, name: &str, rv: &str) -> Event {
    let body =
        serde_json::json!({"metadata": {"name": name, "namespace": ns, "resourceVersion": rv}});
    Event {
        change,
        key: ObjectKey {
            group: kind.group.clone(),
            kind: kind.kind.clone(),
            namespace: ns.into(),
            name: name.into(),
        },
        version: "v1".into(),
        uid: format!("uid-{name}"),
        resource_version: rv.into(),
        body: Arc::from(RawValue::from_string(body.to_string()).expect("json")),
    }
}

fn upsert(c: &mut AccountCache, k: &KindKey, name: &str, rv: &str) {
    c.apply(event(Change::Upsert, k, "a", name, rv));
}

/// A cache holding Deployment `a/<name>` at resourceVersion 1.
fn holding(name: &str) -> (AccountCache, KindKey) {
    let mut c = AccountCache::default();
    let k = deploy();
    upsert(&mut c, &k, name, "1");
    (c, k)
}

fn names(cache: &AccountCache) -> Vec<String> {
    cache.objects().map(|(k, _)| k.name.to_owned()).collect()
}

#[test]
fn events_apply_in_order_and_deletes_remove() {
    let (mut c, k) = holding("web");
    upsert(&mut c, &k, "web", "2");
    upsert(&mut c, &k, "api", "3");
    c.apply(event(Change::Delete, &k, "a", "api", "4"));
    assert_eq!(names(&c), ["web"]);
    let key = ObjectKey {
        group: "apps".into(),
        kind: "Deployment".into(),
        namespace: "a".into(),
        name: "web".into(),
    };
    assert_eq!(c.get(&key).map(|o| o.resource_version.as_str()), Some("2"));
    // Delete then re-create keeps the re-created one.
    c.apply(event(Change::Delete, &k, "a", "web", "5"));
    upsert(&mut c, &k, "web", "6");
    assert_eq!(c.get(&key).map(|o| o.resource_version.as_str()), Some("6"));
    assert_eq!(c.resume_points()[0].resource_version, "6");
}

#[test]
fn sync_end_drops_objects_not_relisted_of_that_kind_only() {
    let mut c = AccountCache::default();
    let k = deploy();
    let svc = KindKey {
        group: String::new(),
        kind: "Service".into(),
    };
    upsert(&mut c, &k, "stays", "1");
    upsert(&mut c, &k, "vanished", "2");
    c.apply(event(Change::Upsert, &svc, "a", "other-kind", "3"));
    c.sync_start(&k, "v1", SyncMode::FullRelist, "");
    assert!(
        c.resume_points()
            .iter()
            .all(|p| p.kind != k || p.resource_version.is_empty()),
        "no resume point mid-relist"
    );
    upsert(&mut c, &k, "stays", "10");
    c.apply(event(Change::Upsert, &k, "b", "new", "11"));
    let outcome = c.sync_end(&k, "v1", "12", 2);
    assert_eq!(outcome.dropped, 1);
    assert_eq!(names(&c), ["other-kind", "stays", "new"]);
    let points = c.resume_points();
    assert!(
        points
            .iter()
            .any(|p| p.kind == k && p.resource_version == "12")
    );
}

#[test]
fn resumed_watch_drops_nothing() {
    let (mut c, k) = holding("web");
    c.sync_start(&k, "v1", SyncMode::ResumedWatch, "");
    upsert(&mut c, &k, "api", "2");
    assert_eq!(c.sync_end(&k, "v1", "3", 0).dropped, 0);
    assert_eq!(names(&c), ["api", "web"]);
}

#[test]
fn count_mismatch_keeps_objects_and_forces_relist() {
    let (mut c, k) = holding("web");
    c.sync_start(&k, "v1", SyncMode::FullRelist, "");
    upsert(&mut c, &k, "api", "2");
    let outcome = c.sync_end(&k, "v1", "3", 5);
    assert!(outcome.count_mismatch);
    assert_eq!(names(&c), ["api", "web"]);
    assert!(
        c.resume_points()
            .iter()
            .all(|p| p.resource_version.is_empty())
    );
}

#[test]
fn a_new_sync_start_replaces_the_open_one() {
    let (mut c, k) = holding("old");
    c.sync_start(&k, "v1", SyncMode::ResumedWatch, "");
    c.sync_start(&k, "v1", SyncMode::FullRelist, "");
    upsert(&mut c, &k, "fresh", "2");
    assert_eq!(c.sync_end(&k, "v1", "3", 1).dropped, 1);
    assert_eq!(names(&c), ["fresh"]);
}

#[test]
fn abandoned_relist_has_no_resume_point_and_later_relist_sweeps() {
    let (mut c, k) = holding("web");
    c.sync_start(&k, "v1", SyncMode::FullRelist, "");
    c.abandon_open_syncs();
    assert!(
        c.resume_points()
            .iter()
            .all(|p| p.resource_version.is_empty())
    );
    c.sync_start(&k, "v1", SyncMode::FullRelist, "");
    assert_eq!(c.sync_end(&k, "v1", "9", 0).dropped, 1);
    assert!(c.is_empty());
}

#[test]
fn progress_never_moves_a_resume_point_back() {
    let mut c = AccountCache::default();
    let k = deploy();
    c.sync_start(&k, "v1", SyncMode::FullRelist, "");
    c.sync_end(&k, "v1", "100", 0);
    c.progress(&k, "v1", "90");
    assert_eq!(c.resume_points()[0].resource_version, "100");
    c.progress(&k, "v1", "120");
    assert_eq!(c.resume_points()[0].resource_version, "120");
    // A relist starts over from its own list's version, older or not.
    c.sync_start(&k, "v1", SyncMode::FullRelist, "");
    c.sync_end(&k, "v1", "50", 0);
    assert_eq!(c.resume_points()[0].resource_version, "50");
}

#[test]
fn a_complete_relist_records_its_selection() {
    let (mut c, k) = holding("web");
    c.sync_start(&k, "v1", SyncMode::FullRelist, "sel-a");
    upsert(&mut c, &k, "web", "2");
    c.sync_end(&k, "v1", "3", 1);
    assert_eq!(c.resume_points()[0].selection, "sel-a");
    // A resumed watch keeps it; a relist cut short does not take the new one.
    c.sync_start(&k, "v1", SyncMode::ResumedWatch, "sel-b");
    c.sync_end(&k, "v1", "4", 0);
    assert_eq!(c.resume_points()[0].selection, "sel-a");
    c.sync_start(&k, "v1", SyncMode::FullRelist, "sel-b");
    c.abandon_open_syncs();
    let points = c.resume_points();
    assert_eq!(points.len(), 1, "objects cached, so the kind is reported");
    assert_eq!(points[0].resource_version, "", "but with nowhere to resume");
    assert_eq!(points[0].selection, "sel-a");
}

#[test]
fn an_empty_relist_clears_a_kind_and_it_is_no_longer_reported() {
    let (mut c, k) = holding("web");
    c.sync_start(&k, "v1", SyncMode::FullRelist, "");
    c.sync_end(&k, "v1", "", 0);
    assert!(c.is_empty());
    assert!(c.resume_points().is_empty());
}

#[test]
fn progress_moves_resume_point_outside_relists() {
    let mut c = AccountCache::default();
    let k = deploy();
    c.sync_start(&k, "v1", SyncMode::FullRelist, "");
    c.progress(&k, "v1", "5");
    assert!(c.resume_points().is_empty());
    c.sync_end(&k, "v1", "6", 0);
    c.progress(&k, "v1", "7");
    assert_eq!(c.resume_points()[0].resource_version, "7");
    assert_eq!(c.resume_points()[0].version, "v1");
}

#[test]
fn removing_an_account_drops_its_objects() {
    let mut cache = Cache::new();
    let k = deploy();
    cache
        .account_mut("a")
        .apply(event(Change::Upsert, &k, "n", "x", "1"));
    cache
        .account_mut("b")
        .apply(event(Change::Upsert, &k, "n", "y", "1"));
    assert_eq!(cache.total(), 2);
    assert_eq!(cache.remove("a"), 1);
    assert_eq!(cache.total(), 1);
    assert!(cache.account("a").is_none());
}

#[test]
fn places_sort_as_namespace_then_name() {
    let parts = [
        ("", "a"),
        ("a", "x"),
        ("a", "x-y"),
        ("a-b", "x"),
        ("a.b", "a"),
        ("ab", ""),
        ("b", "a"),
    ];
    for (x_ns, x_name) in parts {
        for (y_ns, y_name) in parts {
            let (x, y) = (NsName::new(x_ns, x_name), NsName::new(y_ns, y_name));
            assert_eq!(
                x.cmp(&y),
                (x_ns, x_name).cmp(&(y_ns, y_name)),
                "{x:?} against {y:?}"
            );
            assert_eq!((x.namespace(), x.name()), (x_ns, x_name));
        }
    }
}

#[test]
fn pages_go_on_across_kinds_in_key_order() {
    let mut c = AccountCache::default();
    let svc = KindKey {
        group: String::new(),
        kind: "Service".into(),
    };
    let k = deploy();
    upsert(&mut c, &k, "web", "1");
    upsert(&mut c, &k, "api", "2");
    c.apply(event(Change::Upsert, &svc, "a", "front", "3"));
    c.apply(event(Change::Upsert, &svc, "b", "back", "4"));
    let all: Vec<ObjectKey> = c.objects().map(|(k, _)| k.to_key()).collect();
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted, "every object in key order");
    assert_eq!(all.len(), 4);
    for (i, after) in all.iter().enumerate() {
        let rest: Vec<ObjectKey> = c
            .objects_after(Some(after))
            .map(|(k, _)| k.to_key())
            .collect();
        assert_eq!(rest, all[i + 1..], "after {after:?}");
    }
    let in_a: Vec<&str> = c.objects_of(&svc, Some("a")).map(|(k, _)| k.name).collect();
    assert_eq!(in_a, ["front"]);
    assert_eq!(c.objects_of(&svc, None).count(), 2);
}

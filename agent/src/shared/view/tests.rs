//! Tests of `view.rs`: what an account takes of a shared watch is what its own watch
//! would have given it.

use super::*;
use crate::objects::LeanObject;
use kube::discovery::ApiResource;

fn config(yaml: &str) -> AccountConfig {
    serde_yaml::from_str(&format!("name: a\nkubeconfigFile: a.kubeconfig\n{yaml}")).expect("config")
}

fn configmaps() -> WatchedKind {
    WatchedKind {
        resource: ApiResource {
            group: String::new(),
            version: "v1".into(),
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            plural: "configmaps".into(),
        },
        namespaced: true,
    }
}

fn cm(ns: &str, uid: &str, managed: bool) -> LeanObject {
    let labels = if managed {
        serde_json::json!({ "app.kubernetes.io/managed-by": "spinnaker" })
    } else {
        serde_json::json!({})
    };
    let object = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": { "name": uid, "namespace": ns, "uid": uid, "labels": labels }
    });
    serde_json::from_str(&object.to_string()).expect("object")
}

const ADDED: EventType = EventType::Added;
const MODIFIED: EventType = EventType::Modified;
const DELETED: EventType = EventType::Deleted;

#[test]
fn an_account_takes_only_its_namespaces_and_nothing_twice() {
    let c = config("namespaces: [web, api]");
    let k = configmaps();
    let ns = ["web".to_string(), "api".to_string()];
    // Listed web at 10 and api at 20 (one after the other).
    let mut v = View::listed(&ns, &[10, 20], std::iter::empty(), &c);
    let mut admit =
        |ty, obj: LeanObject, version| v.admit(&c, &k, ty, &obj.metadata, Some(version));
    // What each list covered is not handed on again.
    assert_eq!(admit(ADDED, cm("api", "1", false), 15), None);
    assert_eq!(admit(ADDED, cm("web", "2", false), 16), Some(ADDED));
    // Another namespace: not the account's.
    assert_eq!(admit(ADDED, cm("other", "3", false), 21), None);
    assert_eq!(admit(MODIFIED, cm("api", "1", false), 22), Some(MODIFIED));
    // A rewind of the shared watch (for another account) hands on nothing again.
    assert_eq!(admit(MODIFIED, cm("api", "1", false), 22), None);
    assert_eq!(admit(ADDED, cm("web", "2", false), 16), None);
    // Going on alone: each namespace from where it is.
    assert_eq!(v.versions(&ns), vec!["22".to_string(), "22".to_string()]);
}

#[test]
fn omitted_namespaces_are_left_out_of_a_watch_of_all() {
    let c = config("omitNamespaces: [kube-system]");
    let k = configmaps();
    let mut v = View::resumed(5, &c);
    let mut admit =
        |ty, obj: LeanObject, version| v.admit(&c, &k, ty, &obj.metadata, Some(version));
    assert_eq!(admit(ADDED, cm("kube-system", "1", false), 6), None);
    assert_eq!(admit(ADDED, cm("web", "2", false), 7), Some(ADDED));
    // Older than the resume point: the hub has it.
    assert_eq!(admit(ADDED, cm("web", "3", false), 5), None);
    assert_eq!(v.versions(&[]), vec!["7".to_string()]);
}

#[test]
fn a_label_selector_turns_changes_into_adds_and_deletes_as_the_api_server_would() {
    let c = config("onlySpinnakerManaged: true");
    let k = configmaps();
    // Listed: object "1" (managed).
    let mut v = View::listed(&[], &[10], ["1"].into_iter(), &c);
    let mut admit =
        |ty, obj: LeanObject, version| v.admit(&c, &k, ty, &obj.metadata, Some(version));
    // "1" loses its label: to the account it is gone.
    assert_eq!(admit(MODIFIED, cm("web", "1", false), 11), Some(DELETED));
    // Changed again, still unlabelled: nothing.
    assert_eq!(admit(MODIFIED, cm("web", "1", false), 12), None);
    // Labelled again: added, then modified.
    assert_eq!(admit(MODIFIED, cm("web", "1", true), 13), Some(ADDED));
    assert_eq!(admit(MODIFIED, cm("web", "1", true), 14), Some(MODIFIED));
    // An unlabelled object never reaches the account, its deletion neither.
    assert_eq!(admit(ADDED, cm("web", "2", false), 15), None);
    assert_eq!(admit(DELETED, cm("web", "2", false), 16), None);
    assert_eq!(admit(DELETED, cm("web", "1", true), 17), Some(DELETED));
    // Without the selector every change passes as it is.
    let plain = config("");
    let mut v = View::listed(&[], &[10], std::iter::empty(), &plain);
    assert_eq!(
        v.admit(
            &plain,
            &k,
            MODIFIED,
            &cm("web", "2", false).metadata,
            Some(11)
        ),
        Some(MODIFIED)
    );
}

#[test]
fn bookmarks_and_expiries_count_against_what_the_account_has() {
    let c = config("");
    let mut v = View::listed(&[], &[10], std::iter::empty(), &c);
    assert!(!v.bookmark(9), "older than the list");
    assert!(v.bookmark(12));
    assert!(!v.bookmark(12), "the same again");
    // An expiry the list was taken after is covered; a later one is not.
    assert!(v.covers(10));
    assert!(!v.covers(11));
    // A resumed account has listed nothing: any expiry relists it.
    assert!(!View::resumed(50, &c).covers(1));
}

#[test]
fn a_bookmark_after_changes_the_account_does_not_select_still_tells_the_hub() {
    // The account streams namespace "quiet"; the shared watch also carries "busy".
    let c = config("namespaces: [quiet]\n");
    let k = configmaps();
    let mut v = View::resumed(10, &c);
    for (i, version) in (11..=20).enumerate() {
        let uid = format!("b-{i}");
        assert_eq!(
            v.admit(
                &c,
                &k,
                MODIFIED,
                &cm("busy", &uid, false).metadata,
                Some(version)
            ),
            None
        );
    }
    // The API server's next bookmark is at the newest change it sent, one the account
    // did not take: the hub must still hear that the account is current up to it.
    assert!(
        v.bookmark(20),
        "the bookmark tells the hub the account is current to 20"
    );
    assert!(!v.bookmark(20), "the same again");
    // A change the account takes, then a bookmark at it: nothing new to tell.
    assert_eq!(
        v.admit(
            &c,
            &k,
            MODIFIED,
            &cm("quiet", "q", false).metadata,
            Some(21)
        ),
        Some(MODIFIED)
    );
    assert!(!v.bookmark(21));
}

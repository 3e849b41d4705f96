//! Push rules over HTTP: the spec's defaults (from ruma), creating a keyword rule placed
//! with `before`/`after`, enabling and disabling, changing actions, deleting, the change
//! reaching `/sync` as `m.push_rules` account data, and malformed rules refused.

use serde_json::{Value, json};

use crate::both_backends;
use crate::client::Client;
use crate::harness::{Backend, Server};

both_backends!(push_rules);

fn ids(rules: &Value, kind: &str) -> Vec<String> {
    rules[kind]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|r| r["rule_id"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn global(c: &Client) -> Value {
    c.get("/pushrules/").ok()["global"].clone()
}

fn push_rules(backend: Backend) {
    let srv = Server::start(backend);
    let alice = srv.register("alice");
    let rules = global(&alice);
    let overrides = ids(&rules, "override");
    assert_eq!(
        overrides.first().map(String::as_str),
        Some(".m.rule.master")
    );
    assert!(
        overrides.iter().any(|r| r == ".m.rule.suppress_edits"),
        "{overrides:?}"
    );
    assert!(
        ids(&rules, "underride")
            .iter()
            .any(|r| r == ".m.rule.message")
    );
    assert_eq!(alice.get("/pushrules/global/").ok(), rules);

    // A keyword rule, then a second one placed before it.
    let kw = json!({"pattern": "cheese", "actions": ["notify", {"set_tweak": "highlight"}]});
    alice.put("/pushrules/global/content/cheese", &kw).ok();
    alice
        .put(
            "/pushrules/global/content/wine?before=cheese",
            &json!({"pattern": "wine", "actions": ["notify"]}),
        )
        .ok();
    let content = ids(&global(&alice), "content");
    let w = content.iter().position(|r| r == "wine").expect("wine");
    let c = content.iter().position(|r| r == "cheese").expect("cheese");
    assert!(w < c, "{content:?}");
    let rule = alice.get("/pushrules/global/content/cheese").ok();
    assert_eq!(rule["pattern"], "cheese");
    assert_eq!(rule["enabled"], true);

    // Enabled and actions, also on a server-default rule.
    alice
        .put(
            "/pushrules/global/content/cheese/enabled",
            &json!({"enabled": false}),
        )
        .ok();
    assert_eq!(
        alice.get("/pushrules/global/content/cheese/enabled").ok()["enabled"],
        false
    );
    alice
        .put(
            "/pushrules/global/underride/.m.rule.message/actions",
            &json!({"actions": []}),
        )
        .ok();
    assert_eq!(
        alice
            .get("/pushrules/global/underride/.m.rule.message/actions")
            .ok()["actions"],
        json!([])
    );
    // The change reaches /sync as account data.
    let sync = alice.sync(None, 0, None);
    let pr = sync["account_data"]["events"]
        .as_array()
        .and_then(|l| l.iter().find(|e| e["type"] == "m.push_rules"))
        .cloned()
        .expect("m.push_rules in /sync");
    assert!(ids(&pr["content"]["global"], "content").contains(&"cheese".to_owned()));

    // Delete.
    alice.delete("/pushrules/global/content/wine").ok();
    assert!(!ids(&global(&alice), "content").contains(&"wine".to_owned()));
    alice
        .delete("/pushrules/global/content/wine")
        .expect_err(404, "M_NOT_FOUND");

    // Another user's rules are untouched.
    let bob = srv.register("bob");
    assert!(!ids(&global(&bob), "content").contains(&"cheese".to_owned()));

    // Malformed rules and forbidden changes.
    alice
        .put(
            "/pushrules/global/content/x",
            &json!({"actions": ["notify"]}),
        )
        .expect_err(400, "M_BAD_JSON");
    alice
        .put(
            "/pushrules/global/content/x",
            &json!({"pattern": "x", "actions": "notify"}),
        )
        .expect_err(400, "M_BAD_JSON");
    alice
        .put(
            "/pushrules/global/override/x",
            &json!({"actions": [], "conditions": [{"kind": 5}]}),
        )
        .expect_err(400, "M_BAD_JSON");
    alice
        .put(
            "/pushrules/global/override/.m.rule.mine",
            &json!({"actions": [], "conditions": []}),
        )
        .expect_err(400, "M_INVALID_PARAM");
    alice
        .put(
            "/pushrules/global/content/y?before=nosuchrule",
            &json!({"pattern": "y", "actions": []}),
        )
        .expect_err(404, "M_NOT_FOUND");
    alice
        .put("/pushrules/global/room/not-a-room", &json!({"actions": []}))
        .expect_err(400, "M_INVALID_PARAM");
    alice
        .put("/pushrules/global/bogus/x", &json!({"actions": []}))
        .expect_err(400, "M_INVALID_PARAM");
    alice
        .put(
            "/pushrules/device/content/x",
            &json!({"pattern": "x", "actions": []}),
        )
        .expect_err(400, "M_INVALID_PARAM");
    alice
        .delete("/pushrules/global/override/.m.rule.master")
        .expect_err(400, "M_INVALID_PARAM");
    alice
        .get("/pushrules/global/content/nosuch")
        .expect_err(404, "M_NOT_FOUND");
    alice
        .put(
            "/pushrules/global/content/nosuch/enabled",
            &json!({"enabled": true}),
        )
        .expect_err(404, "M_NOT_FOUND");
    alice
        .put(
            "/pushrules/global/content/cheese/enabled",
            &json!({"enabled": "yes"}),
        )
        .expect_err(400, "M_BAD_JSON");
    // The refused requests changed nothing.
    assert!(ids(&global(&alice), "content").contains(&"cheese".to_owned()));
    srv.assert_no_panics();
}

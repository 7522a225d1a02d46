//! A kind defined here, in a test, gets the whole generic API from its definition alone:
//! create (single and bulk), show, list with filters, `fields=`, sorting and pagination links,
//! update with `If-Match`, tags, delete, attribute policing and project isolation.

mod common;

use std::sync::Arc;

use async_trait::async_trait;
use common::{fault, Api, As};
use isthmus_controller::{app_with, Config, Kind, Registry, Service};
use isthmus_model::input::Input;
use isthmus_model::policy::Roles;
use isthmus_model::resource::{attr, Definition, Rights};
use isthmus_model::{Caller, Error, Meta, Result};
use isthmus_store::MemoryStore;
use serde::{Deserialize, Serialize};
use serde_json::json;

/// A toy resource: a size anyone may change and a colour fixed at creation and shown to
/// admins only.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Widget {
    meta: Meta,
    size: u32,
    colour: String,
}

static WIDGETS: Definition<Widget> = Definition {
    collection: "widgets",
    singular: "widget",
    plural: "widgets",
    fault: "Widget",
    named: true,
    tagged: true,
    description: Some(Rights::ALL),
    updatable: true,
    api: isthmus_model::resource::Api::Neutron,
    attributes: &[
        attr("size", Rights::ALL, |w, _| Some(json!(w.size))),
        attr("colour", Rights::CREATE_QUERY, |w, v| {
            v.roles.has(Roles::ADMIN).then(|| json!(w.colour))
        }),
    ],
};

isthmus_model::resource!(Widget, WIDGETS);

fn size(input: &mut Input) -> Result<Option<u32>> {
    match input.nullable_integer("size")?.flatten() {
        None => Ok(None),
        Some(n) if (0..=100).contains(&n) => Ok(Some(n as u32)),
        Some(n) => Err(Error::invalid_attr(
            "size",
            format!("'{n}' is not in 0..100"),
        )),
    }
}

#[async_trait]
impl Kind for Widget {
    fn from_input(_: &Service, _: &Caller, meta: Meta, input: &mut Input) -> Result<Self> {
        Ok(Widget {
            meta,
            size: size(input)?.unwrap_or(1),
            colour: input.string("colour", 16)?.unwrap_or_default(),
        })
    }

    fn apply_input(_: &Service, _: &Caller, widget: &mut Self, input: &mut Input) -> Result<()> {
        if let Some(size) = size(input)? {
            widget.size = size;
        }
        Ok(())
    }
}

fn api() -> Api {
    let store = Arc::new(MemoryStore::new());
    Api {
        router: app_with(
            store.clone(),
            Config::default(),
            Registry::neutron().with::<Widget>(),
        ),
        store,
    }
}

#[tokio::test]
async fn a_toy_kind_gets_the_whole_generic_api() {
    let api = api();
    let a = As::Member("project-a");
    let b = As::Member("project-b");

    // Discovery lists it beside Neutron's own.
    let (_, v) = api.call(a, "GET", "/v2.0", None).await;
    assert!(v["resources"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["collection"] == "widgets"));

    // Create: defaults, validation, policing.
    let w1 = api
        .create(
            a,
            "widgets",
            "widget",
            json!({"name": "w1", "colour": "red", "tags": ["x"]}),
        )
        .await;
    assert_eq!(w1["size"], 1);
    assert_eq!(w1["project_id"], "project-a");
    assert_eq!(w1["tags"], json!(["x"]));
    assert!(w1.get("colour").is_none(), "colour is admin-only");
    let id = w1["id"].as_str().unwrap().to_owned();
    for (body, wanted) in [
        (json!({"widget": {"size": 101}}), "HTTPBadRequest"),
        (json!({"widget": {"bogus": 1}}), "HTTPBadRequest"),
        (json!({"widget": {"revision_number": 5}}), "HTTPBadRequest"),
        (json!({"gadget": {}}), "HTTPBadRequest"),
    ] {
        let (s, v) = api.call(a, "POST", "/v2.0/widgets", Some(body)).await;
        assert_eq!((s, fault(&v)), (400, wanted), "{v}");
    }
    // Bulk create, all or nothing.
    let (s, v) = api
        .call(
            a,
            "POST",
            "/v2.0/widgets",
            Some(json!({"widgets": [{"name": "w2", "size": 7}, {"name": "w3", "size": 3}]})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let (s, _) = api
        .call(
            a,
            "POST",
            "/v2.0/widgets",
            Some(json!({"widgets": [{"name": "w4"}, {"size": 500}]})),
        )
        .await;
    assert_eq!(s, 400);
    let (_, v) = api.call(a, "GET", "/v2.0/widgets?name=w4", None).await;
    assert_eq!(v["widgets"], json!([]), "a failed bulk leaves nothing");

    // Show, as admin (sees colour) and as member; other projects get 404.
    let (s, v) = api
        .call(
            As::Admin("admin"),
            "GET",
            &format!("/v2.0/widgets/{id}"),
            None,
        )
        .await;
    assert_eq!((s, v["widget"]["colour"].clone()), (200, json!("red")));
    let (s, v) = api
        .call(a, "GET", &format!("/v2.0/widgets/{id}?fields=size"), None)
        .await;
    assert_eq!((s, v), (200, json!({"widget": {"size": 1}})));
    let (s, v) = api
        .call(b, "GET", &format!("/v2.0/widgets/{id}"), None)
        .await;
    assert_eq!((s, fault(&v)), (404, "WidgetNotFound"));

    // List: filters, sort, fields, pagination.
    let (_, v) = api
        .call(
            a,
            "GET",
            "/v2.0/widgets?sort_key=size&sort_dir=desc&fields=name",
            None,
        )
        .await;
    assert_eq!(
        v["widgets"],
        json!([{"name": "w2"}, {"name": "w3"}, {"name": "w1"}])
    );
    let (_, v) = api
        .call(a, "GET", "/v2.0/widgets?size=3&size=7", None)
        .await;
    assert_eq!(v["widgets"].as_array().unwrap().len(), 2);
    let (s, _) = api.call(a, "GET", "/v2.0/widgets?bogus=1", None).await;
    assert_eq!(s, 400);
    let (_, v) = api
        .call(a, "GET", "/v2.0/widgets?limit=2&sort_key=name", None)
        .await;
    assert_eq!(v["widgets"].as_array().unwrap().len(), 2);
    assert_eq!(v["widgets_links"][0]["rel"], "next");
    let (_, v) = api.call(b, "GET", "/v2.0/widgets", None).await;
    assert_eq!(v["widgets"], json!([]));

    // Update: allowed attributes, If-Match, create-only attributes refused.
    let (s, v) = api
        .call(
            a,
            "PUT",
            &format!("/v2.0/widgets/{id}"),
            Some(json!({"widget": {"size": 5, "name": "w1b"}})),
        )
        .await;
    assert_eq!((s, v["widget"]["size"].clone()), (200, json!(5)));
    assert_eq!(v["widget"]["revision_number"], 2);
    let (s, v) = api
        .call(
            a,
            "PUT",
            &format!("/v2.0/widgets/{id}"),
            Some(json!({"widget": {"colour": "blue"}})),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(
        v["NeutronError"]["message"],
        "Attribute 'colour' not allowed in PUT"
    );
    let body = serde_json::to_vec(&json!({"widget": {"size": 6}})).unwrap();
    let (s, v) = api
        .raw(
            a,
            "PUT",
            &format!("/v2.0/widgets/{id}"),
            Some(body.clone()),
            &[("if-match", "revision_number=1")],
        )
        .await;
    assert_eq!((s, fault(&v)), (412, "RevisionNumberConstraintFailed"));
    let (s, _) = api
        .raw(
            a,
            "PUT",
            &format!("/v2.0/widgets/{id}"),
            Some(body),
            &[("if-match", "revision_number=2")],
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = api
        .call(
            b,
            "PUT",
            &format!("/v2.0/widgets/{id}"),
            Some(json!({"widget": {"size": 9}})),
        )
        .await;
    assert_eq!(s, 404);

    // Tags.
    let (s, _) = api
        .call(a, "PUT", &format!("/v2.0/widgets/{id}/tags/y"), None)
        .await;
    assert_eq!(s, 201);
    let (_, v) = api.call(a, "GET", "/v2.0/widgets?tags=x,y", None).await;
    assert_eq!(v["widgets"][0]["id"], json!(id));
    let (s, _) = api
        .call(a, "DELETE", &format!("/v2.0/widgets/{id}/tags/nope"), None)
        .await;
    assert_eq!(s, 404);

    // No member actions unless the kind has some.
    let (s, v) = api
        .call(
            a,
            "PUT",
            &format!("/v2.0/widgets/{id}/polish"),
            Some(json!({})),
        )
        .await;
    assert_eq!((s, fault(&v)), (404, "HTTPNotFound"));

    // Delete.
    let (s, _) = api
        .call(b, "DELETE", &format!("/v2.0/widgets/{id}"), None)
        .await;
    assert_eq!(s, 404);
    let (s, _) = api
        .call(a, "DELETE", &format!("/v2.0/widgets/{id}"), None)
        .await;
    assert_eq!(s, 204);
    let (s, v) = api
        .call(a, "GET", &format!("/v2.0/widgets/{id}"), None)
        .await;
    assert_eq!((s, fault(&v)), (404, "WidgetNotFound"));
    assert!(api.keys(&format!("/isthmus/widgets/{id}")).await.is_empty());
}

//! The API under hostile input: every rejection in Neutron's format (also the ones the HTTP
//! layer makes), request ids, limits on every list-valued attribute, counts that do not fit.

mod common;

use axum::body::Body;
use axum::http::Request;
use common::{fault, Api, As};
use serde_json::{json, Value};
use tower::ServiceExt;

const A: As = As::Member("project-a");

/// A raw request: status, request id header, body.
async fn send(api: &Api, method: &str, uri: &str, body: Vec<u8>) -> (u16, Option<String>, Value) {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("x-project-id", "project-a")
        .header("x-roles", "member")
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let response = api.router.clone().oneshot(req).await.unwrap();
    let status = response.status().as_u16();
    let id = response
        .headers()
        .get("x-openstack-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, id, value)
}

fn neutron_type(v: &Value) -> &str {
    v["NeutronError"]["type"]
        .as_str()
        .unwrap_or("<not a Neutron error>")
}

#[tokio::test]
async fn rejections_of_the_http_layer_speak_neutron() {
    let api = Api::memory();
    // A body over the limit.
    let big = vec![b' '; isthmus_controller::api::BODY_LIMIT + 1];
    let (s, id, v) = send(&api, "POST", "/v2.0/networks", big).await;
    assert_eq!(
        (s, neutron_type(&v)),
        (413, "HTTPRequestEntityTooLarge"),
        "{v}"
    );
    assert!(id.is_some_and(|id| id.starts_with("req-")));
    // A path id that is not UTF-8.
    let (s, _, v) = send(&api, "GET", "/v2.0/networks/%FF%FE", Vec::new()).await;
    assert!(s == 400 || s == 404, "{s}");
    assert!(v["NeutronError"]["type"].is_string(), "{v}");
    // Bodies that are not JSON, or not objects.
    for body in [&b"{"[..], b"\xff\xfe", b"[]", b"null"] {
        let (s, _, v) = send(&api, "POST", "/v2.0/networks", body.to_vec()).await;
        assert_eq!(s, 400, "{body:?}: {v}");
        assert!(v["NeutronError"]["message"].is_string(), "{v}");
    }
    // Unknown paths and methods.
    let (s, _, v) = send(&api, "GET", "/v2.0/nothing-here", Vec::new()).await;
    assert_eq!((s, neutron_type(&v)), (404, "HTTPNotFound"));
    let (s, _, v) = send(&api, "PATCH", "/v2.0/networks", Vec::new()).await;
    assert_eq!((s, neutron_type(&v)), (405, "HTTPMethodNotAllowed"));
    // Every answer has its request id, successes too.
    let (s, id, _) = send(&api, "GET", "/v2.0/networks", Vec::new()).await;
    assert_eq!(s, 200);
    assert!(id.is_some());
}

#[tokio::test]
async fn list_valued_attributes_have_limits() {
    let api = Api::memory();
    let net = api
        .create(A, "networks", "network", json!({"name": "n"}))
        .await;
    let net_id = net["id"].as_str().unwrap().to_owned();
    let subnet = |extra: Value| {
        let mut body = json!({"network_id": net_id, "ip_version": 4, "cidr": "10.0.0.0/16"});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        json!({ "subnet": body })
    };
    let dns: Vec<String> = (1..=6).map(|i| format!("10.9.9.{i}")).collect();
    let (s, v) = api
        .call(
            A,
            "POST",
            "/v2.0/subnets",
            Some(subnet(json!({"dns_nameservers": dns}))),
        )
        .await;
    assert_eq!((s, fault(&v)), (400, "DNSNameServersExhausted"), "{v}");
    let routes: Vec<Value> = (0..21)
        .map(|i| json!({"destination": format!("172.16.{i}.0/24"), "nexthop": "10.0.0.1"}))
        .collect();
    let (s, v) = api
        .call(
            A,
            "POST",
            "/v2.0/subnets",
            Some(subnet(json!({"host_routes": routes}))),
        )
        .await;
    assert_eq!((s, fault(&v)), (400, "HostRoutesExhausted"), "{v}");
    let pools: Vec<Value> = (0..65)
        .map(|i| json!({"start": format!("10.0.{i}.10"), "end": format!("10.0.{i}.20")}))
        .collect();
    let (s, v) = api
        .call(
            A,
            "POST",
            "/v2.0/subnets",
            Some(subnet(json!({"allocation_pools": pools}))),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    // Nothing of the refused subnets is left.
    let (_, v) = api.call(A, "GET", "/v2.0/subnets", None).await;
    assert_eq!(v["subnets"].as_array().unwrap().len(), 0);

    api.create(A, "subnets", "subnet", subnet(json!({}))["subnet"].clone())
        .await;
    let ips: Vec<Value> = (10..16)
        .map(|i| json!({"ip_address": format!("10.0.0.{i}")}))
        .collect();
    let (s, v) = api
        .call(
            A,
            "POST",
            "/v2.0/ports",
            Some(json!({"port": {"network_id": net_id, "fixed_ips": ips}})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(v["NeutronError"]["message"]
        .as_str()
        .unwrap()
        .contains("maximum amount of fixed ips"));

    // Tags: 50 at most, however they come.
    let tags: Vec<String> = (0..51).map(|i| format!("t{i}")).collect();
    let (s, v) = api
        .call(
            A,
            "POST",
            "/v2.0/networks",
            Some(json!({"network": {"name": "tagged", "tags": tags}})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    let path = format!("/v2.0/networks/{net_id}/tags");
    let (s, v) = api
        .call(A, "PUT", &path, Some(json!({"tags": tags[..50]})))
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = api
        .call(A, "PUT", &format!("{path}/one-too-many"), None)
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(v["NeutronError"]["message"]
        .as_str()
        .unwrap()
        .contains("per-resource limit of 50"));
    let (s, _) = api.call(A, "PUT", &path, Some(json!({"tags": tags}))).await;
    assert_eq!(s, 400);
}

#[tokio::test]
async fn address_counts_beyond_64_bits_do_not_break_availability() {
    let api = Api::memory();
    let admin = As::Admin("ops");
    let net = api
        .create(admin, "networks", "network", json!({"name": "v6"}))
        .await;
    let net_id = net["id"].as_str().unwrap().to_owned();
    for cidr in ["2001:db8::/63", "2001:db8:1::/48"] {
        api.create(
            admin,
            "subnets",
            "subnet",
            json!({"network_id": net_id, "ip_version": 6, "cidr": cidr}),
        )
        .await;
    }
    for _ in 0..2 {
        let (s, v) = api
            .call(admin, "GET", "/v2.0/network-ip-availabilities", None)
            .await;
        assert_eq!(s, 200, "{v}");
        let mine = v["network_ip_availabilities"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["network_id"] == net_id.as_str())
            .unwrap();
        assert_eq!(mine["total_ips"], json!(u64::MAX));
    }
    let (s, _) = api
        .call(
            admin,
            "GET",
            &format!("/v2.0/network-ip-availabilities/{net_id}"),
            None,
        )
        .await;
    assert_eq!(s, 200);
}

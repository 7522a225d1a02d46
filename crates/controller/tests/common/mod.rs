//! An in-process client for the API router.
#![allow(dead_code)]

use std::sync::Arc;

use std::time::Duration;

use axum::body::Body;
use axum::http::Request;
use axum::Router;
use futures_util::StreamExt;
use isthmus_controller::{app, Config};
use isthmus_store::{MemoryStore, SharedStore};
use serde_json::Value;
use tower::ServiceExt;

/// Who is calling.
#[derive(Clone, Copy)]
pub enum As<'a> {
    /// No headers: noauth admin.
    Anonymous,
    /// A member of a project.
    Member(&'a str),
    /// An admin of a project.
    Admin(&'a str),
    /// A manager of a project (a member that also picks floating IP addresses).
    Manager(&'a str),
    /// A reader of a project.
    Reader(&'a str),
}

#[derive(Clone)]
pub struct Api {
    pub router: Router,
    pub store: SharedStore,
}

impl Api {
    /// The DHCP ports of network `net` (one at most).
    pub async fn dhcp_ports(&self, net: &str) -> Vec<Value> {
        let (s, v) = self
            .call(
                As::Anonymous,
                "GET",
                &format!("/v2.0/ports?network_id={net}&device_owner=network:dhcp"),
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
        v["ports"].as_array().cloned().unwrap_or_default()
    }

    pub fn memory() -> Api {
        Self::on(Arc::new(MemoryStore::new()))
    }

    pub fn on(store: SharedStore) -> Api {
        Api {
            router: app(store.clone(), Config::default()),
            store,
        }
    }

    pub async fn raw(
        &self,
        who: As<'_>,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        extra: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "test:9696");
        match who {
            As::Anonymous => {}
            As::Member(p) => req = req.header("x-project-id", p).header("x-roles", "member"),
            As::Admin(p) => req = req.header("x-project-id", p).header("x-roles", "admin"),
            As::Manager(p) => req = req.header("x-project-id", p).header("x-roles", "manager"),
            As::Reader(p) => req = req.header("x-project-id", p).header("x-roles", "reader"),
        }
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        let req = req
            .body(body.map(Body::from).unwrap_or_else(Body::empty))
            .unwrap();
        let response = self.router.clone().oneshot(req).await.unwrap();
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        let value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        assert_ne!(status, 500, "{method} {path} answered 500: {value}");
        (status, value)
    }

    pub async fn call(
        &self,
        who: As<'_>,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.raw(
            who,
            method,
            path,
            body.map(|b| serde_json::to_vec(&b).unwrap()),
            &[],
        )
        .await
    }

    /// POSTs and expects 201; returns the object.
    pub async fn create(
        &self,
        who: As<'_>,
        collection: &str,
        singular: &str,
        body: Value,
    ) -> Value {
        let (status, value) = self
            .call(
                who,
                "POST",
                &format!("/v2.0/{collection}"),
                Some(serde_json::json!({ singular: body })),
            )
            .await;
        assert_eq!(status, 201, "create {collection}: {value}");
        value[singular].clone()
    }

    /// A network with one IPv4 subnet; returns (network id, subnet id).
    pub async fn network_with_subnet(&self, who: As<'_>, cidr: &str) -> (String, String) {
        let net = self
            .create(who, "networks", "network", serde_json::json!({"name": "n"}))
            .await;
        let net_id = net["id"].as_str().unwrap().to_owned();
        let sub = self
            .create(
                who,
                "subnets",
                "subnet",
                serde_json::json!({"network_id": net_id, "ip_version": 4, "cidr": cidr}),
            )
            .await;
        (net_id, sub["id"].as_str().unwrap().to_owned())
    }

    /// Keys under a prefix in the store.
    pub async fn keys(&self, prefix: &str) -> Vec<String> {
        self.store
            .range(prefix)
            .await
            .unwrap()
            .kvs
            .into_iter()
            .map(|kv| kv.key)
            .collect()
    }
}

pub fn fault(value: &Value) -> &str {
    value["NeutronError"]["type"]
        .as_str()
        .unwrap_or("<no NeutronError>")
}

/// An open watch stream, read line by line.
pub struct Watch {
    body: axum::body::BodyDataStream,
    buffer: Vec<u8>,
}

impl Watch {
    pub async fn open(api: &Api, query: &str) -> Watch {
        let req = Request::builder()
            .uri(format!("/isthmus/v1/watch?{query}"))
            .body(Body::empty())
            .unwrap();
        let response = api.router.clone().oneshot(req).await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/x-ndjson");
        Watch {
            body: response.into_body().into_data_stream(),
            buffer: Vec::new(),
        }
    }

    /// A resumed watch: `POST` with what the client holds.
    pub async fn resume(api: &Api, query: &str, held: &Value) -> Watch {
        let req = Request::builder()
            .method("POST")
            .uri(format!("/isthmus/v1/watch?{query}"))
            .header("content-type", "application/json")
            .body(Body::from(held.to_string()))
            .unwrap();
        let response = api.router.clone().oneshot(req).await.unwrap();
        assert_eq!(response.status(), 200);
        Watch {
            body: response.into_body().into_data_stream(),
            buffer: Vec::new(),
        }
    }

    pub async fn next(&mut self) -> Value {
        loop {
            if let Some(pos) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=pos).collect();
                return serde_json::from_slice(&line).unwrap();
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.body.next())
                .await
                .expect("no watch line within 10 s")
                .expect("watch ended")
                .unwrap();
            self.buffer.extend_from_slice(&chunk);
        }
    }

    /// Lines until the next one of `kind`/`type` matches, skipping bookmarks.
    pub async fn until(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let line = self.next().await;
            if pred(&line) {
                return line;
            }
        }
    }

    /// Every non-bookmark line until a synced bookmark.
    pub async fn snapshot(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let line = self.next().await;
            if line["type"] == "BOOKMARK" && line["synced"] == true {
                return out;
            }
            out.push(line);
        }
    }
}

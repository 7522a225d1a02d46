//! Quotas: per-project limits, checked on create against usage the controller counts from
//! one store watch (owners only: a few dozen bytes per object), so a check costs a lookup.
//! Creates racing in one project can pass a limit by the number in flight, as with Neutron's
//! no-lock driver.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use serde::Deserialize;

use isthmus_model::policy;
use isthmus_model::quota::{resource_of, Quota};
use isthmus_model::view::ObjectKind;
use isthmus_model::{Caller, Error, Result};
use isthmus_store::{Compare, Op, Txn};
use serde_json::{json, Value};

use super::{decode, encode, store_error, Attempt, Service};
use crate::informer::Sink;

/// How many objects of each kind each project holds, and whose each object is: about 24
/// bytes an object (its UUID's bytes and a project number).
#[derive(Debug, Default)]
pub struct Usage {
    /// (kind, project number) → objects.
    counts: HashMap<(ObjectKind, u32), usize>,
    /// (kind, id's bytes: every project-owned id is a UUID) → project number.
    owners: HashMap<(ObjectKind, [u8; 16]), u32>,
    /// Project → its number.
    numbers: HashMap<Box<str>, u32>,
}

#[derive(Deserialize)]
struct Owned {
    meta: OwnedMeta,
}

#[derive(Deserialize)]
struct OwnedMeta {
    project_id: String,
}

impl Usage {
    /// How many objects of `kind` `project_id` holds.
    pub fn count(&self, kind: ObjectKind, project_id: &str) -> usize {
        self.numbers
            .get(project_id)
            .and_then(|p| self.counts.get(&(kind, *p)))
            .copied()
            .unwrap_or(0)
    }

    fn number(&mut self, project_id: &str) -> u32 {
        if let Some(n) = self.numbers.get(project_id) {
            return *n;
        }
        let n = u32::try_from(self.numbers.len()).unwrap_or(u32::MAX);
        self.numbers.insert(project_id.into(), n);
        n
    }

    fn adjust(&mut self, kind: ObjectKind, project: u32, up: bool) {
        let n = self.counts.entry((kind, project)).or_insert(0);
        if up {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.counts.remove(&(kind, project));
            }
        }
    }
}

/// A UUID's 16 bytes (instead of a 36-character string per object).
fn uuid_bytes(id: &str) -> Option<[u8; 16]> {
    uuid::Uuid::parse_str(id).ok().map(|u| *u.as_bytes())
}

/// The feed replays events in order after its snapshot, so the last word on an object is
/// always its latest: no revision needs keeping per object.
impl Sink for Usage {
    fn put(&mut self, kind: ObjectKind, key: &str, raw: &Bytes, _revision: u64) -> Result<bool> {
        // Objects without a project (nodes, bindings) count for nobody.
        let Ok(owned) = serde_json::from_slice::<Owned>(raw) else {
            return Ok(false);
        };
        let Some(id) = uuid_bytes(crate::keys::last_segment(key)) else {
            return Ok(false);
        };
        let project = self.number(&owned.meta.project_id);
        match self.owners.insert((kind, id), project) {
            Some(old) if old == project => {}
            Some(old) => {
                self.adjust(kind, old, false);
                self.adjust(kind, project, true);
            }
            None => self.adjust(kind, project, true),
        }
        Ok(true)
    }

    fn delete(&mut self, kind: ObjectKind, id: &str, _revision: u64) {
        let Some(id) = uuid_bytes(id) else { return };
        if let Some(project) = self.owners.remove(&(kind, id)) {
            self.adjust(kind, project, false);
        }
    }
}

/// Prefix of every project's quota overrides.
const QUOTAS: &str = "/isthmus/quotas/";

/// How long a check waits for the mirror to hold this controller's own latest writes.
const CATCH_UP: Duration = Duration::from_secs(1);

fn kind_of(resource: &str) -> Option<ObjectKind> {
    Some(match resource {
        "network" => ObjectKind::Network,
        "subnet" => ObjectKind::Subnet,
        "port" => ObjectKind::Port,
        "router" => ObjectKind::Router,
        "floatingip" => ObjectKind::FloatingIp,
        "security_group" => ObjectKind::SecurityGroup,
        "security_group_rule" => ObjectKind::SecurityGroupRule,
        _ => return None,
    })
}

fn check_project(project_id: &str) -> Result<()> {
    if project_id.is_empty() || project_id.len() > 255 || project_id.contains('/') {
        return Err(Error::invalid_attr(
            "project_id",
            format!("'{project_id}' is not a valid project"),
        ));
    }
    Ok(())
}

impl Service {
    async fn load_quota(&self, project_id: &str) -> Result<(Quota, Option<u64>)> {
        check_project(project_id)?;
        let key = format!("{QUOTAS}{project_id}");
        Ok(match self.store.get(&key).await.map_err(store_error)? {
            Some(kv) => (decode(&key, &kv.value)?, Some(kv.mod_revision)),
            None => (
                Quota {
                    project_id: project_id.to_owned(),
                    ..Quota::default()
                },
                None,
            ),
        })
    }

    /// What `project_id` holds of `resource`, counting this controller's own writes: when
    /// even its writes the feed has not applied yet (each adds at most one object of these
    /// kinds; a group's rules come many at once) could not reach `limit`, the count is used
    /// as it is, else the feed is first waited for.
    async fn usage(&self, project_id: &str, resource: &str, limit: usize) -> Result<usize> {
        let Some(kind) = kind_of(resource) else {
            return Ok(0);
        };
        self.usage.ready().await?;
        let pending = self.unapplied_writes();
        let count = self.usage.mirror().count(kind, project_id);
        if kind != ObjectKind::SecurityGroupRule && count.saturating_add(pending) < limit {
            return Ok(count);
        }
        self.usage.catch_up(self.last_write(), CATCH_UP).await?;
        Ok(self.usage.mirror().count(kind, project_id))
    }

    /// Refuses with 409 `OverQuota` a create in `collection` that would pass the project's
    /// limit. The project is the body's `project_id`/`tenant_id` for admins, else the
    /// caller's.
    pub(crate) async fn check_quota(
        &self,
        caller: &Caller,
        collection: &str,
        singular: &str,
        body: &Value,
    ) -> Result<()> {
        let Some(resource) = resource_of(collection) else {
            return Ok(());
        };
        let requested = body.get(singular).and_then(|o| {
            o.get("project_id")
                .or_else(|| o.get("tenant_id"))
                .and_then(Value::as_str)
        });
        let project = match requested {
            Some(p) if caller.is_privileged() && !p.is_empty() => p,
            _ => caller.project_id.as_str(),
        };
        let (quota, _) = self.load_quota(project).await?;
        let Ok(limit) = usize::try_from(quota.limit(resource)) else {
            return Ok(()); // -1: unlimited
        };
        // A bulk request's earlier items are staged, not yet in the usage feed.
        let staged = crate::staged::Staged::staged_new(&format!("/isthmus/{collection}/"));
        quota.check(
            resource,
            self.usage(project, resource, limit).await? + staged,
            1,
        )
    }

    /// A project reads its own quota; another project's takes the `get_quota` rule (as
    /// Neutron's quota controller does).
    fn may_read_quota(caller: &Caller, project_id: &str) -> Result<()> {
        if caller.project_id == project_id {
            Ok(())
        } else {
            policy::authorize("get_quota", caller, &policy::Target::owned_by(project_id))
        }
    }

    /// `GET /v2.0/quotas/{project}` (admin or the project itself).
    pub async fn show_quota(&self, caller: &Caller, project_id: &str) -> Result<Value> {
        Self::may_read_quota(caller, project_id)?;
        Ok(json!({"quota": self.load_quota(project_id).await?.0.render()}))
    }

    /// `GET /v2.0/quotas/{project}/details`: limit, use and reservations per resource.
    pub async fn quota_details(&self, caller: &Caller, project_id: &str) -> Result<Value> {
        Self::may_read_quota(caller, project_id)?;
        let (quota, _) = self.load_quota(project_id).await?;
        self.usage.catch_up(self.last_write(), CATCH_UP).await?;
        let mirror = self.usage.mirror();
        let details =
            quota.render_details(|r| kind_of(r).map_or(0, |k| mirror.count(k, project_id)));
        Ok(json!({ "quota": details }))
    }

    /// `GET /v2.0/quotas/{project}/default`.
    pub async fn default_quota(&self, project_id: &str) -> Result<Value> {
        check_project(project_id)?;
        Ok(json!({"quota": Quota::default().render()}))
    }

    /// `GET /v2.0/quotas` (admin): every project with limits of its own.
    pub async fn list_quotas(&self, caller: &Caller) -> Result<Value> {
        policy::authorize_caller("get_quota", caller)?;
        let quotas: Vec<Value> = self
            .load_all::<Quota>(QUOTAS)
            .await?
            .into_iter()
            .map(|(q, _)| {
                let mut m = q.render();
                m.insert("project_id".to_owned(), json!(q.project_id));
                m.insert("tenant_id".to_owned(), json!(q.project_id));
                Value::Object(m)
            })
            .collect();
        Ok(json!({ "quotas": quotas }))
    }

    /// Refuses (400, as Neutron) a limit lowered under what the project already uses.
    async fn check_new_limits(
        &self,
        project_id: &str,
        before: &Quota,
        after: &Quota,
    ) -> Result<()> {
        // The changed limits (-1, unlimited, needs no check) of counted resources.
        let lowered: Vec<(&String, usize, ObjectKind)> = after
            .limits
            .iter()
            .filter(|(resource, limit)| before.limits.get(*resource) != Some(limit))
            .filter_map(|(resource, &limit)| {
                Some((resource, usize::try_from(limit).ok()?, kind_of(resource)?))
            })
            .collect();
        if lowered.is_empty() {
            return Ok(());
        }
        self.usage.ready().await?;
        self.usage.catch_up(self.last_write(), CATCH_UP).await?;
        let mirror = self.usage.mirror();
        for (resource, limit, kind) in lowered {
            let used = mirror.count(kind, project_id);
            if used > limit {
                return Err(Error::BadRequest(format!(
                    "Quota limit {limit} for {resource} must be greater than or equal to already used {used}"
                )));
            }
        }
        Ok(())
    }

    /// `PUT /v2.0/quotas/{project}` (admin).
    pub async fn update_quota(
        &self,
        caller: &Caller,
        project_id: &str,
        body: Value,
    ) -> Result<Value> {
        policy::authorize_caller("update_quota", caller)?;
        let key = format!("{QUOTAS}{project_id}");
        let quota = self
            .retry(|| {
                let body = body.clone();
                let key = key.clone();
                async move {
                    let (mut quota, rev) = self.load_quota(project_id).await?;
                    let before = quota.clone();
                    if !quota.apply_update(body)? {
                        self.check_new_limits(project_id, &before, &quota).await?;
                    }
                    let txn = Txn::new()
                        .when(match rev {
                            Some(r) => Compare::mod_revision(key.clone(), r),
                            None => Compare::absent(key.clone()),
                        })
                        .then(Op::put(key, encode(&quota)?));
                    Ok(if self.commit(txn).await? {
                        Attempt::Done(quota)
                    } else {
                        Attempt::Retry
                    })
                }
            })
            .await?;
        Ok(json!({"quota": quota.render()}))
    }

    /// `DELETE /v2.0/quotas/{project}` (admin): back to the defaults.
    pub async fn delete_quota(&self, caller: &Caller, project_id: &str) -> Result<()> {
        policy::authorize_caller("delete_quota", caller)?;
        let (_, rev) = self.load_quota(project_id).await?;
        if rev.is_none() {
            return Err(Error::fault(
                "TenantQuotaNotFound",
                404,
                format!("Quota for tenant {project_id} could not be found."),
            ));
        }
        self.commit(Txn::new().then(Op::delete(format!("{QUOTAS}{project_id}"))))
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_counts_owners() {
        const P1: &str = "00000000-0000-0000-0000-000000000001";
        const P2: &str = "00000000-0000-0000-0000-000000000002";
        const P3: &str = "00000000-0000-0000-0000-000000000003";
        let mut usage = Usage::default();
        let put = |u: &mut Usage, id: &str, project: &str, rev: u64| {
            let raw = format!(r#"{{"meta": {{"id": "{id}", "project_id": "{project}"}}}}"#);
            let key = format!("/isthmus/ports/{id}");
            Sink::put(u, ObjectKind::Port, &key, &Bytes::from(raw), rev).unwrap()
        };
        let counts = |u: &Usage| {
            (
                u.count(ObjectKind::Port, "a"),
                u.count(ObjectKind::Port, "b"),
            )
        };
        assert!(put(&mut usage, P1, "a", 5));
        assert!(put(&mut usage, P2, "a", 6));
        assert!(put(&mut usage, P3, "b", 7));
        assert_eq!(counts(&usage), (2, 1));
        assert!(put(&mut usage, P1, "b", 8), "moved to another project");
        assert_eq!(counts(&usage), (1, 2));
        Sink::delete(&mut usage, ObjectKind::Port, P3, 9);
        Sink::delete(&mut usage, ObjectKind::Port, P3, 10);
        assert_eq!(counts(&usage), (1, 1), "a second delete changes nothing");
        let node = &Bytes::from_static(br#"{"name": "n"}"#);
        assert!(!Sink::put(&mut usage, ObjectKind::Node, "/isthmus/nodes/n", node, 10).unwrap());
        assert_eq!(usage.count(ObjectKind::Network, "a"), 0);
    }
}

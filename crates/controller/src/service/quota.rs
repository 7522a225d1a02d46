//! Quotas: per-project limits, checked on create against usage counted in the controller's
//! mirror of the store (the one node watches read), so a check costs a lookup. Creates racing
//! in one project can pass a limit by the number in flight, as with Neutron's no-lock driver.

use std::time::Duration;

use isthmus_model::quota::{resource_of, Quota};
use isthmus_model::view::ObjectKind;
use isthmus_model::{Caller, Error, Result};
use isthmus_store::{Compare, Op, Txn};
use serde_json::{json, Value};

use super::{decode, encode, store_error, Attempt, Service};

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

    async fn usage(&self, project_id: &str, resource: &str) -> Result<usize> {
        let Some(kind) = kind_of(resource) else {
            return Ok(0);
        };
        self.informer.catch_up(CATCH_UP).await?;
        Ok(self.informer.mirror().count(kind, project_id))
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
            Some(p) if caller.is_admin && !p.is_empty() => p,
            _ => caller.project_id.as_str(),
        };
        let (quota, _) = self.load_quota(project).await?;
        if quota.limit(resource) < 0 {
            return Ok(());
        }
        quota.check(resource, self.usage(project, resource).await?, 1)
    }

    fn may_read_quota(caller: &Caller, project_id: &str) -> Result<()> {
        if caller.owns(project_id) {
            Ok(())
        } else {
            Err(Error::PolicyNotAuthorized("rule:get_quota".to_owned()))
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
        self.informer.catch_up(CATCH_UP).await?;
        let mirror = self.informer.mirror();
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
        caller.require_admin("get_quota")?;
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

    /// `PUT /v2.0/quotas/{project}` (admin).
    pub async fn update_quota(
        &self,
        caller: &Caller,
        project_id: &str,
        body: Value,
    ) -> Result<Value> {
        caller.require_admin("update_quota")?;
        let key = format!("{QUOTAS}{project_id}");
        let quota = self
            .retry(|| {
                let body = body.clone();
                let key = key.clone();
                async move {
                    let (mut quota, rev) = self.load_quota(project_id).await?;
                    quota.apply_update(body)?;
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
        caller.require_admin("delete_quota")?;
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

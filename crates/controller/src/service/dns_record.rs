//! DNS records: names the node-local resolvers answer beside ports' (Kubernetes Services'),
//! written by the Kubernetes watcher; every node's watch carries them.

use isthmus_model::dns_record::DnsRecord;
use isthmus_model::view::{object_key, Object, ObjectKind};
use isthmus_model::Result;
use isthmus_store::{Op, Txn};

use super::{encode, Service};
use crate::keys;

impl Service {
    /// Writes `record` unless the store already holds exactly it.
    pub async fn put_dns_record(&self, record: &DnsRecord) -> Result<()> {
        let key = object_key(ObjectKind::DnsRecord, &record.id);
        let same = matches!(self.informer().mirror().decoded(&key), Some(Object::DnsRecord(r)) if r == record);
        if !same {
            let txn = Txn::new().then(Op::put(keys::dns_record(&record.id), encode(record)?));
            self.commit(txn).await?;
        }
        Ok(())
    }

    /// Removes record `id` if there is one.
    pub async fn delete_dns_record(&self, id: &str) -> Result<()> {
        let key = object_key(ObjectKind::DnsRecord, id);
        if self.informer().mirror().get(&key).is_some() {
            self.commit(Txn::new().then(Op::delete(keys::dns_record(id))))
                .await?;
        }
        Ok(())
    }

    /// The ids of every record.
    pub async fn dns_record_ids(&self) -> Result<Vec<String>> {
        Ok(self
            .load_all::<DnsRecord>(keys::DNS_RECORDS)
            .await?
            .into_iter()
            .map(|(r, _)| r.id)
            .collect())
    }
}

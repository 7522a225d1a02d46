//! List queries: attribute filters (repeated = any of), tag filters, `fields=`, sorting and
//! `limit`/`marker` pagination with Neutron's `*_links`.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::input::as_bool;
use crate::input::{Rights, Schema};
use crate::wire::Wire;

/// A parsed list query.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListQuery {
    /// attribute → accepted values (any of).
    pub filters: BTreeMap<String, Vec<String>>,
    /// Attributes to return; empty = all.
    pub fields: Vec<String>,
    /// (attribute, ascending) in priority order.
    pub sort: Vec<(String, bool)>,
    /// Page size.
    pub limit: Option<usize>,
    /// Id of the last item of the previous page.
    pub marker: Option<String>,
    /// Page backwards from the marker.
    pub page_reverse: bool,
    /// `tags`: must carry all of these.
    pub tags_all: Vec<String>,
    /// `tags-any`: must carry one of these.
    pub tags_any: Vec<String>,
    /// `not-tags`: must not carry all of these.
    pub not_tags_all: Vec<String>,
    /// `not-tags-any`: must carry none of these.
    pub not_tags_any: Vec<String>,
    /// The raw pairs, to rebuild links.
    pairs: Vec<(String, String)>,
}

/// A page of results and the links to its neighbours.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<W> {
    /// The items of the page, in order.
    pub items: Vec<W>,
    /// `[{"rel": "next"|"previous", "href": ...}]`, empty when not paginating.
    pub links: Vec<Value>,
}

fn split_tags(v: &str) -> impl Iterator<Item = String> + '_ {
    v.split(',').filter(|t| !t.is_empty()).map(str::to_owned)
}

impl ListQuery {
    /// Parses query pairs; `attributes` are the names the resource may be filtered and sorted
    /// by.
    pub fn parse(pairs: &[(String, String)], schema: &dyn Schema) -> Result<ListQuery> {
        let mut q = ListQuery {
            pairs: pairs.to_vec(),
            ..Default::default()
        };
        let mut sort_keys = Vec::new();
        let mut sort_dirs = Vec::new();
        for (key, value) in pairs {
            match key.as_str() {
                "fields" => q.fields.extend(split_tags(value)),
                "sort_key" => sort_keys.push(value.clone()),
                "sort_dir" => sort_dirs.push(value.clone()),
                "limit" => {
                    let n: i64 = value.parse().map_err(|_| {
                        Error::BadRequest(format!(
                            "Limit must be an integer 0 or greater and not '{value}'"
                        ))
                    })?;
                    if n < 0 {
                        return Err(Error::BadRequest(format!(
                            "Limit must be an integer 0 or greater and not '{value}'"
                        )));
                    }
                    q.limit = (n > 0).then_some(n as usize);
                }
                "marker" => q.marker = Some(value.clone()),
                "page_reverse" => q.page_reverse = as_bool("page_reverse", &json!(value))?,
                "tags" => q.tags_all.extend(split_tags(value)),
                "tags-any" => q.tags_any.extend(split_tags(value)),
                "not-tags" => q.not_tags_all.extend(split_tags(value)),
                "not-tags-any" => q.not_tags_any.extend(split_tags(value)),
                attr => {
                    if !queryable(schema, attr) {
                        return Err(Error::BadRequest(format!(
                            "{attr} is invalid attribute for filtering"
                        )));
                    }
                    q.filters
                        .entry(attr.to_owned())
                        .or_default()
                        .push(value.clone());
                }
            }
        }
        if sort_keys.len() != sort_dirs.len() && !sort_dirs.is_empty() {
            return Err(Error::BadRequest(
                "The number of sort_keys and sort_dirs must be same".to_owned(),
            ));
        }
        for (i, key) in sort_keys.into_iter().enumerate() {
            if !queryable(schema, &key) {
                return Err(Error::BadRequest(format!(
                    "{key} is invalid attribute for sort_key"
                )));
            }
            let ascending = match sort_dirs.get(i).map(String::as_str) {
                None | Some("asc") => true,
                Some("desc") => false,
                Some(other) => {
                    return Err(Error::BadRequest(format!(
                        "{other} is invalid value for sort_dir, valid values are 'asc' and 'desc'"
                    )))
                }
            };
            q.sort.push((key, ascending));
        }
        Ok(q)
    }

    /// Whether an item passes every filter.
    pub fn matches<W: Wire + ?Sized>(&self, item: &W) -> bool {
        self.filters
            .iter()
            .all(|(attr, wanted)| attribute_matches(item.attr(attr).as_ref(), wanted))
            && self.tags_match(item)
    }

    fn tags_match<W: Wire + ?Sized>(&self, item: &W) -> bool {
        if self.tags_all.is_empty()
            && self.tags_any.is_empty()
            && self.not_tags_all.is_empty()
            && self.not_tags_any.is_empty()
        {
            return true;
        }
        let tags = item.attr("tags");
        let has = |t: &String| {
            tags.as_ref()
                .and_then(Value::as_array)
                .is_some_and(|tags| tags.iter().any(|x| x.as_str() == Some(t)))
        };
        (self.tags_all.is_empty() || self.tags_all.iter().all(has))
            && (self.tags_any.is_empty() || self.tags_any.iter().any(has))
            && (self.not_tags_all.is_empty() || !self.not_tags_all.iter().all(has))
            && !self.not_tags_any.iter().any(has)
    }

    /// Filters, sorts and pages `items`; `base` is the collection URL used in links. The
    /// requested `fields` are applied when the page is serialised ([`crate::wire::WireSer`]).
    pub fn apply<W: Wire>(&self, items: Vec<W>, base: &str) -> Result<Page<W>> {
        let mut items: Vec<W> = items.into_iter().filter(|i| self.matches(i)).collect();
        let by_id_only = self.sort.iter().all(|(k, _)| k == "id");
        if by_id_only {
            // Pagination needs a total order; the id is one, and needs no attribute rendering.
            let ascending = self.sort.first().is_none_or(|s| s.1);
            items.sort_by(|a, b| {
                let ord = a.id().cmp(b.id());
                if ascending {
                    ord
                } else {
                    ord.reverse()
                }
            });
        } else {
            let mut sort = self.sort.clone();
            if !sort.iter().any(|(k, _)| k == "id") {
                sort.push(("id".to_owned(), sort.first().is_none_or(|s| s.1)));
            }
            let mut keyed: Vec<(Vec<Option<Value>>, W)> = items
                .into_iter()
                .map(|i| (sort.iter().map(|(k, _)| i.attr(k)).collect(), i))
                .collect();
            keyed.sort_by(|(a, _), (b, _)| {
                for ((x, y), (_, ascending)) in a.iter().zip(b).zip(&sort) {
                    let ord = compare_values(x.as_ref(), y.as_ref());
                    let ord = if *ascending { ord } else { ord.reverse() };
                    if ord != Ordering::Equal {
                        return ord;
                    }
                }
                Ordering::Equal
            });
            items = keyed.into_iter().map(|(_, i)| i).collect();
        }
        self.paginate(items, base)
    }

    /// Neutron's pagination: without `limit` everything (a marker alone is ignored); with
    /// it, the page after the marker (before it with `page_reverse`, the last page without a
    /// marker), a `next` link unless a forward page came out short and a `previous` link
    /// unless a reverse page did.
    fn paginate<W: Wire>(&self, mut items: Vec<W>, base: &str) -> Result<Page<W>> {
        let Some(limit) = self.limit else {
            return Ok(Page {
                items,
                links: Vec::new(),
            });
        };
        let reverse = self.page_reverse;
        let (from, to) = match &self.marker {
            Some(m) => {
                let at = items
                    .iter()
                    .position(|i| i.id() == m)
                    .ok_or_else(|| Error::BadRequest(format!("Marker {m} could not be found")))?;
                if reverse {
                    (at.saturating_sub(limit), at)
                } else {
                    (at + 1, (at + 1 + limit).min(items.len()))
                }
            }
            None if reverse => (items.len().saturating_sub(limit), items.len()),
            None => (0, limit.min(items.len())),
        };
        let page: Vec<W> = items.drain(from..to).collect();
        let short = page.len() < limit;
        let mut links = Vec::new();
        if !short || reverse {
            links.push(
                json!({"rel": "next", "href": self.link(base, page.last().map(|i| i.id()), false)}),
            );
        }
        if !short || !reverse {
            links.push(json!({"rel": "previous", "href": self.link(base, page.first().map(|i| i.id()), true)}));
        }
        Ok(Page { items: page, links })
    }

    fn link(&self, base: &str, marker: Option<&str>, reverse: bool) -> String {
        let mut query: Vec<String> = self
            .pairs
            .iter()
            .filter(|(k, _)| k != "marker" && k != "page_reverse")
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        if let Some(marker) = marker {
            query.push(format!("marker={}", encode(marker)));
        }
        if reverse {
            query.push("page_reverse=True".to_owned());
        }
        format!("{base}?{}", query.join("&"))
    }

    /// Projects one rendered object to the requested fields (GET of one resource).
    pub fn project_one(&self, item: Map<String, Value>) -> Value {
        if self.fields.is_empty() {
            return Value::Object(item);
        }
        Value::Object(
            item.into_iter()
                .filter(|(k, _)| self.fields.iter().any(|f| f == k))
                .collect(),
        )
    }
}

fn queryable(schema: &dyn Schema, name: &str) -> bool {
    schema.rights(name).is_some_and(|r| r.has(Rights::QUERY))
}

/// Percent-encodes a query component.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn scalar_matches(value: &Value, wanted: &str) -> bool {
    match value {
        Value::String(s) => s == wanted,
        Value::Bool(b) => as_bool("filter", &json!(wanted)).is_ok_and(|w| w == *b),
        Value::Number(n) => n.to_string() == wanted,
        Value::Null => wanted.is_empty() || wanted == "None",
        _ => false,
    }
}

fn attribute_matches(value: Option<&Value>, wanted: &[String]) -> bool {
    let Some(value) = value else { return false };
    match value {
        Value::Array(elements) if elements.iter().all(Value::is_object) && !elements.is_empty() => {
            // fixed_ips=ip_address=X&fixed_ips=subnet_id=Y: any of per key, all keys.
            let mut by_key: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for w in wanted {
                let (k, v) = w.split_once('=').unwrap_or(("", w.as_str()));
                by_key.entry(k).or_default().push(v);
            }
            by_key.iter().all(|(key, values)| {
                elements.iter().any(|e| {
                    values.iter().any(|v| match key.strip_suffix("_substr") {
                        Some(base) => e
                            .get(base)
                            .and_then(Value::as_str)
                            .is_some_and(|s| s.contains(v)),
                        None => e.get(*key).is_some_and(|x| scalar_matches(x, v)),
                    })
                })
            })
        }
        Value::Array(elements) => wanted
            .iter()
            .any(|w| elements.iter().any(|e| scalar_matches(e, w))),
        Value::Object(_) => {
            let rendered = value.to_string();
            wanted.contains(&rendered)
        }
        scalar => wanted.iter().any(|w| scalar_matches(scalar, w)),
    }
}

fn compare_values(a: Option<&Value>, b: Option<&Value>) -> Ordering {
    fn rank(v: Option<&Value>) -> u8 {
        match v {
            None | Some(Value::Null) => 0,
            Some(Value::Bool(_)) => 1,
            Some(Value::Number(_)) => 2,
            Some(Value::String(_)) => 3,
            Some(_) => 4,
        }
    }
    match (a, b) {
        (Some(Value::Bool(x)), Some(Value::Bool(y))) => x.cmp(y),
        (Some(Value::Number(x)), Some(Value::Number(y))) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(Ordering::Equal),
        (Some(Value::String(x)), Some(Value::String(y))) => x.cmp(y),
        _ => rank(a).cmp(&rank(b)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Item(Map<String, Value>);

    impl Wire for Item {
        fn count(&self) -> usize {
            ATTRS.len()
        }
        fn name_at(&self, index: usize) -> &'static str {
            ATTRS[index]
        }
        fn value_at(&self, index: usize) -> Option<Value> {
            self.0.get(ATTRS[index]).cloned()
        }
        fn id(&self) -> &str {
            self.0["id"].as_str().unwrap()
        }
    }

    fn ser(items: &[Item], fields: &[String]) -> Vec<Value> {
        items
            .iter()
            .map(|i| serde_json::to_value(crate::wire::WireSer { item: i, fields }).unwrap())
            .collect()
    }

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn item(id: &str, name: &str, up: bool, tags: &[&str]) -> Item {
        Item(
            json!({"id": id, "name": name, "admin_state_up": up, "tags": tags,
               "fixed_ips": [{"subnet_id": "s1", "ip_address": format!("10.0.0.{}", id.len())}]})
            .as_object()
            .unwrap()
            .clone(),
        )
    }

    const ATTRS: &[&str] = &["id", "name", "admin_state_up", "tags", "fixed_ips"];

    #[test]
    fn filters_any_of_and_types() {
        let items = vec![
            item("a", "x", true, &[]),
            item("bb", "y", false, &["t1"]),
            item("ccc", "z", true, &["t1", "t2"]),
        ];
        let q = ListQuery::parse(&pairs(&[("name", "x"), ("name", "z")]), &ATTRS).unwrap();
        let page = q.apply(items.clone(), "/v2.0/networks").unwrap();
        assert_eq!(page.items.len(), 2);
        let q = ListQuery::parse(&pairs(&[("admin_state_up", "False")]), &ATTRS).unwrap();
        assert_eq!(q.apply(items.clone(), "/").unwrap().items[0].id(), "bb");
        let q = ListQuery::parse(&pairs(&[("tags", "t1,t2")]), &ATTRS).unwrap();
        assert_eq!(q.apply(items.clone(), "/").unwrap().items.len(), 1);
        let q = ListQuery::parse(&pairs(&[("not-tags-any", "t1")]), &ATTRS).unwrap();
        assert_eq!(q.apply(items.clone(), "/").unwrap().items.len(), 1);
        let q = ListQuery::parse(&pairs(&[("fixed_ips", "ip_address=10.0.0.2")]), &ATTRS).unwrap();
        assert_eq!(q.apply(items.clone(), "/").unwrap().items[0].id(), "bb");
        assert!(ListQuery::parse(&pairs(&[("bogus", "1")]), &ATTRS).is_err());
    }

    #[test]
    fn sort_fields_and_pagination() {
        let items: Vec<_> = (0..5)
            .map(|i| item(&format!("id{i}"), &format!("n{}", 4 - i), true, &[]))
            .collect();
        let q = ListQuery::parse(
            &pairs(&[
                ("sort_key", "name"),
                ("sort_dir", "asc"),
                ("fields", "name"),
            ]),
            &ATTRS,
        )
        .unwrap();
        let page = q.apply(items.clone(), "/").unwrap();
        assert_eq!(ser(&page.items, &q.fields)[0], json!({"name": "n0"}));
        let q = ListQuery::parse(&pairs(&[("limit", "2")]), &ATTRS).unwrap();
        let page = q.apply(items.clone(), "http://h/v2.0/ports").unwrap();
        assert_eq!(page.items.len(), 2);
        assert_eq!(
            page.links.len(),
            2,
            "Neutron links a previous page even from the first"
        );
        let next = page.links[0]["href"].as_str().unwrap();
        assert_eq!(next, "http://h/v2.0/ports?limit=2&marker=id1");
        let q = ListQuery::parse(&pairs(&[("limit", "2"), ("marker", "id3")]), &ATTRS).unwrap();
        let page = q.apply(items.clone(), "/").unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.links[0]["rel"], "previous");
        let q = ListQuery::parse(
            &pairs(&[("limit", "2"), ("marker", "id3"), ("page_reverse", "True")]),
            &ATTRS,
        )
        .unwrap();
        let ids: Vec<_> = q
            .apply(items, "/")
            .unwrap()
            .items
            .iter()
            .map(|i| i.id().to_owned())
            .collect();
        assert_eq!(ids, vec!["id1", "id2"]);
    }
}

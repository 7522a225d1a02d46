//! List queries: attribute filters (repeated = any of), tag filters, `fields=`, sorting and
//! `limit`/`marker` pagination with Neutron's `*_links`.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::input::as_bool;

type Object = Map<String, Value>;

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
pub struct Page {
    /// The items, projected to the requested fields.
    pub items: Vec<Value>,
    /// `[{"rel": "next"|"previous", "href": ...}]`, empty when not paginating.
    pub links: Vec<Value>,
}

fn split_tags(v: &str) -> impl Iterator<Item = String> + '_ {
    v.split(',').filter(|t| !t.is_empty()).map(str::to_owned)
}

impl ListQuery {
    /// Parses query pairs; `attributes` are the names the resource may be filtered and sorted
    /// by.
    pub fn parse(pairs: &[(String, String)], attributes: &[&str]) -> Result<ListQuery> {
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
                    if !attributes.contains(&attr) {
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
            if !attributes.contains(&key.as_str()) {
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

    /// Whether a rendered item passes every filter.
    pub fn matches(&self, item: &Map<String, Value>) -> bool {
        self.filters
            .iter()
            .all(|(attr, wanted)| attribute_matches(item.get(attr), wanted))
            && self.tags_match(item)
    }

    fn tags_match(&self, item: &Map<String, Value>) -> bool {
        let has = |t: &String| {
            item.get("tags")
                .and_then(Value::as_array)
                .is_some_and(|tags| tags.iter().any(|x| x.as_str() == Some(t)))
        };
        (self.tags_all.is_empty() || self.tags_all.iter().all(has))
            && (self.tags_any.is_empty() || self.tags_any.iter().any(has))
            && (self.not_tags_all.is_empty() || !self.not_tags_all.iter().all(has))
            && !self.not_tags_any.iter().any(has)
    }

    /// Filters, sorts, pages and projects `items`. `base` is the collection URL used in links.
    pub fn apply(&self, items: Vec<Map<String, Value>>, base: &str) -> Result<Page> {
        let mut items: Vec<Map<String, Value>> =
            items.into_iter().filter(|i| self.matches(i)).collect();
        let mut sort = self.sort.clone();
        if self.limit.is_some() || self.marker.is_some() || sort.is_empty() {
            // Pagination needs a total order; the id breaks ties.
            if !sort.iter().any(|(k, _)| k == "id") {
                sort.push(("id".to_owned(), sort.first().is_none_or(|s| s.1)));
            }
        }
        items.sort_by(|a, b| {
            for (key, ascending) in &sort {
                let ord = compare_values(a.get(key), b.get(key));
                let ord = if *ascending { ord } else { ord.reverse() };
                if ord != Ordering::Equal {
                    return ord;
                }
            }
            Ordering::Equal
        });
        let (page, links) = self.paginate(items, base)?;
        let items = page.into_iter().map(|i| self.project(i)).collect();
        Ok(Page { items, links })
    }

    fn paginate(
        &self,
        mut items: Vec<Map<String, Value>>,
        base: &str,
    ) -> Result<(Vec<Object>, Vec<Value>)> {
        let position = |items: &[Map<String, Value>], id: &str| {
            items
                .iter()
                .position(|i| i.get("id").and_then(Value::as_str) == Some(id))
        };
        let (start, end) = match (&self.marker, self.page_reverse) {
            (None, _) => (0, items.len()),
            (Some(m), false) => {
                let at = position(&items, m)
                    .ok_or_else(|| Error::BadRequest(format!("Marker {m} could not be found")))?;
                (at + 1, items.len())
            }
            (Some(m), true) => {
                let at = position(&items, m)
                    .ok_or_else(|| Error::BadRequest(format!("Marker {m} could not be found")))?;
                (0, at)
            }
        };
        let Some(limit) = self.limit else {
            return Ok((items.drain(start..end).collect(), Vec::new()));
        };
        let (from, to) = if self.page_reverse && self.marker.is_some() {
            (end.saturating_sub(limit).max(start), end)
        } else {
            (start, (start + limit).min(end))
        };
        let more_after = to < items.len();
        let more_before = from > 0;
        let page: Vec<Map<String, Value>> = items.drain(from..to).collect();
        let mut links = Vec::new();
        let id_of = |i: Option<&Map<String, Value>>| {
            i.and_then(|i| i.get("id"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        if more_after {
            if let Some(last) = id_of(page.last()) {
                links.push(json!({"rel": "next", "href": self.link(base, &last, false)}));
            }
        }
        if more_before && self.marker.is_some() {
            if let Some(first) = id_of(page.first()) {
                links.push(json!({"rel": "previous", "href": self.link(base, &first, true)}));
            }
        }
        Ok((page, links))
    }

    fn link(&self, base: &str, marker: &str, reverse: bool) -> String {
        let mut query: Vec<String> = self
            .pairs
            .iter()
            .filter(|(k, _)| k != "marker" && k != "page_reverse")
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect();
        query.push(format!("marker={}", encode(marker)));
        if reverse {
            query.push("page_reverse=True".to_owned());
        }
        format!("{base}?{}", query.join("&"))
    }

    fn project(&self, item: Map<String, Value>) -> Value {
        if self.fields.is_empty() {
            return Value::Object(item);
        }
        Value::Object(
            item.into_iter()
                .filter(|(k, _)| self.fields.iter().any(|f| f == k))
                .collect(),
        )
    }

    /// Projects one item (for GET of a single resource with `fields=`).
    pub fn project_one(&self, item: Map<String, Value>) -> Value {
        self.project(item)
    }
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

    fn pairs(q: &[(&str, &str)]) -> Vec<(String, String)> {
        q.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn item(id: &str, name: &str, up: bool, tags: &[&str]) -> Map<String, Value> {
        json!({"id": id, "name": name, "admin_state_up": up, "tags": tags,
               "fixed_ips": [{"subnet_id": "s1", "ip_address": format!("10.0.0.{}", id.len())}]})
        .as_object()
        .unwrap()
        .clone()
    }

    const ATTRS: &[&str] = &["id", "name", "admin_state_up", "tags", "fixed_ips"];

    #[test]
    fn filters_any_of_and_types() {
        let items = vec![
            item("a", "x", true, &[]),
            item("bb", "y", false, &["t1"]),
            item("ccc", "z", true, &["t1", "t2"]),
        ];
        let q = ListQuery::parse(&pairs(&[("name", "x"), ("name", "z")]), ATTRS).unwrap();
        let page = q.apply(items.clone(), "/v2.0/networks").unwrap();
        assert_eq!(page.items.len(), 2);
        let q = ListQuery::parse(&pairs(&[("admin_state_up", "False")]), ATTRS).unwrap();
        assert_eq!(q.apply(items.clone(), "/").unwrap().items[0]["id"], "bb");
        let q = ListQuery::parse(&pairs(&[("tags", "t1,t2")]), ATTRS).unwrap();
        assert_eq!(q.apply(items.clone(), "/").unwrap().items.len(), 1);
        let q = ListQuery::parse(&pairs(&[("not-tags-any", "t1")]), ATTRS).unwrap();
        assert_eq!(q.apply(items.clone(), "/").unwrap().items.len(), 1);
        let q = ListQuery::parse(&pairs(&[("fixed_ips", "ip_address=10.0.0.2")]), ATTRS).unwrap();
        assert_eq!(q.apply(items.clone(), "/").unwrap().items[0]["id"], "bb");
        assert!(ListQuery::parse(&pairs(&[("bogus", "1")]), ATTRS).is_err());
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
            ATTRS,
        )
        .unwrap();
        let page = q.apply(items.clone(), "/").unwrap();
        assert_eq!(page.items[0], json!({"name": "n0"}));
        let q = ListQuery::parse(&pairs(&[("limit", "2")]), ATTRS).unwrap();
        let page = q.apply(items.clone(), "http://h/v2.0/ports").unwrap();
        assert_eq!(page.items.len(), 2);
        assert_eq!(page.links.len(), 1);
        let next = page.links[0]["href"].as_str().unwrap();
        assert_eq!(next, "http://h/v2.0/ports?limit=2&marker=id1");
        let q = ListQuery::parse(&pairs(&[("limit", "2"), ("marker", "id3")]), ATTRS).unwrap();
        let page = q.apply(items.clone(), "/").unwrap();
        assert_eq!(page.items.len(), 1);
        assert_eq!(page.links[0]["rel"], "previous");
        let q = ListQuery::parse(
            &pairs(&[("limit", "2"), ("marker", "id3"), ("page_reverse", "True")]),
            ATTRS,
        )
        .unwrap();
        let ids: Vec<_> = q
            .apply(items, "/")
            .unwrap()
            .items
            .iter()
            .map(|i| i["id"].clone())
            .collect();
        assert_eq!(ids, vec![json!("id1"), json!("id2")]);
    }
}

//! Neutron's default policy, as one table: the rows of `neutron/conf/policies/` (new RBAC
//! defaults, project scope) copied verbatim into `neutron.tsv` for the pinned Neutron release,
//! parsed here with oslo.policy's check language (`role:`, `rule:`, `field:`, generic
//! `project_id:%(key)s` checks, `@`, `!`, `not`, `and`, `or`, parentheses) and evaluated against
//! the caller's roles and project and a [`Target`] the service layer fills from the object.
//!
//! Which attribute rules apply to a request body follows Neutron's `_build_match_rule`: an
//! attribute is checked (`<action>:<attr>`) when the body sets it to something other than its
//! default, and a list of objects also checks each key of its items (`<action>:<attr>:<key>`).

use std::collections::HashMap;
use std::sync::OnceLock;

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::meta::Caller;

/// Neutron's table: `name<TAB>check string` per row, `#` comments.
const NEUTRON: &str = include_str!("neutron.tsv");

/// Octavia's rows (the load-balancer API), in the same format.
const OCTAVIA: &str = include_str!("octavia.tsv");

/// Isthmus's own rows (its native API), in the same format; no name is also Neutron's.
const ISTHMUS: &str = include_str!("isthmus.tsv");

pub use crate::roles::Roles;

/// What a check is evaluated against besides the caller: the object's owner, the owners of
/// its network, parent and security group, and the `field:` values Neutron's checks read
/// (`networks:shared`, `networks:router:external`, `port:device_owner`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    entries: Vec<(String, String)>,
}

impl Target {
    /// A target owned by `project_id`.
    pub fn owned_by(project_id: &str) -> Target {
        Target::default().with("project_id", project_id)
    }

    /// With `key` (`network:project_id`, `networks:shared`, ...) set to `value`; booleans as
    /// `True`/`False`, as Neutron's field checks compare them.
    pub fn with(mut self, key: &str, value: impl ToString) -> Target {
        let value = value.to_string();
        let value = match value.as_str() {
            "true" => "True".to_owned(),
            "false" => "False".to_owned(),
            _ => value,
        };
        self.entries.retain(|(k, _)| k != key);
        self.entries.push((key.to_owned(), value));
        self
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// One parsed check.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Check {
    /// `@` or the empty string.
    Always,
    /// `!`.
    Never,
    /// `role:NAME`.
    Role(Roles),
    /// `rule:NAME`: another row.
    Rule(String),
    /// `project_id:%(key)s` (or `user_id:`): the caller's value equals the target's.
    Generic {
        credential: Credential,
        target: Operand,
    },
    /// `field:resource:attr=value` (`~^prefix` matches a prefix).
    Field {
        key: String,
        value: FieldValue,
    },
    Not(Box<Check>),
    And(Vec<Check>),
    Or(Vec<Check>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Credential {
    Project,
    User,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Operand {
    /// `%(key)s`.
    Key(String),
    /// A literal value.
    Literal(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum FieldValue {
    Equals(String),
    Prefix(String),
}

/// A syntax error in a check string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(String);

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Open,
    Close,
    And,
    Or,
    Not,
    Check(String),
}

fn tokenize(text: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    for word in text.split_whitespace() {
        let mut word = word;
        while let Some(rest) = word.strip_prefix('(') {
            tokens.push(Token::Open);
            word = rest;
        }
        let mut closes = 0;
        while let Some(rest) = word.strip_suffix(')') {
            // `%(project_id)s` ends in `s`, so a trailing `)` always closes a group.
            closes += 1;
            word = rest;
        }
        match word {
            "" => {}
            "and" => tokens.push(Token::And),
            "or" => tokens.push(Token::Or),
            "not" => tokens.push(Token::Not),
            _ => tokens.push(Token::Check(word.to_owned())),
        }
        tokens.extend(std::iter::repeat_n(Token::Close, closes));
    }
    tokens
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let token = self.tokens.get(self.at).cloned();
        self.at += 1;
        token
    }

    // or_expr := and_expr ("or" and_expr)*
    fn or_expr(&mut self) -> std::result::Result<Check, ParseError> {
        let mut terms = vec![self.and_expr()?];
        while self.peek() == Some(&Token::Or) {
            self.next();
            terms.push(self.and_expr()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Check::Or(terms)
        })
    }

    // and_expr := not_expr ("and" not_expr)*
    fn and_expr(&mut self) -> std::result::Result<Check, ParseError> {
        let mut terms = vec![self.not_expr()?];
        while self.peek() == Some(&Token::And) {
            self.next();
            terms.push(self.not_expr()?);
        }
        Ok(if terms.len() == 1 {
            terms.remove(0)
        } else {
            Check::And(terms)
        })
    }

    // not_expr := "not" not_expr | "(" or_expr ")" | check
    fn not_expr(&mut self) -> std::result::Result<Check, ParseError> {
        match self.next() {
            Some(Token::Not) => Ok(Check::Not(Box::new(self.not_expr()?))),
            Some(Token::Open) => {
                let inner = self.or_expr()?;
                match self.next() {
                    Some(Token::Close) => Ok(inner),
                    other => Err(ParseError(format!("expected ')', found {other:?}"))),
                }
            }
            Some(Token::Check(text)) => parse_check(&text),
            other => Err(ParseError(format!("expected a check, found {other:?}"))),
        }
    }
}

fn parse_check(text: &str) -> std::result::Result<Check, ParseError> {
    match text {
        "@" => return Ok(Check::Always),
        "!" => return Ok(Check::Never),
        _ => {}
    }
    let Some((kind, rest)) = text.split_once(':') else {
        return Err(ParseError(format!("'{text}' is not a check")));
    };
    match kind {
        "role" => Roles::named(rest)
            .map(Check::Role)
            .ok_or_else(|| ParseError(format!("unknown role '{rest}'"))),
        "rule" => Ok(Check::Rule(rest.to_owned())),
        "field" => {
            let (key, value) = rest
                .split_once('=')
                .ok_or_else(|| ParseError(format!("field check '{text}' has no '='")))?;
            let value = match value.strip_prefix("~^") {
                Some(prefix)
                    if !prefix.contains(['.', '*', '+', '?', '[', '(', '|', '$', '\\']) =>
                {
                    FieldValue::Prefix(prefix.to_owned())
                }
                Some(_) => return Err(ParseError(format!("unsupported pattern in '{text}'"))),
                None => FieldValue::Equals(value.to_owned()),
            };
            Ok(Check::Field {
                key: key.to_owned(),
                value,
            })
        }
        "project_id" | "tenant_id" | "user_id" => {
            let credential = if kind == "user_id" {
                Credential::User
            } else {
                Credential::Project
            };
            let target = match rest.strip_prefix("%(").and_then(|r| r.strip_suffix(")s")) {
                Some(key) => Operand::Key(key.to_owned()),
                None => Operand::Literal(rest.to_owned()),
            };
            Ok(Check::Generic { credential, target })
        }
        _ => Err(ParseError(format!(
            "unknown check kind '{kind}' in '{text}'"
        ))),
    }
}

/// Parses one check string of oslo.policy's language.
fn parse(text: &str) -> std::result::Result<Check, ParseError> {
    let tokens = tokenize(text);
    if tokens.is_empty() {
        return Ok(Check::Always);
    }
    let mut parser = Parser { tokens, at: 0 };
    let check = parser.or_expr()?;
    match parser.peek() {
        None => Ok(check),
        Some(extra) => Err(ParseError(format!("unexpected {extra:?}"))),
    }
}

/// The parsed table: rule name → check; a row that does not parse denies (fail closed) and
/// is reported by [`rows`].
struct Table {
    rules: HashMap<&'static str, Check>,
}

fn table() -> &'static Table {
    static TABLE_ONCE: OnceLock<Table> = OnceLock::new();
    TABLE_ONCE.get_or_init(|| Table {
        rules: rows()
            .map(|(name, check)| (name, check.unwrap_or(Check::Never)))
            .collect(),
    })
}

/// Every row of the table with its parsed check (or why it does not parse).
fn rows() -> impl Iterator<Item = (&'static str, std::result::Result<Check, ParseError>)> {
    NEUTRON
        .lines()
        .chain(ISTHMUS.lines())
        .chain(OCTAVIA.lines())
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (name, check) = line.split_once('\t').unwrap_or((line, ""));
            (name, parse(check))
        })
}

/// The names of the rows that do not parse, with why (none in the pinned table).
pub fn unparsable_rows() -> Vec<(String, String)> {
    rows()
        .filter_map(|(name, check)| check.err().map(|e| (name.to_owned(), e.0)))
        .collect()
}

/// Every rule name in the table.
pub fn rule_names() -> impl Iterator<Item = &'static str> {
    rows().map(|(name, _)| name)
}

/// Whether the table has a row called `name`.
pub fn has_rule(name: &str) -> bool {
    table().rules.contains_key(name)
}

fn eval(check: &Check, caller: &Caller, target: &Target, depth: usize) -> bool {
    match check {
        Check::Always => true,
        Check::Never => false,
        Check::Role(role) => caller.roles.has(*role),
        Check::Rule(name) => {
            depth < 16
                && table()
                    .rules
                    .get(name.as_str())
                    .is_some_and(|c| eval(c, caller, target, depth + 1))
        }
        Check::Generic {
            credential,
            target: operand,
        } => {
            let mine = match credential {
                Credential::Project => caller.project_id.as_str(),
                Credential::User => caller.user_id.as_str(),
            };
            let theirs = match operand {
                Operand::Key(key) => target.get(key),
                Operand::Literal(value) => Some(value.as_str()),
            };
            !mine.is_empty() && theirs == Some(mine)
        }
        Check::Field { key, value } => match (target.get(key), value) {
            (Some(have), FieldValue::Equals(want)) => {
                have == want || (is_bool(want) && have.eq_ignore_ascii_case(want))
            }
            (Some(have), FieldValue::Prefix(prefix)) => have.starts_with(prefix.as_str()),
            (None, _) => false,
        },
        Check::Not(inner) => !eval(inner, caller, target, depth),
        Check::And(all) => all.iter().all(|c| eval(c, caller, target, depth)),
        Check::Or(any) => any.iter().any(|c| eval(c, caller, target, depth)),
    }
}

fn is_bool(value: &str) -> bool {
    value.eq_ignore_ascii_case("true") || value.eq_ignore_ascii_case("false")
}

/// Whether `caller` may do `action` (`create_network`, `get_port:binding:host_id`, ...) on
/// `target`. An action without a row falls back to the `default` rule, as oslo.policy does.
pub fn allows(action: &str, caller: &Caller, target: &Target) -> bool {
    let rules = &table().rules;
    match rules.get(action).or_else(|| rules.get("default")) {
        Some(check) => eval(check, caller, target, 0),
        None => false,
    }
}

/// [`authorize`] for an action on no particular object (the caller's own project is the
/// target): the native API, listing agents.
pub fn authorize_caller(action: &str, caller: &Caller) -> Result<()> {
    authorize(action, caller, &Target::owned_by(&caller.project_id))
}

/// [`allows`], or 403 `PolicyNotAuthorized` naming the action.
pub fn authorize(action: &str, caller: &Caller, target: &Target) -> Result<()> {
    if allows(action, caller, target) {
        Ok(())
    } else {
        Err(Error::PolicyNotAuthorized(format!("rule:{action}")))
    }
}

/// Checks the attribute rules of a create or update body (`verb` is `create` or `update`) of
/// resource `singular`: every attribute the body sets to other than its `default` (creates
/// only; an update checks what it names) and, for lists and objects, each key of their items.
pub fn authorize_body(
    verb: &str,
    singular: &str,
    body: &Map<String, Value>,
    default: impl Fn(&str) -> Option<Value>,
    caller: &Caller,
    target: &Target,
) -> Result<()> {
    let rules = &table().rules;
    for (name, value) in body {
        let action = format!("{verb}_{singular}:{name}");
        let Some(check) = rules.get(action.as_str()) else {
            continue;
        };
        if verb == "create" && default(name).as_ref() == Some(value) {
            continue;
        }
        if !eval(check, caller, target, 0) {
            return Err(Error::PolicyNotAuthorized(format!("rule:{action}")));
        }
        let items: Vec<&Map<String, Value>> = match value {
            Value::Array(items) => items.iter().filter_map(Value::as_object).collect(),
            Value::Object(item) => vec![item],
            _ => Vec::new(),
        };
        for key in items.iter().flat_map(|item| item.keys()) {
            let sub = format!("{action}:{key}");
            if let Some(check) = rules.get(sub.as_str()) {
                if !eval(check, caller, target, 0) {
                    return Err(Error::PolicyNotAuthorized(format!("rule:{sub}")));
                }
            }
        }
    }
    Ok(())
}

/// Whether the `get_<singular>:<attribute>` rule can ever let `roles` see the attribute (it
/// is evaluated for an object the caller owns on a network it owns: the object itself is
/// already visible, so only the role part of the rule decides).
pub fn attribute_visible(singular: &str, attribute: &str, roles: Roles) -> bool {
    let action = format!("get_{singular}:{attribute}");
    let Some(check) = table().rules.get(action.as_str()) else {
        return true;
    };
    let caller = Caller {
        project_id: "owner".to_owned(),
        user_id: String::new(),
        roles,
    };
    let target = Target::owned_by("owner")
        .with("network:project_id", "owner")
        .with("ext_parent:project_id", "owner")
        .with("security_group:project_id", "owner");
    eval(check, &caller, &target, 0)
}

#[cfg(test)]
mod tests;

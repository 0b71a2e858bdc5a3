//! A checker of requests (and answers) against Proxmox VE's API schema,
//! `../shared/data/pve-api-schema.json` (pve-docs' `apidata.js` as JSON),
//! in PVE::JSONSchema's conventions: `optional: 1`, `type`, named `format`s
//! (with `-list`/`-opt`), property-string formats (objects, with
//! `default_key`, `alias` and `keyAlias`), `enum`, `minimum`/`maximum`,
//! `maxLength`, `pattern` (Perl), `requires`, and indexed keys (`net[n]`).
//! The schema is read at test time and never copied into the repository.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use regex::Regex;
use serde_json::Value;

/// One API path with its methods.
struct Endpoint {
    segs: Vec<Seg>,
    path: String,
    info: Value,
}

enum Seg {
    Lit(String),
    Var(String),
}

/// The loaded schema.
pub(crate) struct Schema {
    endpoints: Vec<Endpoint>,
}

pub(crate) fn schema_path() -> PathBuf {
    // `../shared/data` beside the workspace (the one with Cargo.lock); this
    // file is also compiled into the appliance's tests.
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    while !dir.join("Cargo.lock").exists() {
        if !dir.pop() {
            break;
        }
    }
    dir.join("../shared/data/pve-api-schema.json")
}

/// The schema, loaded once per test binary.
pub(crate) fn schema() -> &'static Schema {
    static S: OnceLock<Schema> = OnceLock::new();
    S.get_or_init(|| {
        let path = schema_path();
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "the PVE API schema {} is needed by these tests: {e}",
                path.display()
            )
        });
        let v: Value = serde_json::from_str(&text).expect("schema JSON");
        let mut endpoints = Vec::new();
        fn walk(nodes: &Value, out: &mut Vec<Endpoint>) {
            for n in nodes.as_array().into_iter().flatten() {
                if let (Some(path), Some(info)) = (n["path"].as_str(), n.get("info")) {
                    let segs = path
                        .split('/')
                        .filter(|s| !s.is_empty())
                        .map(
                            |s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                                Some(var) => Seg::Var(var.to_owned()),
                                None => Seg::Lit(s.to_owned()),
                            },
                        )
                        .collect();
                    out.push(Endpoint {
                        segs,
                        path: path.to_owned(),
                        info: info.clone(),
                    });
                }
                if let Some(c) = n.get("children") {
                    walk(c, out);
                }
            }
        }
        walk(&v, &mut endpoints);
        assert!(endpoints.len() > 300, "the schema looks truncated");
        Schema { endpoints }
    })
}

impl Schema {
    /// The endpoint for a concrete path and the path variables' values.
    fn resolve(&self, path: &str) -> Option<(&Endpoint, BTreeMap<String, String>)> {
        let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let mut best: Option<(usize, &Endpoint, BTreeMap<String, String>)> = None;
        for e in &self.endpoints {
            if e.segs.len() != parts.len() {
                continue;
            }
            let mut vars = BTreeMap::new();
            let mut literals = 0;
            let ok = e.segs.iter().zip(&parts).all(|(s, p)| match s {
                Seg::Lit(l) => {
                    literals += 1;
                    l == p
                }
                Seg::Var(v) => {
                    vars.insert(v.clone(), (*p).to_owned());
                    true
                }
            });
            if ok && best.as_ref().is_none_or(|(n, _, _)| literals > *n) {
                best = Some((literals, e, vars));
            }
        }
        best.map(|(_, e, v)| (e, v))
    }

    /// Problems of one request: `[]` when a real PVE would accept its
    /// parameters.
    pub(crate) fn check_request(
        &self,
        method: &str,
        path: &str,
        params: &[(String, String)],
    ) -> Vec<String> {
        let mut problems = Vec::new();
        let Some((ep, vars)) = self.resolve(path) else {
            return vec![format!("{method} {path}: no such path in the API schema")];
        };
        let Some(m) = ep.info.get(method) else {
            return vec![format!("{method} {path}: {} has no {method}", ep.path)];
        };
        let empty = serde_json::Map::new();
        let props = m["parameters"]["properties"].as_object().unwrap_or(&empty);
        let additional = m["parameters"]["additionalProperties"]
            .as_i64()
            .unwrap_or(1)
            != 0;
        let mut all: BTreeMap<String, String> = vars;
        for (k, v) in params {
            if all.insert(k.clone(), v.clone()).is_some() {
                problems.push(format!("{method} {path}: parameter {k} given twice"));
            }
        }
        for (k, v) in &all {
            let prop = props.get(k).or_else(|| indexed(props, k));
            match prop {
                Some(p) => {
                    if let Err(e) = check_value(p, v) {
                        problems.push(format!("{method} {}: {k}={v:?}: {e}", ep.path));
                    }
                    if let Some(r) = p.get("requires").and_then(|r| r.as_str()) {
                        if !all.contains_key(r) {
                            problems.push(format!("{method} {}: {k} requires {r}", ep.path));
                        }
                    }
                }
                None if !additional => problems.push(format!(
                    "{method} {}: {k}: not a parameter of this call",
                    ep.path
                )),
                None => {}
            }
        }
        for (k, p) in props {
            if k.contains("[n]") || is_optional(p) {
                continue;
            }
            if !all.contains_key(k) {
                problems.push(format!("{method} {}: required {k} is missing", ep.path));
            }
        }
        problems
    }

    /// Problems of a successful answer's `data` against `returns`.
    pub(crate) fn check_answer(&self, method: &str, path: &str, data: &Value) -> Vec<String> {
        let Some((ep, _)) = self.resolve(path) else {
            return vec![format!("{method} {path}: no such path in the API schema")];
        };
        let Some(ret) = ep.info.get(method).and_then(|m| m.get("returns")) else {
            return Vec::new();
        };
        let mut problems = Vec::new();
        check_returns(
            ret,
            data,
            &format!("{method} {}", ep.path),
            0,
            &mut problems,
        );
        problems
    }
}

fn is_optional(p: &Value) -> bool {
    p.get("optional")
        .is_some_and(|o| o.as_i64() == Some(1) || o.as_bool() == Some(true))
}

fn indexed<'a>(props: &'a serde_json::Map<String, Value>, key: &str) -> Option<&'a Value> {
    let digits = key.trim_start_matches(|c: char| !c.is_ascii_digit());
    let prefix = &key[..key.len() - digits.len()];
    if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    props.get(&format!("{prefix}[n]"))
}

fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn is_integer(v: &str) -> bool {
    let t = v.strip_prefix(['+', '-']).unwrap_or(v);
    !t.is_empty() && t.bytes().all(|c| c.is_ascii_digit())
}

fn is_number(v: &str) -> bool {
    v.parse::<f64>().is_ok()
        && !v.contains(|c: char| c.is_ascii_alphabetic() && c != 'e' && c != 'E')
}

/// Checks one value against a property schema, as PVE::JSONSchema's
/// `check_prop` does for a scalar.
pub(crate) fn check_value(p: &Value, v: &str) -> Result<(), String> {
    if p.get("alias").is_some() {
        return Ok(());
    }
    match p.get("type").and_then(|t| t.as_str()).unwrap_or("string") {
        "boolean" if v != "0" && v != "1" => {
            return Err(format!("type check ('boolean') failed - got '{v}'"))
        }
        "integer" if !is_integer(v) => {
            return Err(format!("type check ('integer') failed - got '{v}'"))
        }
        "number" if !is_number(v) => {
            return Err(format!("type check ('number') failed - got '{v}'"))
        }
        "array" | "object" => return Err(format!("a {} cannot be sent as a string", p["type"])),
        _ => {}
    }
    if let Some(f) = p.get("format") {
        check_format(f, v).map_err(|e| format!("invalid format - {e}"))?;
    }
    if let Some(pat) = p.get("pattern").and_then(|x| x.as_str()) {
        if !perl_regex(pat).is_match(v) {
            return Err("value does not match the regex pattern".into());
        }
    }
    if let Some(max) = p.get("maxLength").and_then(num) {
        if v.chars().count() as f64 > max {
            return Err(format!("value may only be {max} characters long"));
        }
    }
    if let Some(min) = p.get("minLength").and_then(num) {
        if (v.chars().count() as f64) < min {
            return Err(format!("value must be at least {min} characters long"));
        }
    }
    if is_number(v) {
        let x: f64 = v.parse().unwrap_or(0.0);
        if let Some(max) = p.get("maximum").and_then(num) {
            if x > max {
                return Err(format!("value must have a maximum value of {max}"));
            }
        }
        if let Some(min) = p.get("minimum").and_then(num) {
            if x < min {
                return Err(format!("value must have a minimum value of {min}"));
            }
        }
    }
    if let Some(e) = p.get("enum").and_then(|e| e.as_array()) {
        if !e.iter().any(|x| x.as_str() == Some(v)) {
            return Err(format!(
                "value '{v}' does not have a value in the enumeration"
            ));
        }
    }
    Ok(())
}

fn perl_regex(pat: &str) -> Regex {
    let translated = pat.replace("(?^i:", "(?i:").replace("(?^:", "(?:");
    Regex::new(&format!("^(?:{translated})$"))
        .unwrap_or_else(|e| panic!("schema pattern {pat:?} does not translate: {e}"))
}

fn split_list(v: &str) -> impl Iterator<Item = &str> {
    v.split([',', ';', ' ', '\t', '\n'])
        .filter(|s| !s.is_empty())
}

fn check_format(f: &Value, v: &str) -> Result<(), String> {
    match f {
        Value::Object(map) => check_property_string(map, v),
        Value::String(name) => {
            let (base, kind) = if let Some(b) = name.strip_suffix("-list") {
                (b, "list")
            } else if let Some(b) = name.strip_suffix("-opt") {
                (b, "opt")
            } else {
                (name.as_str(), "none")
            };
            match kind {
                "list" => split_list(v).try_for_each(|item| named_format(base, item)),
                "opt" if v.is_empty() => Ok(()),
                _ => named_format(base, v),
            }
        }
        _ => Err("unexpected format in schema".into()),
    }
}

fn dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// The named formats our requests use, as PVE::JSONSchema registers them.
/// An unknown one is a test failure: add it here with PVE's rule.
fn named_format(name: &str, v: &str) -> Result<(), String> {
    let ok = match name {
        "string" => true,
        "pve-vmid" => {
            v.len() >= 3
                && v.len() <= 9
                && !v.starts_with('0')
                && v.bytes().all(|c| c.is_ascii_digit())
        }
        "pve-node" => dns_label(v),
        "dns-name" => v.split('.').all(dns_label),
        "pve-configid" => {
            let b = v.as_bytes();
            b.len() >= 2
                && b[0].is_ascii_alphabetic()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
        }
        "pve-storage-id" | "pve-poolid" => {
            let b = v.as_bytes();
            b.len() >= 2
                && b[0].is_ascii_alphabetic()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        "pve-bridge-id" => {
            !v.is_empty()
                && v.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        "mac-addr" => Regex::new(r"^(?i)[a-f0-9][02468ace](?::[a-f0-9]{2}){5}$")
            .expect("regex")
            .is_match(v),
        "pve-tag" => Regex::new(r"^(?i)[a-z0-9_][a-z0-9_\-\+\.]*$")
            .expect("regex")
            .is_match(v),
        "pve-realm" => Regex::new(r"^[A-Za-z][A-Za-z0-9\.\-_]+$")
            .expect("regex")
            .is_match(v),
        "pve-storage-content" => true,
        other => return Err(format!("format '{other}' is unknown to the test validator")),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("value does not match format '{name}'"))
    }
}

/// PVE::JSONSchema::parse_property_string, then each key checked.
fn check_property_string(format: &serde_json::Map<String, Value>, v: &str) -> Result<(), String> {
    let mut res: BTreeMap<String, String> = BTreeMap::new();
    let mut default_used = false;
    for part in v.split(',') {
        if part.trim().is_empty() {
            continue;
        }
        if let Some((k, val)) = part
            .split_once('=')
            .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        {
            let mut k = k.to_owned();
            let mut schema = format.get(&k);
            if let Some(alias) = schema.and_then(|s| s.get("alias")).and_then(|a| a.as_str()) {
                if let Some(ka) = schema
                    .and_then(|s| s.get("keyAlias"))
                    .and_then(|a| a.as_str())
                {
                    if res.insert(ka.to_owned(), k.clone()).is_some() {
                        return Err(format!("format error: key alias '{ka}' is already defined"));
                    }
                }
                k = alias.to_owned();
                schema = format.get(&k);
            }
            if schema.is_none() {
                return Err(format!(
                    "format error: invalid key in comma-separated list property: {k}"
                ));
            }
            if res.insert(k.clone(), val.to_owned()).is_some() {
                return Err(format!(
                    "format error: duplicate key in comma-separated list property: {k}"
                ));
            }
        } else if !part.contains('=') {
            if default_used {
                return Err("format error: duplicate default key".into());
            }
            let key = format
                .iter()
                .find(|(_, s)| s.get("default_key").is_some_and(|d| d.as_i64() == Some(1)))
                .map(|(k, _)| k.clone())
                .ok_or(
                    "format error: value without key, but schema does not define a default key",
                )?;
            default_used = true;
            if res.insert(key.clone(), part.to_owned()).is_some() {
                return Err(format!(
                    "format error: duplicate key in comma-separated list property: {key}"
                ));
            }
        } else {
            return Err("format error: missing key in comma-separated list property".into());
        }
    }
    for (k, val) in &res {
        let s = &format[k];
        check_value(s, val).map_err(|e| format!("format error: {k}: {e}"))?;
    }
    for (k, s) in format {
        if s.get("alias").is_none() && !is_optional(s) && !res.contains_key(k) {
            return Err(format!(
                "format error: {k}: property is missing and it is not optional"
            ));
        }
    }
    Ok(())
}

fn type_ok(ty: &str, v: &Value) -> bool {
    match ty {
        "null" => v.is_null(),
        "string" => v.is_string() || v.is_number(),
        "integer" => v.is_i64() || v.is_u64() || v.as_str().is_some_and(is_integer),
        "number" => v.is_number() || v.as_str().is_some_and(is_number),
        "boolean" => v.is_boolean() || v.as_i64().is_some_and(|n| n == 0 || n == 1),
        "array" => v.is_array(),
        "object" => v.is_object(),
        _ => true,
    }
}

fn check_returns(ret: &Value, data: &Value, at: &str, depth: usize, problems: &mut Vec<String>) {
    let Some(ty) = ret.get("type").and_then(|t| t.as_str()) else {
        return;
    };
    if data.is_null() && ty != "null" && (is_optional(ret) || depth > 0) {
        return;
    }
    if !type_ok(ty, data) {
        problems.push(format!("{at}: answer should be {ty}, is {data}"));
        return;
    }
    if depth > 2 {
        return;
    }
    match ty {
        "array" => {
            if let (Some(items), Some(arr)) = (ret.get("items"), data.as_array()) {
                for (i, el) in arr.iter().enumerate() {
                    check_returns(items, el, &format!("{at}[{i}]"), depth + 1, problems);
                }
            }
        }
        "object" => {
            if let (Some(props), Some(obj)) = (
                ret.get("properties").and_then(|p| p.as_object()),
                data.as_object(),
            ) {
                for (k, p) in props {
                    match obj.get(k) {
                        Some(v) => check_returns(p, v, &format!("{at}.{k}"), depth + 1, problems),
                        None if !is_optional(p) && !k.contains("[n]") => {
                            problems.push(format!("{at}: answer lacks required {k}"))
                        }
                        None => {}
                    }
                }
            }
        }
        _ => {}
    }
}

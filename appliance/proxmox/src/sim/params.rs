//! Parameter checks of the simulator, answering like PVE's JSON schema
//! code (`PVE::JSONSchema`): the same messages, per field, and 400.
//!
//! Only the parameters of the routes the simulator serves are described
//! here, by hand, from PVE's documented API.

use std::collections::BTreeMap;

/// A value's type and constraints.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Ty {
    Int { min: Option<i64>, max: Option<i64> },
    Bool,
    Str { fmt: Fmt, max_len: Option<usize> },
    Enum(&'static [&'static str]),
}

/// Named string formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fmt {
    Any,
    Node,
    DnsName,
    ConfigId,
    StorageId,
    TagList,
    ConfigIdList,
    Net,
    Memory,
    Agent,
    PoolId,
}

/// One parameter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spec {
    pub(crate) name: &'static str,
    pub(crate) ty: Ty,
    pub(crate) optional: bool,
}

pub(crate) const fn req(name: &'static str, ty: Ty) -> Spec {
    Spec {
        name,
        ty,
        optional: false,
    }
}

pub(crate) const fn opt(name: &'static str, ty: Ty) -> Spec {
    Spec {
        name,
        ty,
        optional: true,
    }
}

pub(crate) const fn s(fmt: Fmt) -> Ty {
    Ty::Str { fmt, max_len: None }
}

pub(crate) const fn int(min: Option<i64>, max: Option<i64>) -> Ty {
    Ty::Int { min, max }
}

pub(crate) const BOOL: Ty = Ty::Bool;
pub(crate) const NODE: Spec = req("node", s(Fmt::Node));
pub(crate) const VMID: Spec = req(
    "vmid",
    Ty::Int {
        min: Some(100),
        max: Some(999_999_999),
    },
);
pub(crate) const SNAPNAME: Spec = req(
    "snapname",
    Ty::Str {
        fmt: Fmt::ConfigId,
        max_len: Some(40),
    },
);

const UNKNOWN: &str =
    "property is not defined in schema and the schema does not allow additional properties";

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

fn is_config_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() >= 2
        && b[0].is_ascii_alphabetic()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
}

fn is_tag(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'+' | b'.'))
}

fn is_mac(s: &str) -> bool {
    s.parse::<crate::types::MacAddr>().is_ok()
}

/// Checks a format; the error is what PVE puts after `invalid format - `.
fn check_format(fmt: Fmt, v: &str) -> Result<(), String> {
    match fmt {
        Fmt::Any => Ok(()),
        Fmt::Node => {
            if is_dns_label(v) {
                Ok(())
            } else {
                Err("value does not look like a valid node name\n".into())
            }
        }
        Fmt::DnsName => {
            if v.split('.').all(is_dns_label) {
                Ok(())
            } else {
                Err("value does not look like a valid DNS name\n".into())
            }
        }
        Fmt::ConfigId => {
            if is_config_id(v) {
                Ok(())
            } else {
                Err(format!("invalid configuration ID '{v}'\n"))
            }
        }
        Fmt::StorageId | Fmt::PoolId => {
            let b = v.as_bytes();
            if b.len() < 2 {
                return Err(format!(
                    "storage ID '{v}' cannot be shorter than 2 characters\n"
                ));
            }
            let ok = b[0].is_ascii_alphabetic()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
            if ok {
                Ok(())
            } else {
                Err(format!("storage ID '{v}' contains illegal characters\n"))
            }
        }
        Fmt::TagList => {
            if v.split([';', ',', ' '])
                .filter(|t| !t.is_empty())
                .all(is_tag)
            {
                Ok(())
            } else {
                Err("invalid characters in tag\n".into())
            }
        }
        Fmt::ConfigIdList => {
            if v.split([';', ',', ' '])
                .filter(|t| !t.is_empty())
                .all(is_config_id)
            {
                Ok(())
            } else {
                Err(format!("invalid configuration ID '{v}'\n"))
            }
        }
        Fmt::Net => check_net(v).map_err(|e| format!("format error\n{e}\n")),
        Fmt::Memory => {
            let n = v.strip_prefix("current=").unwrap_or(v);
            match n.parse::<i64>() {
                Ok(n) if n >= 16 => Ok(()),
                Ok(_) => {
                    Err("format error\ncurrent: value must have a minimum value of 16\n".into())
                }
                Err(_) => Err(format!(
                    "format error\ncurrent: type check ('integer') failed - got '{n}'\n"
                )),
            }
        }
        Fmt::Agent => {
            for part in v.split(',').filter(|p| !p.is_empty()) {
                let (k, val) = part.split_once('=').unwrap_or(("enabled", part));
                let ok = match k {
                    "enabled" | "freeze-fs" | "fstrim_cloned_disks" => val == "0" || val == "1",
                    "type" => val == "virtio" || val == "isa",
                    _ => false,
                };
                if !ok {
                    return Err(format!("format error\n{k}: invalid value\n"));
                }
            }
            Ok(())
        }
    }
}

const NIC_MODELS: &[&str] = &[
    "e1000",
    "e1000-82540em",
    "e1000-82544gc",
    "e1000-82545em",
    "e1000e",
    "i82551",
    "i82557b",
    "i82559er",
    "ne2k_isa",
    "ne2k_pci",
    "pcnet",
    "rtl8139",
    "virtio",
    "vmxnet3",
];

fn check_net(v: &str) -> Result<(), String> {
    let mut model = false;
    for part in v.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, val) = match part.split_once('=') {
            Some(kv) => kv,
            None => ("model", part),
        };
        match k {
            "model" => {
                if !NIC_MODELS.contains(&val) {
                    return Err(format!(
                        "model: value '{val}' does not have a value in the enumeration"
                    ));
                }
                model = true;
            }
            m if NIC_MODELS.contains(&m) => {
                if !is_mac(val) {
                    return Err(
                        "macaddr: value does not look like a valid unicast MAC address".into(),
                    );
                }
                model = true;
            }
            "macaddr" => {
                if !is_mac(val) {
                    return Err(
                        "macaddr: value does not look like a valid unicast MAC address".into(),
                    );
                }
            }
            "bridge" => {
                if val.is_empty()
                    || !val
                        .bytes()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
                {
                    return Err(format!("bridge: invalid bridge ID '{val}'"));
                }
            }
            "firewall" | "link_down" => {
                if val != "0" && val != "1" {
                    return Err(format!("{k}: type check ('boolean') failed - got '{val}'"));
                }
            }
            "tag" | "mtu" | "queues" => {
                if val.parse::<u32>().is_err() {
                    return Err(format!("{k}: type check ('integer') failed - got '{val}'"));
                }
            }
            "rate" | "trunks" => {}
            _ => return Err(format!("invalid key in comma-separated list property: {k}")),
        }
    }
    if model {
        Ok(())
    } else {
        Err("model: property is missing and it is not optional".into())
    }
}

fn check_value(ty: Ty, v: &str) -> Result<(), String> {
    match ty {
        Ty::Bool => {
            if v == "0" || v == "1" {
                Ok(())
            } else {
                Err(format!("type check ('boolean') failed - got '{v}'"))
            }
        }
        Ty::Int { min, max } => {
            let n: i64 = {
                let t = v.strip_prefix('+').unwrap_or(v);
                let digits = t.strip_prefix('-').unwrap_or(t);
                if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
                    return Err(format!("type check ('integer') failed - got '{v}'"));
                }
                t.parse()
                    .map_err(|_| format!("type check ('integer') failed - got '{v}'"))?
            };
            if let Some(max) = max {
                if n > max {
                    return Err(format!("value must have a maximum value of {max}"));
                }
            }
            if let Some(min) = min {
                if n < min {
                    return Err(format!("value must have a minimum value of {min}"));
                }
            }
            Ok(())
        }
        Ty::Str { fmt, max_len } => {
            check_format(fmt, v).map_err(|e| format!("invalid format - {e}"))?;
            if let Some(max) = max_len {
                if v.chars().count() > max {
                    return Err(format!("value may only be {max} characters long"));
                }
            }
            Ok(())
        }
        Ty::Enum(values) => {
            if values.contains(&v) {
                Ok(())
            } else {
                Err(format!(
                    "value '{v}' does not have a value in the enumeration '{}'",
                    values.join(", ")
                ))
            }
        }
    }
}

/// Checks `params` against `specs`; `indexed` describes keys such as
/// `net0` (prefix `net`). Returns PVE's per-field errors.
pub(crate) fn validate(
    specs: &[Spec],
    indexed: &[(&str, Ty)],
    params: &BTreeMap<String, String>,
) -> Result<(), BTreeMap<String, String>> {
    let mut errors = BTreeMap::new();
    for spec in specs {
        match params.get(spec.name) {
            None if !spec.optional => {
                errors.insert(
                    spec.name.to_owned(),
                    "property is missing and it is not optional".to_owned(),
                );
            }
            None => {}
            Some(v) => {
                if let Err(e) = check_value(spec.ty, v) {
                    errors.insert(spec.name.to_owned(), e);
                }
            }
        }
    }
    for (k, v) in params {
        if specs.iter().any(|s| s.name == k) {
            continue;
        }
        let idx = indexed.iter().find(|(prefix, _)| {
            k.strip_prefix(prefix).is_some_and(|n| {
                !n.is_empty() && n.len() <= 2 && n.bytes().all(|c| c.is_ascii_digit())
            })
        });
        match idx {
            Some((_, ty)) => {
                if let Err(e) = check_value(*ty, v) {
                    errors.insert(k.clone(), e);
                }
            }
            None => {
                errors.insert(k.clone(), UNKNOWN.to_owned());
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn answers_like_pve() {
        let specs = [
            NODE,
            VMID,
            opt("cores", int(Some(1), None)),
            opt("name", s(Fmt::DnsName)),
            opt("full", BOOL),
            opt("memory", s(Fmt::Memory)),
        ];
        let idx = [("net", s(Fmt::Net))];
        assert!(validate(
            &specs,
            &idx,
            &p(&[
                ("node", "pve"),
                ("vmid", "100"),
                ("cores", "2"),
                ("name", "env-1.example"),
                ("full", "1"),
                ("memory", "2048"),
                ("net0", "virtio=BC:24:11:00:00:01,bridge=vmbr0"),
            ])
        )
        .is_ok());
        let e = validate(
            &specs,
            &idx,
            &p(&[
                ("node", "pve"),
                ("cores", "0"),
                ("name", "bad_name"),
                ("full", "true"),
                ("memory", "8"),
                ("net0", "virtio=01:00:00:00:00:01"),
                ("net99x", "1"),
                ("bogus", "1"),
            ]),
        )
        .unwrap_err();
        assert_eq!(e["vmid"], "property is missing and it is not optional");
        assert_eq!(e["cores"], "value must have a minimum value of 1");
        assert_eq!(
            e["name"],
            "invalid format - value does not look like a valid DNS name\n"
        );
        assert_eq!(e["full"], "type check ('boolean') failed - got 'true'");
        assert!(e["memory"].contains("minimum value of 16"));
        assert!(e["net0"].contains("unicast MAC"));
        assert_eq!(e["bogus"], UNKNOWN);
        assert_eq!(e["net99x"], UNKNOWN);
        let e = validate(&[VMID], &[], &p(&[("vmid", "99")])).unwrap_err();
        assert_eq!(e["vmid"], "value must have a minimum value of 100");
        let e = validate(&[VMID], &[], &p(&[("vmid", "1e3")])).unwrap_err();
        assert_eq!(e["vmid"], "type check ('integer') failed - got '1e3'");
    }
}

//! The schema checker itself: it accepts what PVE accepts and flags what
//! PVE would refuse, so a clean check of the client's requests means
//! something.

use crate::schema::schema;

type Pairs<'a> = &'a [(&'a str, &'a str)];

fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn check(method: &str, path: &str, pairs: &[(&str, &str)]) -> Vec<String> {
    schema().check_request(method, path, &p(pairs))
}

#[test]
fn accepts_good_requests() {
    let ok: &[(&str, &str, Pairs<'_>)] = &[
        ("GET", "/version", &[]),
        ("GET", "/cluster/nextid", &[("vmid", "100")]),
        ("GET", "/cluster/resources", &[("type", "vm")]),
        (
            "POST",
            "/nodes/pve/qemu/9000/clone",
            &[("newid", "101"), ("name", "env-1"), ("full", "0")],
        ),
        (
            "PUT",
            "/nodes/pve/qemu/101/config",
            &[
                ("net0", "virtio=BC:24:11:00:00:01,bridge=vmbr0"),
                ("memory", "2048"),
                ("cores", "2"),
                ("tags", "daas;env-1"),
                ("agent", "1"),
                ("delete", "ide2,serial0"),
            ],
        ),
        (
            "POST",
            "/nodes/pve/qemu/101/snapshot",
            &[("snapname", "root"), ("vmstate", "1")],
        ),
        (
            "POST",
            "/nodes/pve/qemu/101/snapshot/root/rollback",
            &[("start", "1")],
        ),
        (
            "DELETE",
            "/nodes/pve/qemu/101",
            &[("purge", "1"), ("destroy-unreferenced-disks", "1")],
        ),
        (
            "GET",
            "/nodes/pve/tasks/UPID:pve:00001000:01000000:6650A1B2:qmclone:9000:root@pam:/status",
            &[],
        ),
    ];
    for (m, path, params) in ok {
        assert_eq!(check(m, path, params), Vec::<String>::new(), "{m} {path}");
    }
}

#[test]
fn flags_what_pve_refuses() {
    let cases: &[(&str, &str, Pairs<'_>, &str)] = &[
        ("GET", "/no/such/path", &[], "no such path"),
        ("PATCH", "/version", &[], "has no PATCH"),
        ("GET", "/version", &[("x", "1")], "x: not a parameter"),
        (
            "POST",
            "/nodes/pve/qemu/9000/clone",
            &[],
            "required newid is missing",
        ),
        (
            "POST",
            "/nodes/pve/qemu/9000/clone",
            &[("newid", "101"), ("full", "true")],
            "type check ('boolean') failed",
        ),
        (
            "POST",
            "/nodes/pve/qemu/9000/clone",
            &[("newid", "99")],
            "newid=\"99\": invalid format",
        ),
        (
            "POST",
            "/nodes/pve/qemu/90/clone",
            &[("newid", "101")],
            "vmid=\"90\"",
        ),
        (
            "POST",
            "/nodes/pve/qemu/9000/clone",
            &[("newid", "101"), ("name", "a_b")],
            "name=\"a_b\"",
        ),
        (
            "POST",
            "/nodes/pve/qemu/9000/clone",
            &[("newid", "101"), ("format", "vdi")],
            "enumeration",
        ),
        (
            "GET",
            "/cluster/resources",
            &[("type", "vms")],
            "enumeration",
        ),
        (
            "PUT",
            "/nodes/pve/qemu/101/config",
            &[("net0", "virtio=01:00:00:00:00:01,bridge=vmbr0")],
            "macaddr",
        ),
        (
            "PUT",
            "/nodes/pve/qemu/101/config",
            &[("net0", "virtio=BC:24:11:00:00:01,colour=red")],
            "invalid key",
        ),
        (
            "PUT",
            "/nodes/pve/qemu/101/config",
            &[("net0", "bridge=vmbr0")],
            "model: property is missing",
        ),
        (
            "PUT",
            "/nodes/pve/qemu/101/config",
            &[("memory", "8")],
            "minimum value of 16",
        ),
        (
            "PUT",
            "/nodes/pve/qemu/101/config",
            &[("tags", "a b!")],
            "tags=",
        ),
        (
            "PUT",
            "/nodes/pve/qemu/101/config",
            &[("netx", "virtio")],
            "netx: not a parameter",
        ),
        (
            "POST",
            "/nodes/pve/qemu/101/snapshot",
            &[("snapname", "x".repeat(41).leak())],
            "40 characters",
        ),
        (
            "POST",
            "/nodes/pve/qemu/101/status/start",
            &[("nets-host-mtu", "eth0=1500")],
            "regex pattern",
        ),
        (
            "POST",
            "/access/ticket",
            &[("username", "root@pam"), ("password", "x"), ("path", "/")],
            "requires privs",
        ),
    ];
    for (m, path, params, want) in cases {
        let problems = check(m, path, params);
        assert!(
            problems.iter().any(|pr| pr.contains(want)),
            "{m} {path} {params:?}: wanted {want:?}, got {problems:?}"
        );
    }
}

#[test]
fn checks_answers_against_returns() {
    let s = schema();
    assert!(s
        .check_answer(
            "GET",
            "/version",
            &serde_json::json!({"version": "8.3.2", "release": "8.3", "repoid": "x"})
        )
        .is_empty());
    assert!(!s
        .check_answer("GET", "/version", &serde_json::json!({"release": "8.3"}))
        .is_empty());
    assert!(!s
        .check_answer(
            "POST",
            "/nodes/pve/qemu/100/clone",
            &serde_json::json!({"upid": 1})
        )
        .is_empty());
}

-- Guest SSH host keys, pinned at first contact (docs/guest-proxy.md, "The
-- appliance side"). `subject` names what the key belongs to: `instance:<id>`
-- for an instance, `object:<id>` for an object's guest. A later key that
-- differs is refused, never replaces the pin; the pin goes with its subject.

CREATE TABLE guest_host_keys (
    subject     TEXT PRIMARY KEY,
    public_key  TEXT NOT NULL,   -- OpenSSH form without comment: "ssh-ed25519 AAAA..."
    fingerprint TEXT NOT NULL,   -- "SHA256:..."
    pinned_at   INTEGER NOT NULL
) STRICT;

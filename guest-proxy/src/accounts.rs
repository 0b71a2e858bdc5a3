//! Local accounts from `/etc/passwd` and `/etc/group`, read directly: a
//! static binary must not rely on glibc's NSS modules, and a rootfs being
//! prepared (`install --root`) is not the running system.

use std::path::Path;

/// One `/etc/passwd` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct User {
    pub(crate) name: String,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) home: String,
    pub(crate) shell: String,
}

/// One `/etc/group` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Group {
    pub(crate) name: String,
    pub(crate) gid: u32,
    pub(crate) members: Vec<String>,
}

pub(crate) fn parse_passwd(text: &str) -> Vec<User> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 7 || f[0].is_empty() || f[0].starts_with('#') {
                return None;
            }
            Some(User {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
                shell: f[6].to_string(),
            })
        })
        .collect()
}

pub(crate) fn parse_group(text: &str) -> Vec<Group> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 || f[0].is_empty() || f[0].starts_with('#') {
                return None;
            }
            Some(Group {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_string)
                    .collect(),
            })
        })
        .collect()
}

/// The accounts of a system (or of a rootfs).
#[derive(Debug, Clone, Default)]
pub(crate) struct Accounts {
    pub(crate) users: Vec<User>,
    pub(crate) groups: Vec<Group>,
}

impl Accounts {
    /// Reads `ROOT/etc/passwd` and `ROOT/etc/group`; missing files are empty.
    pub(crate) fn load(root: &Path) -> Self {
        let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_default();
        Self {
            users: parse_passwd(&read("etc/passwd")),
            groups: parse_group(&read("etc/group")),
        }
    }

    /// A user by name, or by numeric uid (which need not have an entry).
    pub(crate) fn user(&self, name_or_uid: &str) -> Option<User> {
        if let Some(u) = self.users.iter().find(|u| u.name == name_or_uid) {
            return Some(u.clone());
        }
        let uid: u32 = name_or_uid.parse().ok()?;
        Some(
            self.users
                .iter()
                .find(|u| u.uid == uid)
                .cloned()
                .unwrap_or(User {
                    name: uid.to_string(),
                    uid,
                    gid: uid,
                    home: "/".into(),
                    shell: "/bin/sh".into(),
                }),
        )
    }

    pub(crate) fn user_by_uid(&self, uid: u32) -> Option<&User> {
        self.users.iter().find(|u| u.uid == uid)
    }

    /// A group's gid by name or number.
    pub(crate) fn gid(&self, name_or_gid: &str) -> Option<u32> {
        self.groups
            .iter()
            .find(|g| g.name == name_or_gid)
            .map(|g| g.gid)
            .or_else(|| name_or_gid.parse().ok())
    }

    pub(crate) fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// The user's primary gid and every group listing them, as for
    /// `initgroups`.
    pub(crate) fn group_ids(&self, user: &User) -> Vec<u32> {
        let mut gids = vec![user.gid];
        for g in &self.groups {
            if g.members.iter().any(|m| m == &user.name) && !gids.contains(&g.gid) {
                gids.push(g.gid);
            }
        }
        gids
    }

    /// Whether `user` belongs to `group` (as primary or supplementary group).
    pub(crate) fn is_member(&self, user: &User, group: &str) -> bool {
        self.group(group)
            .is_some_and(|g| g.gid == user.gid || g.members.iter().any(|m| m == &user.name))
    }
}

/// Valid user and group names: what `useradd` accepts by default on Debian,
/// and nothing that could be taken for an option or a path.
pub(crate) fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && name.len() <= 32
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_passwd_and_group() {
        let users = parse_passwd(
            "root:x:0:0:root:/root:/bin/bash\n# comment\nbroken\nalice:x:1000:1000:Alice,,,:/home/alice:/bin/zsh\nbad:x:no:1:::\n",
        );
        assert_eq!(users.len(), 2);
        assert_eq!(users[1].home, "/home/alice");
        let groups = parse_group("root:x:0:\naudio:x:29:alice,bob\n");
        assert_eq!(groups[1].members, vec!["alice", "bob"]);
        let acc = Accounts { users, groups };
        assert_eq!(acc.user("alice").unwrap().uid, 1000);
        assert_eq!(acc.user("0").unwrap().name, "root");
        assert_eq!(acc.user("4242").unwrap().uid, 4242);
        assert!(acc.user("nobody-here").is_none());
        assert_eq!(acc.gid("audio"), Some(29));
        assert_eq!(acc.gid("77"), Some(77));
        assert!(acc.is_member(acc.user_by_uid(1000).unwrap(), "audio"));
        assert!(!acc.is_member(acc.user_by_uid(0).unwrap(), "audio"));
        assert_eq!(
            acc.group_ids(acc.user_by_uid(1000).unwrap()),
            vec![1000, 29]
        );
    }

    #[test]
    fn names() {
        for ok in ["alice", "_svc", "a-b_9", "x"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            "-rf",
            "Alice",
            "a b",
            "a/b",
            "../x",
            "9lives",
            &"a".repeat(33),
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}

//! Path safety for file operations.
//!
//! A request's path must be absolute, free of `..`, and inside the allowed
//! tree. It is then resolved one component at a time with `openat` from `/`,
//! holding a descriptor for each directory reached, so what is checked is
//! what is used: every symlink met is read and expanded by hand, and the
//! walk is refused as soon as it leaves the tree (passing through the tree's
//! own ancestors, as a relative link `../x` does, is fine). The caller gets
//! the descriptor of the final parent directory and the final name, and
//! works relative to that descriptor (`openat`, `renameat`), never by path
//! again.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use crate::error::{IoContext, OpError};

/// Most symlinks expanded in one resolution (as the kernel's `ELOOP`).
const MAX_SYMLINKS: usize = 40;

/// The tree file operations may touch.
#[derive(Debug, Clone)]
pub(crate) struct AllowedTree {
    root: PathBuf,
    comps: Vec<OsString>,
}

impl AllowedTree {
    /// The tree at `dir` (canonicalized once, at start).
    pub(crate) fn new(dir: &Path) -> std::io::Result<Self> {
        let root = std::fs::canonicalize(dir)?;
        if !root.is_dir() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} is not a directory", root.display()),
            ));
        }
        let comps = normal_components(&root);
        Ok(Self { root, comps })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the canonical path `canon` (as components) is inside the
    /// tree (or is its root).
    fn contains(&self, canon: &[OsString]) -> bool {
        canon.len() >= self.comps.len() && canon[..self.comps.len()] == self.comps[..]
    }

    /// Whether `canon` is an ancestor of the tree's root (or the root).
    fn is_ancestor(&self, canon: &[OsString]) -> bool {
        canon.len() <= self.comps.len() && self.comps[..canon.len()] == canon[..]
    }
}

fn normal_components(p: &Path) -> Vec<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            _ => None,
        })
        .collect()
}

/// Options for [`resolve`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Resolve {
    /// Expand a symlink in the final component (staying in the tree).
    pub(crate) follow_final: bool,
    /// Create missing directories on the way (inside the tree only).
    pub(crate) create_dirs: bool,
}

/// Where a path leads: the directory that holds it and its name there.
#[derive(Debug)]
pub(crate) struct Resolved {
    /// The parent directory (an `O_PATH` descriptor).
    pub(crate) dir: OwnedFd,
    /// The final component; never empty, `.` or `..`.
    pub(crate) name: OsString,
    /// The canonical path, for messages and results.
    pub(crate) path: PathBuf,
    /// The final component's type if it exists (never a symlink when
    /// `follow_final` was set).
    pub(crate) existing: Option<rustix::fs::Stat>,
}

/// Checks the text of a request path: absolute, no `..`, no NUL, names a
/// file (not `/`, no trailing `/`).
pub(crate) fn check_request_path(path: &str) -> Result<&Path, OpError> {
    if path.is_empty() {
        return Err(OpError::invalid("path is empty"));
    }
    if path.contains('\0') {
        return Err(OpError::invalid("path contains a NUL byte"));
    }
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(OpError::rejected(format!("path {path:?} is not absolute")));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(OpError::rejected(format!("path {path:?} contains `..`")));
    }
    if path.ends_with('/') || !matches!(p.components().next_back(), Some(Component::Normal(_))) {
        return Err(OpError::invalid(format!(
            "path {path:?} does not name a file"
        )));
    }
    Ok(p)
}

fn open_dir(at: &OwnedFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        at,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

fn show(canon: &[OsString]) -> String {
    let mut s = String::new();
    for c in canon {
        s.push('/');
        s.push_str(&c.to_string_lossy());
    }
    if s.is_empty() {
        s.push('/');
    }
    s
}

/// Resolves a request path inside `tree` (see the module docs).
pub(crate) fn resolve(tree: &AllowedTree, path: &str, opts: Resolve) -> Result<Resolved, OpError> {
    let p = check_request_path(path)?;
    let lexical = normal_components(p);
    if !tree.contains(&lexical) {
        return Err(OpError::rejected(format!(
            "path {path:?} is outside the allowed tree {}",
            tree.root().display()
        )));
    }
    let root_fd = rustix::fs::open(
        "/",
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ctx("cannot open /")?;
    // `stack[i]` is the descriptor of `/canon[..i]`.
    let mut stack: Vec<OwnedFd> = vec![root_fd];
    let mut canon: Vec<OsString> = Vec::new();
    let mut pending: VecDeque<OsString> = lexical.into();
    let mut links = 0usize;

    while let Some(comp) = pending.pop_front() {
        let bytes = comp.as_bytes();
        if bytes.is_empty() || bytes == b"." {
            continue;
        }
        if bytes == b".." {
            // Only symlink targets bring `..` here; `canon` is symlink-free,
            // so popping it is exact.
            if canon.pop().is_some() {
                stack.pop();
            }
            check_walk(tree, &canon, path)?;
            continue;
        }
        let is_last = pending.is_empty();
        let dir = stack
            .last()
            .ok_or_else(|| OpError::rejected("path resolution underflow"))?;
        if is_last && !opts.follow_final {
            let existing = stat_nofollow(dir, &comp, path)?;
            return finish(tree, stack, canon, comp, existing, path);
        }
        let Some(st) = stat_nofollow(dir, &comp, path)? else {
            if is_last {
                return finish(tree, stack, canon, comp, None, path);
            }
            let mut here = canon.clone();
            here.push(comp.clone());
            if !opts.create_dirs {
                return Err(OpError::new(
                    daas_guest_proxy_wire::ErrorCode::NotFound,
                    format!("directory {} does not exist", show(&here)),
                ));
            }
            if !tree.contains(&canon) {
                return Err(OpError::rejected(format!(
                    "will not create {} outside the allowed tree",
                    show(&here)
                )));
            }
            match rustix::fs::mkdirat(dir, &*comp, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(e).ctx(format_args!("cannot create {}", show(&here))),
            }
            let fd = open_dir(dir, &comp).ctx(format_args!("cannot open {}", show(&here)))?;
            stack.push(fd);
            canon.push(comp);
            continue;
        };
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Symlink => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(OpError::rejected(format!("too many symlinks in {path:?}")));
                }
                let target = rustix::fs::readlinkat(dir, &*comp, Vec::new())
                    .ctx(format_args!("cannot read symlink {path:?}"))?;
                let target = PathBuf::from(OsStr::from_bytes(target.as_bytes()));
                let mut expanded: VecDeque<OsString> = target
                    .components()
                    .filter_map(|c| match c {
                        Component::Normal(n) => Some(n.to_os_string()),
                        Component::ParentDir => Some(OsString::from("..")),
                        _ => None,
                    })
                    .collect();
                if target.is_absolute() {
                    stack.truncate(1);
                    canon.clear();
                }
                expanded.extend(pending.drain(..));
                pending = expanded;
            }
            FileType::Directory if !is_last => {
                let fd =
                    open_dir(dir, &comp).ctx(format_args!("cannot open directory in {path:?}"))?;
                stack.push(fd);
                canon.push(comp);
                check_walk(tree, &canon, path)?;
            }
            _ if is_last => return finish(tree, stack, canon, comp, Some(st), path),
            _ => {
                let mut here = canon.clone();
                here.push(comp);
                return Err(OpError::invalid(format!(
                    "{} is not a directory",
                    show(&here)
                )));
            }
        }
    }
    Err(OpError::invalid(format!(
        "path {path:?} does not name a file"
    )))
}

fn stat_nofollow(
    dir: &OwnedFd,
    name: &OsStr,
    path: &str,
) -> Result<Option<rustix::fs::Stat>, OpError> {
    match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e).ctx(format_args!("cannot look up {path:?}")),
    }
}

/// During the walk the position must stay inside the tree or on the way to
/// it from `/`.
fn check_walk(tree: &AllowedTree, canon: &[OsString], path: &str) -> Result<(), OpError> {
    if tree.contains(canon) || tree.is_ancestor(canon) {
        Ok(())
    } else {
        Err(OpError::rejected(format!(
            "path {path:?} leads through {} outside the allowed tree {}",
            show(canon),
            tree.root().display()
        )))
    }
}

fn finish(
    tree: &AllowedTree,
    mut stack: Vec<OwnedFd>,
    canon: Vec<OsString>,
    name: OsString,
    existing: Option<rustix::fs::Stat>,
    path: &str,
) -> Result<Resolved, OpError> {
    let mut full = canon.clone();
    full.push(name.clone());
    if !tree.contains(&full) || full.len() == tree.comps.len() {
        return Err(OpError::rejected(format!(
            "path {path:?} resolves to {} outside the allowed tree {}",
            show(&full),
            tree.root().display()
        )));
    }
    let dir = stack
        .pop()
        .ok_or_else(|| OpError::rejected("path resolution underflow"))?;
    Ok(Resolved {
        dir,
        name,
        path: PathBuf::from(show(&full)),
        existing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use daas_guest_proxy_wire::ErrorCode;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, AllowedTree) {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("tree/a/b")).unwrap();
        std::fs::create_dir_all(r.join("outside")).unwrap();
        std::fs::write(r.join("tree/a/file"), b"x").unwrap();
        std::fs::write(r.join("outside/secret"), b"s").unwrap();
        symlink("b", r.join("tree/a/rel")).unwrap();
        symlink(r.join("tree/a/b"), r.join("tree/abs_in")).unwrap();
        symlink(r.join("outside"), r.join("tree/abs_out")).unwrap();
        symlink("../../outside", r.join("tree/a/rel_out")).unwrap();
        symlink("../../outside/secret", r.join("tree/a/final_out")).unwrap();
        symlink("file", r.join("tree/a/final_in")).unwrap();
        symlink("../tree/a/b", r.join("tree/through_parent")).unwrap();
        symlink("loop", r.join("tree/loop")).unwrap();
        let tree = AllowedTree::new(&r.join("tree")).unwrap();
        (t, tree)
    }

    /// `check(input, expect)`: the resolved path, or the error code.
    fn check(tree: &AllowedTree, rel: &str, opts: Resolve, expect: &str) {
        let path = if rel.starts_with('/') {
            rel.to_string()
        } else {
            format!("{}/{rel}", tree.root().display())
        };
        let got = match resolve(tree, &path, opts) {
            Ok(r) => r
                .path
                .strip_prefix(tree.root())
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| r.path.display().to_string()),
            Err(e) => format!("{:?}", e.code),
        };
        assert_eq!(got, expect, "path {path}");
    }

    #[test]
    fn resolves_from_data() {
        let (_t, tree) = setup();
        let follow = Resolve {
            follow_final: true,
            create_dirs: false,
        };
        let plain = Resolve::default();
        let mkdirs = Resolve {
            follow_final: true,
            create_dirs: true,
        };
        check(&tree, "a/file", follow, "a/file");
        check(&tree, "a/new", follow, "a/new");
        check(&tree, "a/./file", follow, "a/file");
        check(&tree, "a/rel/x", follow, "a/b/x");
        check(&tree, "abs_in/x", follow, "a/b/x");
        check(&tree, "through_parent/x", follow, "a/b/x");
        check(&tree, "a/final_in", follow, "a/file");
        check(&tree, "a/final_in", plain, "a/final_in");
        check(&tree, "a/final_out", plain, "a/final_out");
        check(&tree, "abs_out/secret", follow, "PathRejected");
        check(&tree, "a/rel_out/secret", follow, "PathRejected");
        check(&tree, "a/final_out", follow, "PathRejected");
        check(&tree, "a/../a/file", follow, "PathRejected");
        check(&tree, "/etc/passwd", follow, "PathRejected");
        check(&tree, "loop", follow, "PathRejected");
        check(&tree, "missing/x", follow, "NotFound");
        check(&tree, "a/file/x", follow, "InvalidArgument");
        check(&tree, "a/", follow, "InvalidArgument");
        check(&tree, "", follow, "InvalidArgument");
        assert_eq!(
            resolve(&tree, "relative", follow).unwrap_err().code,
            ErrorCode::PathRejected
        );
        check(&tree, "new1/new2/f", mkdirs, "new1/new2/f");
        assert!(tree.root().join("new1/new2").is_dir());
        check(&tree, "abs_out/made/f", mkdirs, "PathRejected");
        assert!(!tree.root().join("../outside/made").exists());
        assert_eq!(
            resolve(&tree, "", follow).unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        assert_eq!(
            resolve(&tree, "/a\0b", follow).unwrap_err().code,
            ErrorCode::InvalidArgument
        );
        // the tree root itself is not a file path
        check(
            &tree,
            &tree.root().display().to_string(),
            follow,
            "PathRejected",
        );
    }

    #[test]
    fn default_tree_is_root() {
        let tree = AllowedTree::new(Path::new("/")).unwrap();
        let r = resolve(
            &tree,
            "/proc/self/status",
            Resolve {
                follow_final: true,
                create_dirs: false,
            },
        )
        .unwrap();
        assert!(r.path.starts_with("/proc/"));
    }
}

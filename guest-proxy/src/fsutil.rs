//! Writing system files (`/etc/hostname`, `/etc/default/keyboard`,
//! `authorized_keys`, ...) without ever leaving them half-written.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::error::{IoContext, OpError};

/// Replaces `path` with `data`: a temporary file beside it, fsync, rename,
/// fsync of the directory. An existing file's mode and owner are kept;
/// a new file gets `mode`. A symlink at `path` is replaced, not followed.
pub(crate) fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), OpError> {
    let dir = path
        .parent()
        .ok_or_else(|| OpError::invalid(format!("{} has no parent directory", path.display())))?;
    let name = path
        .file_name()
        .ok_or_else(|| OpError::invalid(format!("{} has no file name", path.display())))?;
    let existing = std::fs::symlink_metadata(path).ok().filter(|m| m.is_file());
    let tmp = dir.join(format!(
        ".{}.daas-tmp.{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .ctx(format_args!("cannot create {}", tmp.display()))?;
        f.write_all(data)
            .ctx(format_args!("writing {}", tmp.display()))?;
        let (mode, owner) = match &existing {
            Some(m) => (m.mode() & 0o7777, Some((m.uid(), m.gid()))),
            None => (mode, None),
        };
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))
                .ctx(format_args!("cannot set the owner of {}", tmp.display()))?;
        }
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .ctx(format_args!("cannot set the mode of {}", tmp.display()))?;
        f.sync_all().ctx(format_args!("fsync {}", tmp.display()))?;
        std::fs::rename(&tmp, path).ctx(format_args!("cannot replace {}", path.display()))?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_keeping_mode() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f");
        write_atomic(&p, b"one", 0o640).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o640);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        write_atomic(&p, b"two", 0o644).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 1);
        assert!(write_atomic(&t.path().join("missing/f"), b"x", 0o644).is_err());
    }
}

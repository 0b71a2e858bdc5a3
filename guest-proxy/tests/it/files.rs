//! `put_file` and `get_file` over pipes: integrity, atomicity, path safety.

use std::os::unix::fs::{symlink, MetadataExt};
use std::path::Path;
use std::time::Duration;

use daas_guest_proxy_wire::message::{GetFile, Ping, PutFile};
use daas_guest_proxy_wire::{ErrorCode, Event, Stream};

use crate::harness::{pseudo_random, put_args, sha256_hex};
use crate::support::{eventually, temp_files};

fn tree() -> (tempfile::TempDir, String) {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("tree");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::create_dir_all(t.path().join("outside")).unwrap();
    std::fs::write(t.path().join("outside/secret"), b"secret").unwrap();
    let s = root.display().to_string();
    (t, s)
}

#[test]
fn put_then_get_round_trips() {
    let (_t, root) = tree();
    let mut p = crate::support::local(&["--allowed-tree", &root]);
    let data = pseudo_random(3 << 20, 1);
    let path = format!("{root}/sub/blob.bin");
    let r = p.put_file(put_args(&path, &data), &data).unwrap();
    assert_eq!(r.size, data.len() as u64);
    assert_eq!(r.sha256, sha256_hex(&data));
    assert_eq!(r.path, path);
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o7777, 0o644);
    assert!(temp_files(Path::new(&format!("{root}/sub"))).is_empty());

    let id = p.send(GetFile {
        path: path.clone(),
        max_size: None,
    });
    let reply = p.wait(id);
    let got = reply.result::<GetFile>().unwrap();
    assert_eq!(reply.file, data);
    assert_eq!(got.sha256, sha256_hex(&data));
    assert_eq!(
        reply.events,
        vec![Event::File {
            size: data.len() as u64,
            mode: 0o644
        }]
    );

    // empty files, mode and owner, create_dirs, replacing
    let empty = format!("{root}/a/b/empty");
    let mut args = put_args(&empty, b"");
    args.create_dirs = true;
    args.mode = Some(0o600);
    args.owner = Some("nobody".into());
    p.put_file(args, b"").unwrap();
    let m = std::fs::metadata(&empty).unwrap();
    assert_eq!((m.len(), m.mode() & 0o7777, m.uid()), (0, 0o600, 65534));
    let mut args = put_args(&empty, b"new");
    args.mode = None;
    p.put_file(args, b"new").unwrap();
    let m = std::fs::metadata(&empty).unwrap();
    assert_eq!(
        (m.mode() & 0o7777, m.uid()),
        (0o600, 65534),
        "replacing keeps mode and owner"
    );
    assert_eq!(std::fs::read(&empty).unwrap(), b"new");
    let (data, _) = p.get_file(&empty).unwrap();
    assert_eq!(data, b"new");
    let err = p
        .call(GetFile {
            path: path.clone(),
            max_size: Some(10),
        })
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::TooLarge);
}

#[test]
fn wrong_checksum_or_size_leaves_nothing() {
    let (_t, root) = tree();
    let mut p = crate::support::local(&["--allowed-tree", &root]);
    let target = format!("{root}/sub/f");
    std::fs::write(&target, b"original").unwrap();
    let data = pseudo_random(600_000, 2);
    let mut args = put_args(&target, &data);
    args.sha256 = sha256_hex(b"something else");
    let err = p.put_file(args, &data).unwrap_err();
    assert_eq!(err.code, ErrorCode::ChecksumMismatch);
    assert_eq!(std::fs::read(&target).unwrap(), b"original");
    // more data than announced
    let mut args = put_args(&target, &data);
    args.size = 1000;
    let err = p.put_file(args, &data).unwrap_err();
    assert_eq!(err.code, ErrorCode::SizeMismatch);
    assert_eq!(std::fs::read(&target).unwrap(), b"original");
    // a bad hash string, bad mode, unknown owner
    let mut args = put_args(&target, b"x");
    args.sha256 = "xyz".into();
    assert_eq!(
        p.put_file(args, b"x").unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    let mut args = put_args(&target, b"x");
    args.mode = Some(0o17777);
    assert_eq!(
        p.put_file(args, b"x").unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    let mut args = put_args(&target, b"x");
    args.owner = Some("no-such-user-xyz".into());
    assert_eq!(
        p.put_file(args, b"x").unwrap_err().code,
        ErrorCode::NotFound
    );
    // data on the wrong stream
    let id = p.send(put_args(&target, b"xyz"));
    p.data(id, Stream::Stdin, b"xyz");
    assert_eq!(
        p.wait(id).result::<PutFile>().unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    p.call(Ping {}).unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"original");
    assert!(temp_files(Path::new(&format!("{root}/sub"))).is_empty());
}

#[test]
fn paths_are_confined_to_the_allowed_tree() {
    let (t, root) = tree();
    let outside = t.path().join("outside");
    symlink(&outside, format!("{root}/escape")).unwrap();
    symlink("../../outside/secret", format!("{root}/sub/secret_link")).unwrap();
    symlink("../sub", format!("{root}/sub/inside_link")).unwrap();
    std::fs::write(format!("{root}/sub/real"), b"real").unwrap();
    symlink("real", format!("{root}/sub/final_in")).unwrap();
    let mut p = crate::support::local(&["--allowed-tree", &root]);
    let cases = [
        format!("{root}/../outside/secret"),
        format!("{root}/sub/../../outside/secret"),
        format!("{root}/escape/secret"),
        format!("{root}/sub/secret_link"),
        outside.join("secret").display().to_string(),
        "/etc/passwd".to_string(),
        "relative/path".to_string(),
    ];
    for path in &cases {
        let err = p.get_file(path).unwrap_err();
        assert_eq!(err.code, ErrorCode::PathRejected, "get {path}: {err:?}");
        let err = p.put_file(put_args(path, b"pwned"), b"pwned").unwrap_err();
        assert_eq!(err.code, ErrorCode::PathRejected, "put {path}: {err:?}");
        let mut args = put_args(&format!("{path}/new/file"), b"x");
        args.create_dirs = true;
        let err = p.put_file(args, b"x").unwrap_err();
        assert!(
            matches!(
                err.code,
                ErrorCode::PathRejected | ErrorCode::InvalidArgument
            ),
            "put {path}/new/file: {err:?}"
        );
        p.call(Ping {}).unwrap();
    }
    assert_eq!(std::fs::read(outside.join("secret")).unwrap(), b"secret");
    assert_eq!(
        std::fs::read_dir(&outside).unwrap().count(),
        1,
        "nothing created outside"
    );
    // symlinks that stay inside are followed
    let (data, _) = p.get_file(&format!("{root}/sub/inside_link/real")).unwrap();
    assert_eq!(data, b"real");
    p.put_file(
        put_args(&format!("{root}/sub/final_in"), b"via link"),
        b"via link",
    )
    .unwrap();
    assert_eq!(
        std::fs::read(format!("{root}/sub/real")).unwrap(),
        b"via link"
    );
    assert!(std::fs::symlink_metadata(format!("{root}/sub/final_in"))
        .unwrap()
        .file_type()
        .is_symlink());
    // other errors
    assert_eq!(
        p.get_file(&format!("{root}/sub")).unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        p.get_file(&format!("{root}/missing")).unwrap_err().code,
        ErrorCode::NotFound
    );
    assert_eq!(
        p.put_file(put_args(&format!("{root}/sub"), b"x"), b"x")
            .unwrap_err()
            .code,
        ErrorCode::InvalidArgument
    );
    assert_eq!(
        p.put_file(put_args(&format!("{root}/nodir/f"), b"x"), b"x")
            .unwrap_err()
            .code,
        ErrorCode::NotFound
    );
    assert_eq!(
        p.get_file("/dev/null").unwrap_err().code,
        ErrorCode::PathRejected
    );
    let mut p = crate::support::local(&[]);
    assert_eq!(
        p.get_file("/dev/null").unwrap_err().code,
        ErrorCode::InvalidArgument
    );
}

#[test]
fn cancel_and_dropped_connection_leave_no_partial_file() {
    let (_t, root) = tree();
    let sub = Path::new(&root).join("sub");
    let data = pseudo_random(2 << 20, 3);
    let target = format!("{root}/sub/big");

    // cancel mid-transfer
    let mut p = crate::support::local(&["--allowed-tree", &root]);
    let id = p.send(put_args(&target, &data));
    p.data(id, Stream::File, &data[..1 << 20]);
    p.call(Ping {}).unwrap();
    assert_eq!(
        temp_files(&sub).len(),
        1,
        "the upload writes a temporary file"
    );
    p.cancel(id);
    assert_eq!(
        p.wait(id).result::<PutFile>().unwrap_err().code,
        ErrorCode::Cancelled
    );
    // late data for the cancelled upload is dropped
    p.data(id, Stream::File, &data[1 << 20..]);
    p.call(Ping {}).unwrap();
    assert!(!Path::new(&target).exists());
    assert!(temp_files(&sub).is_empty());

    // the connection drops mid-transfer
    let id = p.send(put_args(&target, &data));
    p.data(id, Stream::File, &data[..1 << 20]);
    p.call(Ping {}).unwrap();
    let status = p.wait_exit(Duration::from_secs(10)).expect("proxy exits");
    assert!(status.success());
    assert!(!Path::new(&target).exists());
    assert!(temp_files(&sub).is_empty(), "{:?}", temp_files(&sub));

    // killed outright (SIGKILL cannot be caught; the target is still never partial)
    let mut p = crate::support::local(&["--allowed-tree", &root]);
    let id = p.send(put_args(&target, &data));
    p.data(id, Stream::File, &data[..1 << 20]);
    p.call(Ping {}).unwrap();
    p.child.kill().unwrap();
    let _ = p.child.wait();
    assert!(!Path::new(&target).exists());
    for t in temp_files(&sub) {
        std::fs::remove_file(sub.join(t)).unwrap();
    }

    // SIGTERM mid-transfer: temporary file removed
    let mut p = crate::support::local(&["--allowed-tree", &root]);
    let id = p.send(put_args(&target, &data));
    p.data(id, Stream::File, &data[..1 << 20]);
    p.call(Ping {}).unwrap();
    let pid = nix::unistd::Pid::from_raw(i32::try_from(p.child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(p.wait_exit(Duration::from_secs(10)).is_some());
    assert!(eventually(Duration::from_secs(2), || temp_files(&sub).is_empty()));
    assert!(!Path::new(&target).exists());
}

#[test]
fn concurrent_transfers_interleave() {
    let (_t, root) = tree();
    let mut p = crate::support::local(&["--allowed-tree", &root]);
    let a = pseudo_random(1_000_000, 10);
    let b = pseudo_random(700_000, 11);
    let pa = format!("{root}/a");
    let pb = format!("{root}/b");
    let ia = p.send(put_args(&pa, &a));
    let ib = p.send(put_args(&pb, &b));
    for (ca, cb) in a.chunks(100_000).zip(b.chunks(70_000)) {
        p.data(ia, Stream::File, ca);
        p.data(ib, Stream::File, cb);
    }
    p.wait(ia).result::<PutFile>().unwrap();
    p.wait(ib).result::<PutFile>().unwrap();
    let ga = p.send(GetFile {
        path: pa.clone(),
        max_size: None,
    });
    let gb = p.send(GetFile {
        path: pb.clone(),
        max_size: None,
    });
    let rb = p.wait(gb);
    let ra = p.wait(ga);
    assert_eq!(ra.file, a);
    assert_eq!(rb.file, b);
}

#[test]
fn a_large_upload_is_written_back_while_it_arrives() {
    let (_t, root) = tree();
    let mut p = crate::support::local(&["--allowed-tree", &root]);
    let data = pseudo_random(40 << 20, 12);
    let path = format!("{root}/large");
    let r = p.put_file(put_args(&path, &data), &data).unwrap();
    assert_eq!(r.sha256, sha256_hex(&data));
    let (back, got) = p.get_file(&path).unwrap();
    assert_eq!(got.sha256, r.sha256);
    assert!(back == data);
    // cancelled halfway: the writeback thread does not keep the file
    let id = p.send(put_args(&format!("{root}/large2"), &data));
    p.data(id, Stream::File, &data[..20 << 20]);
    p.cancel(id);
    assert_eq!(
        p.wait(id).result::<PutFile>().unwrap_err().code,
        ErrorCode::Cancelled
    );
    assert!(!Path::new(&format!("{root}/large2")).exists());
    assert!(temp_files(Path::new(&root)).is_empty());
}

//! `put_file` and `get_file`.
//!
//! `put_file` writes into a temporary file created with `O_EXCL` beside the
//! target (relative to the parent directory's descriptor, see
//! [`crate::safepath`]), checks the sha256, sets owner and mode, fsyncs and
//! renames it over the target, then fsyncs the directory. Until the rename
//! the target is untouched; on any failure, cancel or end of session the
//! temporary file is removed.

use std::ffi::OsString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, SyncSender};
use std::sync::Arc;
use std::thread;
use std::time::{SystemTime, UNIX_EPOCH};

use daas_guest_proxy_wire::message::{GetFile, GetFileResult, PutFile, PutFileResult};
use daas_guest_proxy_wire::{ErrorCode, Event, Stream, BULK_CHUNK};
use rustix::fs::{AtFlags, FileType, Gid, Mode, OFlags, Uid};
use sha2::{Digest, Sha256};

use crate::accounts::Accounts;
use crate::error::{IoContext, OpError};
use crate::safepath::{resolve, Resolve};
use crate::serve::{reply, Ctx, Shared};

/// Bytes written between writeback kicks of a large upload.
const WRITEBACK_EVERY: u64 = 16 << 20;

/// Starts writeback of a large upload while it is still arriving, so that
/// the final fsync has little left to do: a thread calls `fdatasync` when
/// kicked, and the reader never waits for it (a kick during a running sync
/// is dropped).
struct Writeback {
    kick: SyncSender<()>,
    thread: thread::JoinHandle<()>,
}

impl Writeback {
    fn start(file: &File) -> Option<Self> {
        let file = file.try_clone().ok()?;
        let (kick, rx) = mpsc::sync_channel::<()>(1);
        let thread = thread::Builder::new()
            .name("writeback".into())
            .spawn(move || {
                for () in rx {
                    let _ = file.sync_data();
                }
            })
            .ok()?;
        Some(Self { kick, thread })
    }

    fn kick(&self) {
        let _ = self.kick.try_send(());
    }

    fn stop(self) {
        drop(self.kick);
        let _ = self.thread.join();
    }
}

/// A `put_file` receiving data.
pub(crate) struct Upload {
    id: u64,
    dir: Arc<OwnedFd>,
    tmp: OsString,
    name: OsString,
    path: PathBuf,
    file: File,
    hasher: Sha256,
    expected: [u8; 32],
    size: u64,
    received: u64,
    mode: u32,
    owner: Option<u32>,
    group: Option<u32>,
    writeback: Option<Writeback>,
    next_kick: u64,
}

fn parse_sha256(s: &str) -> Result<[u8; 32], OpError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out)
        .map_err(|_| OpError::invalid(format!("sha256 {s:?} is not 64 hex digits")))?;
    Ok(out)
}

fn lookup_owner(
    owner: Option<&str>,
    group: Option<&str>,
) -> Result<(Option<u32>, Option<u32>), OpError> {
    if owner.is_none() && group.is_none() {
        return Ok((None, None));
    }
    let acc = Accounts::load(Path::new("/"));
    let user = owner
        .map(|o| {
            acc.user(o)
                .ok_or_else(|| OpError::new(ErrorCode::NotFound, format!("no user {o:?}")))
        })
        .transpose()?;
    let gid = match group {
        Some(g) => Some(
            acc.gid(g)
                .ok_or_else(|| OpError::new(ErrorCode::NotFound, format!("no group {g:?}")))?,
        ),
        None => user.as_ref().map(|u| u.gid),
    };
    Ok((user.map(|u| u.uid), gid))
}

impl Upload {
    /// Checks the request and creates the temporary file.
    pub(crate) fn start(shared: &Shared, id: u64, args: PutFile) -> Result<Self, OpError> {
        let expected = parse_sha256(&args.sha256)?;
        if let Some(mode) = args.mode {
            if mode > 0o7777 {
                return Err(OpError::invalid(format!(
                    "mode {mode:#o} has bits beyond 0o7777"
                )));
            }
        }
        let (owner, group) = lookup_owner(args.owner.as_deref(), args.group.as_deref())?;
        let r = resolve(
            &shared.config.tree,
            &args.path,
            Resolve {
                follow_final: true,
                create_dirs: args.create_dirs,
            },
        )?;
        // Replacing keeps an existing file's mode and owner unless told.
        let (mut mode, mut owner, mut group) = (args.mode.unwrap_or(0o644), owner, group);
        if let Some(st) = &r.existing {
            match FileType::from_raw_mode(st.st_mode) {
                FileType::RegularFile => {
                    if args.mode.is_none() {
                        mode = st.st_mode & 0o7777;
                    }
                    if args.owner.is_none() && args.group.is_none() {
                        owner = Some(st.st_uid);
                        group = Some(st.st_gid);
                    }
                }
                FileType::Directory => {
                    return Err(OpError::invalid(format!(
                        "{} is a directory",
                        r.path.display()
                    )))
                }
                _ => {
                    return Err(OpError::invalid(format!(
                        "{} exists and is not a regular file",
                        r.path.display()
                    )))
                }
            }
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let tmp = OsString::from(format!(
            ".daas-put.{}.{id}.{nanos:x}.tmp",
            std::process::id()
        ));
        let fd = rustix::fs::openat(
            &r.dir,
            &*tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .ctx(format_args!(
            "cannot create a temporary file beside {}",
            r.path.display()
        ))?;
        let dir = Arc::new(r.dir);
        shared.register_temp(id, Arc::clone(&dir), tmp.clone());
        let file = File::from(fd);
        let writeback = if args.size > 2 * WRITEBACK_EVERY {
            Writeback::start(&file)
        } else {
            None
        };
        Ok(Self {
            id,
            dir,
            tmp,
            name: r.name,
            path: r.path,
            file,
            hasher: Sha256::new(),
            expected,
            size: args.size,
            received: 0,
            mode,
            owner,
            group,
            writeback,
            next_kick: WRITEBACK_EVERY,
        })
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.received == self.size
    }

    /// Writes a chunk; `Ok(true)` once all announced bytes are in.
    pub(crate) fn write(&mut self, data: &[u8]) -> Result<bool, OpError> {
        let n = data.len() as u64;
        if self.received + n > self.size {
            return Err(OpError::new(
                ErrorCode::SizeMismatch,
                format!("more data than the announced {} bytes", self.size),
            ));
        }
        self.file
            .write_all(data)
            .ctx(format_args!("writing {}", self.path.display()))?;
        self.hasher.update(data);
        self.received += n;
        if self.received >= self.next_kick {
            self.next_kick = self.received + WRITEBACK_EVERY;
            if let Some(w) = &self.writeback {
                w.kick();
            }
        }
        Ok(self.is_complete())
    }

    /// Verifies and commits on a thread of its own (fsync takes time); that
    /// thread answers.
    pub(crate) fn finish_in_thread(self, shared: Arc<Shared>) {
        let id = self.id;
        let spawned = thread::Builder::new().name(format!("put-{id}")).spawn({
            let shared = Arc::clone(&shared);
            move || {
                let r = self.commit(&shared);
                shared.finish(id, reply::<PutFile>(r));
            }
        });
        if let Err(e) = spawned {
            // `self` went with the closure and was dropped: the temporary file is
            // removed at the end of the session by the cleanup registry.
            shared.finish(
                id,
                Err(OpError::new(
                    ErrorCode::Internal,
                    format!("cannot start a thread: {e}"),
                )),
            );
        }
    }

    fn commit(mut self, shared: &Shared) -> Result<PutFileResult, OpError> {
        if let Some(w) = self.writeback.take() {
            w.stop();
        }
        let r = self.try_commit();
        if r.is_err() {
            let _ = rustix::fs::unlinkat(&*self.dir, &*self.tmp, AtFlags::empty());
        }
        shared.unregister_temp(self.id);
        r
    }

    fn try_commit(&self) -> Result<PutFileResult, OpError> {
        let digest: [u8; 32] = self.hasher.clone().finalize().into();
        if digest != self.expected {
            return Err(OpError::new(
                ErrorCode::ChecksumMismatch,
                format!(
                    "sha256 of the received data is {}, not {}",
                    hex::encode(digest),
                    hex::encode(self.expected)
                ),
            ));
        }
        let what = self.path.display();
        if self.owner.is_some() || self.group.is_some() {
            rustix::fs::fchown(
                &self.file,
                self.owner.map(Uid::from_raw),
                self.group.map(Gid::from_raw),
            )
            .ctx(format_args!("cannot set the owner of {what}"))?;
        }
        // After chown, which clears set-id bits.
        rustix::fs::fchmod(&self.file, Mode::from_raw_mode(self.mode))
            .ctx(format_args!("cannot set the mode of {what}"))?;
        self.file.sync_all().ctx(format_args!("fsync {what}"))?;
        rustix::fs::renameat(&*self.dir, &*self.tmp, &*self.dir, &*self.name)
            .ctx(format_args!("cannot rename into {what}"))?;
        let dirfd = rustix::fs::openat(
            &*self.dir,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ctx(format_args!("cannot open the directory of {what}"))?;
        rustix::fs::fsync(&dirfd).ctx(format_args!("fsync the directory of {what}"))?;
        Ok(PutFileResult {
            path: self.path.display().to_string(),
            size: self.size,
            sha256: hex::encode(digest),
        })
    }

    /// Drops the upload and its temporary file.
    pub(crate) fn abort(mut self, shared: &Shared) {
        if let Some(w) = self.writeback.take() {
            // Not joined: the reader must not wait for a running sync.
            drop(w.kick);
        }
        let _ = rustix::fs::unlinkat(&*self.dir, &*self.tmp, AtFlags::empty());
        shared.unregister_temp(self.id);
    }
}

/// `get_file`: an event with size and mode, the data, the sha256.
pub(crate) fn get_file(ctx: &Ctx, args: GetFile) -> Result<GetFileResult, OpError> {
    let r = resolve(
        &ctx.config().tree,
        &args.path,
        Resolve {
            follow_final: true,
            create_dirs: false,
        },
    )?;
    let what = r.path.display();
    if r.existing.is_none() {
        return Err(OpError::new(
            ErrorCode::NotFound,
            format!("{what} does not exist"),
        ));
    }
    let fd = rustix::fs::openat(
        &r.dir,
        &*r.name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK,
        Mode::empty(),
    )
    .ctx(format_args!("cannot open {what}"))?;
    let st = rustix::fs::fstat(&fd).ctx(format_args!("cannot stat {what}"))?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        return Err(OpError::invalid(format!("{what} is not a regular file")));
    }
    let size = u64::try_from(st.st_size).unwrap_or(0);
    if let Some(max) = args.max_size {
        if size > max {
            return Err(OpError::new(
                ErrorCode::TooLarge,
                format!("{what} has {size} bytes, more than max_size {max}"),
            ));
        }
    }
    ctx.event(Event::File {
        size,
        mode: st.st_mode & 0o7777,
    });
    let mut file = File::from(fd);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; BULK_CHUNK];
    let mut sent = 0u64;
    while sent < size {
        if ctx.is_cancelled() {
            return Err(OpError::cancelled());
        }
        let want = usize::try_from(size - sent)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = match file.read(&mut buf[..want]) {
            Ok(0) => {
                return Err(OpError::new(
                    ErrorCode::SizeMismatch,
                    format!("{what} shrank while being read ({sent} of {size} bytes)"),
                ))
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(OpError::io(format_args!("reading {what}"), &e)),
        };
        hasher.update(&buf[..n]);
        if !ctx.data(Stream::File, &buf[..n]) {
            return Err(OpError::new(ErrorCode::Io, "connection lost"));
        }
        sent += n as u64;
    }
    Ok(GetFileResult {
        size: sent,
        sha256: hex::encode(hasher.finalize()),
    })
}

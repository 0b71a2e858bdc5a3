//! A real TigerVNC `Xvnc` for the built-in engine's tests and the example
//! server: its RFB socket in a temp dir (or a loopback TCP port), killed and
//! reaped on drop.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether `program` is on PATH; prints a loud SKIP line when it is not.
pub fn have(program: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false);
    if !found {
        eprintln!("\n!!!!!!!! SKIP: `{program}` is not installed; this real-server test did not run !!!!!!!!\n");
    }
    found
}

/// A running Xvnc.
pub struct Xvnc {
    pub display: u16,
    /// The RFB unix socket.
    pub socket: PathBuf,
    /// The RFB TCP port on 127.0.0.1, if asked for.
    pub port: Option<u16>,
    children: Vec<Child>,
    pub dir: tempfile::TempDir,
}

impl Drop for Xvnc {
    fn drop(&mut self) {
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn free_display(seed: u64) -> Option<u16> {
    for i in 0..100u64 {
        let n = 240 + u16::try_from((seed + i * 7) % 100).unwrap_or(0);
        let lock = PathBuf::from(format!("/tmp/.X{n}-lock"));
        let live = match std::fs::read_to_string(&lock) {
            Ok(pid) => Path::new(&format!("/proc/{}", pid.trim())).exists(),
            Err(_) => PathBuf::from(format!("/tmp/.X11-unix/X{n}")).exists(),
        };
        if !live {
            return Some(n);
        }
    }
    None
}

impl Xvnc {
    /// Starts `Xvnc :N -geometry G -depth 24 -rfbunixpath SOCK` plus `extra`
    /// (e.g. `-SecurityTypes None`); with `tcp`, also on a loopback port.
    pub fn start(geometry: &str, extra: &[&str], tcp: bool) -> Result<Xvnc, String> {
        let mut last = String::from("no attempt");
        for attempt in 0..8u64 {
            let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
            let socket = dir.path().join("rfb.sock");
            let seed = u64::from(std::process::id()) * 31
                + attempt * 13
                + u64::from(Instant::now().elapsed().subsec_nanos());
            let display = free_display(seed).ok_or("no free X display")?;
            let port = if tcp {
                Some(
                    std::net::TcpListener::bind("127.0.0.1:0")
                        .map_err(|e| e.to_string())?
                        .local_addr()
                        .unwrap()
                        .port(),
                )
            } else {
                None
            };
            let mut cmd = Command::new("Xvnc");
            cmd.arg(format!(":{display}"))
                .args(["-geometry", geometry, "-depth", "24", "-nolisten", "tcp"])
                .arg("-rfbunixpath")
                .arg(&socket)
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            match port {
                Some(p) => cmd.args(["-rfbport", &p.to_string(), "-localhost"]),
                None => cmd.args(["-rfbport", "-1"]),
            };
            let child = cmd.spawn().map_err(|e| format!("starting Xvnc: {e}"))?;
            let mut x = Xvnc {
                display,
                socket,
                port,
                children: vec![child],
                dir,
            };
            let x_socket = PathBuf::from(format!("/tmp/.X11-unix/X{display}"));
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if matches!(x.children[0].try_wait(), Ok(Some(_))) {
                    last = format!("Xvnc :{display} exited early");
                    break;
                }
                let tcp_ready =
                    port.is_none_or(|p| std::net::TcpStream::connect(("127.0.0.1", p)).is_ok());
                if x.socket.exists() && x_socket.exists() && tcp_ready {
                    return Ok(x);
                }
                if Instant::now() > deadline {
                    last = format!("Xvnc :{display} did not start");
                    break;
                }
                std::thread::sleep(Duration::from_millis(30));
            }
        }
        Err(last)
    }

    /// Runs an X client to completion (`xsetroot -solid red`).
    pub fn run(&self, program: &str, args: &[&str]) -> Result<(), String> {
        let status = Command::new(program)
            .args(args)
            .env("DISPLAY", format!(":{}", self.display))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("{program}: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!("{program} {args:?}: {status}"))
        }
    }

    /// Writes a VNC password file for `-PasswordFile` (with `vncpasswd -f`).
    pub fn password_file(dir: &Path, password: &str) -> Result<PathBuf, String> {
        use std::io::Write;
        let mut child = Command::new("vncpasswd")
            .arg("-f")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("vncpasswd: {e}"))?;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(format!("{password}\n").as_bytes())
            .map_err(|e| e.to_string())?;
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        let path = dir.join("passwd");
        std::fs::write(&path, out.stdout).map_err(|e| e.to_string())?;
        Ok(path)
    }
}

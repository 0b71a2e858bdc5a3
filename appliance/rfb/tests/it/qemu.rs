//! QEMU's built-in VNC server showing the SeaBIOS screen: handshake and a
//! full update with ZRLE and with Hextile.

use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Result};
use daas_rfb::{Config, Encoding, Event};

use crate::harness::{have, random, wait_port, Conn, Procs};

const T: Duration = Duration::from_secs(60);

/// A free port of the form 5900 + D, which is how `-vnc` names ports.
fn free_vnc_display() -> Result<u16> {
    for _ in 0..50 {
        let d = 1000 + u16::try_from(random() % 20_000).unwrap_or(0);
        if TcpListener::bind((Ipv4Addr::LOCALHOST, 5900 + d)).is_ok() {
            return Ok(d);
        }
    }
    bail!("no free VNC display port");
}

#[test]
fn qemu_seabios_screen() -> Result<()> {
    if !have("qemu-system-x86_64") {
        return Ok(());
    }
    let mut procs = Procs::default();
    let d = free_vnc_display()?;
    procs.spawn(
        "qemu",
        Command::new("qemu-system-x86_64")
            .args([
                "-accel",
                "tcg",
                "-display",
                "none",
                "-nodefaults",
                "-vga",
                "std",
                "-m",
                "32",
            ])
            .args(["-vnc", &format!("127.0.0.1:{d}")]),
    )?;
    let port = 5900 + d;
    wait_port(&mut procs, port, T)?;
    for first in [Encoding::Zrle, Encoding::Hextile] {
        let config = Config {
            encodings: vec![
                first,
                Encoding::CopyRect,
                Encoding::Raw,
                Encoding::Cursor,
                Encoding::ExtendedDesktopSize,
                Encoding::DesktopSize,
            ],
            ..Config::default()
        };
        let mut conn = Conn::connect(port, config)?;
        conn.until_event(T, "Connected", |_, e| matches!(e, Event::Connected { .. }))?;
        // SeaBIOS prints text: some pixels are not black.
        conn.until(T, "the BIOS text", |c| {
            c.width() >= 640
                && c.height() >= 400
                && c.pixels().iter().filter(|&&p| p != 0).count() > 200
        })?;
        let stats = conn.client.stats();
        match first {
            Encoding::Zrle => assert!(stats.zrle_rects > 0, "{stats:?}"),
            _ => assert!(
                stats.hextile_rects > 0 && stats.zrle_rects == 0,
                "{stats:?}"
            ),
        }
    }
    Ok(())
}

//! x11vnc (libvncserver) serving an Xvnc display: handshake and full
//! updates with ZRLE and with Hextile.

use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use daas_rfb::{Config, Encoding, Event};

use crate::harness::{count, free_port, have, start_xvnc, wait_port, x_run, Conn, Procs};

const RED: u32 = 0x00ff_0000;
const T: Duration = Duration::from_secs(30);

#[test]
fn x11vnc_zrle_and_hextile() -> Result<()> {
    if !have("Xvnc") || !have("x11vnc") || !have("xsetroot") {
        return Ok(());
    }
    let mut procs = Procs::default();
    let x = start_xvnc(&mut procs, &["-SecurityTypes", "None"])?;
    let port = free_port()?;
    procs.spawn(
        "x11vnc",
        Command::new("x11vnc")
            .args(["-display", &format!(":{}", x.display)])
            .args(["-rfbport", &port.to_string()])
            .args(["-localhost", "-nopw", "-forever", "-shared", "-quiet"]),
    )?;
    wait_port(&mut procs, port, T)?;
    x_run(x.display, "xsetroot", &["-solid", "red"])?;
    for first in [Encoding::Zrle, Encoding::Hextile] {
        let config = Config {
            encodings: vec![
                first,
                Encoding::CopyRect,
                Encoding::Raw,
                Encoding::Cursor,
                Encoding::DesktopSize,
                Encoding::LastRect,
            ],
            ..Config::default()
        };
        let mut conn = Conn::connect(port, config)?;
        let Event::Connected { width, height, .. } =
            conn.until_event(T, "Connected", |_, e| matches!(e, Event::Connected { .. }))?
        else {
            unreachable!()
        };
        assert_eq!((width, height), (800, 600));
        conn.until(T, "a red screen", |c| count(c, RED) == 800 * 600)?;
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

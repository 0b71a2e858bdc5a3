//! TigerVNC Xvnc: handshake (None, VncAuth), encodings, resize, keys,
//! UTF-8 and Latin-1 clipboard.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use daas_rfb::{vnc_password_file, Config, DesktopSizeStatus, Encoding, Event, RfbError};

use crate::harness::{count, have, start_xvnc, x_run, Conn, Procs};

const RED: u32 = 0x00ff_0000;
const T: Duration = Duration::from_secs(20);

fn encodings(first: &[Encoding]) -> Vec<Encoding> {
    let mut v = first.to_vec();
    v.extend([
        Encoding::Cursor,
        Encoding::ExtendedDesktopSize,
        Encoding::DesktopSize,
        Encoding::LastRect,
        Encoding::ExtendedClipboard,
    ]);
    v
}

/// Connects, waits for the first full update, paints the root red and
/// waits until every pixel is red.
fn red_screen(display: u16, port: u16, config: Config) -> Result<Conn> {
    let mut conn = Conn::connect(port, config)?;
    let connected =
        conn.until_event(T, "Connected", |_, e| matches!(e, Event::Connected { .. }))?;
    let Event::Connected { width, height, .. } = connected else {
        unreachable!()
    };
    assert_eq!((width, height), (800, 600));
    conn.until_event(T, "first update", |_, e| *e == Event::UpdateEnd)?;
    x_run(display, "xsetroot", &["-solid", "red"])?;
    conn.until(T, "a red screen", |c| count(c, RED) == 800 * 600)?;
    Ok(conn)
}

#[test]
fn xvnc_none_zrle_red_screen() -> Result<()> {
    if !have("Xvnc") || !have("xsetroot") {
        return Ok(());
    }
    let mut procs = Procs::default();
    let x = start_xvnc(&mut procs, &["-SecurityTypes", "None"])?;
    let conn = red_screen(x.display, x.port, Config::default())?;
    let stats = conn.client.stats();
    assert!(stats.zrle_rects > 0, "{stats:?}");
    assert_eq!(stats.raw_rects + stats.hextile_rects, 0, "{stats:?}");
    // A solid screen arrives as solid ZRLE tiles: Fill events.
    assert!(
        conn.log
            .iter()
            .any(|e| matches!(e, Event::Fill { color: RED, .. })),
        "no red Fill event"
    );
    // The server sent a cursor and its screen layout.
    assert!(conn.client.can_resize());
    assert!(!conn.client.screens().is_empty());
    Ok(())
}

#[test]
fn xvnc_hextile_and_raw() -> Result<()> {
    if !have("Xvnc") || !have("xsetroot") {
        return Ok(());
    }
    for (first, check) in [
        (
            Encoding::Hextile,
            (|s: daas_rfb::Stats| s.hextile_rects > 0 && s.zrle_rects == 0)
                as fn(daas_rfb::Stats) -> bool,
        ),
        (Encoding::Raw, |s| {
            s.raw_rects > 0 && s.zrle_rects + s.hextile_rects == 0
        }),
    ] {
        let mut procs = Procs::default();
        let x = start_xvnc(&mut procs, &["-SecurityTypes", "None"])?;
        let config = Config {
            encodings: encodings(&[first, Encoding::CopyRect]),
            ..Config::default()
        };
        let conn = red_screen(x.display, x.port, config)?;
        let stats = conn.client.stats();
        assert!(check(stats), "{first:?}: {stats:?}");
    }
    Ok(())
}

#[test]
fn password_file_matches_vncpasswd() -> Result<()> {
    if !have("vncpasswd") {
        return Ok(());
    }
    for password in ["pw", "password", "s3cret-pw", "exactly8", "Grüße!"] {
        let mut child = Command::new("vncpasswd")
            .arg("-f")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(password.as_bytes())?;
        let out = child.wait_with_output()?;
        assert!(out.status.success(), "vncpasswd -f failed for {password:?}");
        assert_eq!(out.stdout, vnc_password_file(password), "{password:?}");
    }
    Ok(())
}

#[test]
fn xvnc_vnc_auth() -> Result<()> {
    if !have("Xvnc") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("passwd");
    std::fs::write(&file, vnc_password_file("s3cret-pw"))?;
    let mut procs = Procs::default();
    let file_arg = file.to_str().context("path")?;
    let x = start_xvnc(
        &mut procs,
        &["-SecurityTypes", "VncAuth", "-PasswordFile", file_arg],
    )?;

    // Right password (only the first 8 bytes count: "s3cret-p").
    let config = Config {
        password: Some("s3cret-pXXX".into()),
        ..Config::default()
    };
    let mut conn = Conn::connect(x.port, config)?;
    conn.until_event(T, "Connected", |_, e| matches!(e, Event::Connected { .. }))?;
    conn.until_event(T, "first update", |_, e| *e == Event::UpdateEnd)?;
    assert_eq!((conn.client.width(), conn.client.height()), (800, 600));

    // Wrong password.
    let config = Config {
        password: Some("wrong".into()),
        ..Config::default()
    };
    let mut conn = Conn::connect(x.port, config)?;
    let err = conn.until_failure(T);
    let rfb = err.downcast_ref::<RfbError>();
    assert!(
        matches!(rfb, Some(RfbError::AuthFailed { reason: Some(_) })),
        "{err:?}"
    );

    // No password.
    let mut conn = Conn::connect(x.port, Config::default())?;
    let err = conn.until_failure(T);
    assert!(
        matches!(
            err.downcast_ref::<RfbError>(),
            Some(RfbError::PasswordRequired)
        ),
        "{err:?}"
    );
    Ok(())
}

#[test]
fn xvnc_set_desktop_size() -> Result<()> {
    if !have("Xvnc") {
        return Ok(());
    }
    let mut procs = Procs::default();
    let x = start_xvnc(&mut procs, &["-SecurityTypes", "None"])?;
    let mut conn = Conn::connect(x.port, Config::default())?;
    conn.until(T, "resize support", |c| c.can_resize())?;
    conn.client.set_desktop_size(1024, 768)?;
    conn.flush()?;
    conn.until_event(T, "DesktopSizeResult", |_, e| {
        matches!(e, Event::DesktopSizeResult(_))
    })?;
    let n = conn
        .log
        .iter()
        .position(|e| matches!(e, Event::DesktopSizeResult(_)))
        .context("result")?;
    assert_eq!(conn.log[n], Event::DesktopSizeResult(DesktopSizeStatus::Ok));
    assert_eq!(
        conn.log[n - 1],
        Event::Resize {
            width: 1024,
            height: 768
        }
    );
    assert_eq!((conn.client.width(), conn.client.height()), (1024, 768));
    assert_eq!(conn.client.pixels().len(), 1024 * 768);
    // Updates keep working at the new size.
    conn.until_event(T, "an update", |_, e| *e == Event::UpdateEnd)?;
    Ok(())
}

#[test]
fn xvnc_keys_into_xterm() -> Result<()> {
    if !have("Xvnc") || !have("xterm") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("typed");
    let mut procs = Procs::default();
    let x = start_xvnc(&mut procs, &["-SecurityTypes", "None"])?;
    let script = format!("read line; printf %s \"$line\" > '{}'", out.display());
    procs.spawn(
        "xterm",
        Command::new("xterm")
            .args([
                "-geometry",
                "60x10+0+0",
                "-bg",
                "white",
                "-fg",
                "black",
                "-e",
                "sh",
                "-c",
                &script,
            ])
            .env("DISPLAY", format!(":{}", x.display)),
    )?;
    let mut conn = Conn::connect(x.port, Config::default())?;
    // The xterm window shows up as white pixels.
    conn.until(T, "the xterm window", |c| count(c, 0x00ff_ffff) > 10_000)?;
    // Focus follows the pointer without a window manager.
    conn.client.pointer(0, 40, 40)?;
    for ch in "hello rfb 42".chars() {
        let keysym = u32::from(ch);
        conn.client.key(true, keysym)?;
        conn.client.key(false, keysym)?;
    }
    conn.client.key(true, 0xff0d)?;
    conn.client.key(false, 0xff0d)?;
    conn.flush()?;
    let deadline = Instant::now() + T;
    loop {
        if let Ok(text) = std::fs::read_to_string(&out) {
            if !text.is_empty() {
                assert_eq!(text, "hello rfb 42");
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!("xterm never received the typed line");
        }
        conn.pump_for(Duration::from_millis(100))?;
    }
}

/// `xclip -selection clipboard` owning `text` on `display`, kept in the
/// foreground (`-quiet`) so that `procs` ends it.
fn xclip_set(procs: &mut Procs, display: u16, text: &str) -> Result<()> {
    let mut child = Command::new("xclip")
        .args(["-quiet", "-selection", "clipboard", "-i"])
        .env("DISPLAY", format!(":{display}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    let child = procs.adopt("xclip -i", child);
    stdin.write_all(text.as_bytes())?;
    drop(stdin);
    if let Some(status) = child.try_wait()? {
        bail!("xclip -i exited: {status}");
    }
    Ok(())
}

/// Reads the CLIPBOARD with `xclip -o` while pumping the client, which
/// must answer the server's request for our text.
fn xclip_get(conn: &mut Conn, display: u16) -> Result<String> {
    let child = Command::new("xclip")
        .args(["-selection", "clipboard", "-o"])
        .env("DISPLAY", format!(":{display}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let out = conn.pump_while(child, T)?;
    Ok(String::from_utf8(out)?)
}

#[test]
fn xvnc_utf8_clipboard_round_trip() -> Result<()> {
    if !have("Xvnc") || !have("xclip") {
        return Ok(());
    }
    let mut procs = Procs::default();
    let x = start_xvnc(&mut procs, &["-SecurityTypes", "None"])?;
    let mut conn = Conn::connect(x.port, Config::default())?;
    conn.until(T, "extended clipboard", |c| c.has_extended_clipboard())?;

    // Server to client.
    let from_x = "Grüße — 日本 😀\nzweite Zeile";
    xclip_set(&mut procs, x.display, from_x)?;
    let got = conn.until_event(T, "ClipboardText", |_, e| {
        matches!(e, Event::ClipboardText(_))
    })?;
    assert_eq!(got, Event::ClipboardText(from_x.into()));

    // Client to server.
    let to_x = "Ünïcödé ✓ — 日本語 😀\nline two";
    conn.client.send_clipboard(to_x)?;
    conn.flush()?;
    conn.pump_for(Duration::from_millis(300))?;
    assert_eq!(xclip_get(&mut conn, x.display)?, to_x);
    Ok(())
}

#[test]
fn xvnc_latin1_clipboard_fallback() -> Result<()> {
    if !have("Xvnc") || !have("xclip") {
        return Ok(());
    }
    let mut procs = Procs::default();
    let x = start_xvnc(&mut procs, &["-SecurityTypes", "None"])?;
    let config = Config {
        encodings: vec![Encoding::Zrle, Encoding::Raw, Encoding::ExtendedDesktopSize],
        ..Config::default()
    };
    let mut conn = Conn::connect(x.port, config)?;
    conn.until_event(T, "first update", |_, e| *e == Event::UpdateEnd)?;
    assert!(!conn.client.has_extended_clipboard());

    xclip_set(&mut procs, x.display, "café crème")?;
    let got = conn.until_event(T, "ClipboardText", |_, e| {
        matches!(e, Event::ClipboardText(_))
    })?;
    assert_eq!(got, Event::ClipboardText("café crème".into()));

    // Characters outside Latin-1 are replaced by '?'.
    conn.client.send_clipboard("Grüße — 日本")?;
    conn.flush()?;
    conn.pump_for(Duration::from_millis(300))?;
    assert_eq!(xclip_get(&mut conn, x.display)?, "Grüße ? ??");
    Ok(())
}

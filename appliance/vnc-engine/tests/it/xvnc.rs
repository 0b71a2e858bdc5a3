//! The engine against TigerVNC Xvnc: drawing, typing, clipboard, resize,
//! flow control and VNC authentication.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use daas_guacamole::Status;
use daas_rfb::vnc_password_file;
use daas_vnc_engine::{EngineConfig, EngineError};

use crate::harness::{have, params, Browser, Xvnc, T};

const RED: u32 = 0x00ff_0000;

fn skip() -> bool {
    !(have("Xvnc") && have("xsetroot") && have("xwd"))
}

/// `size` comes first; the first frame shows exactly the server's screen;
/// a solid root arrives as fills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shows_the_desktop_exactly() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let x = Xvnc::start("1024x768", &["-SecurityTypes", "None"])?;
    let mut b = Browser::connect(&x, params(1024, 768), EngineConfig::default()).await?;
    b.until(T, "first frame", |b| !b.syncs.is_empty()).await?;
    let first = &b.log[0];
    assert_eq!(
        (first.opcode.as_str(), first.args.as_slice()),
        ("size", &["0".to_string(), "1024".into(), "768".into()][..])
    );
    // The browser's picture is the root window, pixel for pixel (the
    // default root weave is lossless content: PNG and fills).
    let (w, h, root) = x.root_pixels().await?;
    assert_eq!((w, h), (1024, 768));
    b.pump_for(Duration::from_millis(300)).await?;
    let diff = root.iter().zip(&b.pixels).filter(|(a, b)| a != b).count();
    assert_eq!(diff, 0, "pixels differ from xwd -root");
    assert!(
        b.images.get("image/png").copied().unwrap_or(0) > 0
            || b.stats
                .fill_count
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0
    );

    x.x("xsetroot", &["-solid", "#ff0000"]).await?;
    b.until(T, "a red screen", |b| b.count(RED) == 1024 * 768)
        .await?;
    assert!(b
        .log
        .iter()
        .any(|i| i.opcode == "cfill" && i.args[2..5] == ["255", "0", "0"]));
    // The engine is still running; the client leaving ends it cleanly.
    b.send("disconnect", &[]).await?;
    assert!(b.until_end(T).await?.is_ok());
    Ok(())
}

/// Keys typed into an xterm change the picture; moving windows and
/// scrolling use `copy`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_into_xterm_changes_the_picture() -> Result<()> {
    if skip() || !have("xterm") {
        return Ok(());
    }
    let mut x = Xvnc::start("1024x768", &["-SecurityTypes", "None"])?;
    x.x("xsetroot", &["-solid", "#0000ff"]).await?;
    let mut b = Browser::connect(&x, params(1024, 768), EngineConfig::default()).await?;
    b.until(T, "blue root", |b| b.count(0x0000_00ff) == 1024 * 768)
        .await?;
    x.x_spawn(
        "xterm",
        // +j: no jump scrolling, so each new line scrolls (XCopyArea).
        &[
            "+j",
            "-geometry",
            "80x24+0+0",
            "-bg",
            "white",
            "-fg",
            "black",
            "-e",
            "sh",
        ],
    )?;
    // The xterm appears (white background at its top-left corner).
    b.until(T, "the xterm", |b| b.pixel(30, 100) == Some(0x00ff_ffff))
        .await?;
    b.pump_for(Duration::from_millis(500)).await?;
    // Focus follows the pointer: put it over the xterm.
    b.send("mouse", &["100", "100", "0"]).await?;
    let before = b.pixels.clone();
    for ch in "echo hello".chars() {
        let keysym = u32::from(ch).to_string();
        b.send("key", &[&keysym, "1"]).await?;
        b.send("key", &[&keysym, "0"]).await?;
    }
    b.until(T, "typed text", |b| {
        b.pixels.iter().zip(&before).filter(|(a, b)| a != b).count() > 100
    })
    .await?;
    // Return, then many lines: the terminal scrolls with copies.
    b.send("key", &["65293", "1"]).await?;
    b.send("key", &["65293", "0"]).await?;
    // One line at a time, so that each scroll is its own CopyRect.
    let cmd = "for i in $(seq 1 40); do echo line $i; sleep 0.03; done";
    for ch in cmd.chars() {
        let keysym = u32::from(ch).to_string();
        b.send("key", &[&keysym, "1"]).await?;
        b.send("key", &[&keysym, "0"]).await?;
    }
    b.send("key", &["65293", "1"]).await?;
    b.send("key", &["65293", "0"]).await?;
    let scrolled = b
        .until(T, "scrolling with copy", |b| {
            b.log.iter().any(|i| i.opcode == "copy")
        })
        .await;
    if scrolled.is_err() {
        b.screenshot("typing_into_xterm")?;
    }
    scrolled?;
    // Once the shell is done, the picture matches the server's.
    let deadline = std::time::Instant::now() + T;
    loop {
        b.pump_for(Duration::from_millis(300)).await?;
        let (_, _, root) = x.root_pixels().await?;
        let diff = root.iter().zip(&b.pixels).filter(|(a, b)| a != b).count();
        if diff == 0 {
            break;
        }
        if std::time::Instant::now() > deadline {
            b.screenshot("typing_mismatch")?;
            panic!("{diff} pixels differ from xwd -root after typing");
        }
    }
    Ok(())
}

fn xclip_set(x: &mut Xvnc, text: &str) -> Result<()> {
    let mut child = Command::new("xclip")
        .args(["-quiet", "-selection", "clipboard", "-i"])
        .env("DISPLAY", format!(":{}", x.display))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut stdin = child.stdin.take().context("stdin")?;
    x.procs.adopt(child);
    stdin.write_all(text.as_bytes())?;
    Ok(())
}

/// Non-ASCII clipboard text survives both ways (Extended Clipboard).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clipboard_round_trip_utf8() -> Result<()> {
    if skip() || !have("xclip") {
        return Ok(());
    }
    let mut x = Xvnc::start("800x600", &["-SecurityTypes", "None"])?;
    let mut b = Browser::connect(&x, params(800, 600), EngineConfig::default()).await?;
    b.until(T, "first frame", |b| !b.syncs.is_empty()).await?;

    // Browser to X.
    let text = "Grüße — 日本 😀";
    let encoded = STANDARD.encode(text.as_bytes());
    // Split inside a multi-byte character: blobs are bytes.
    let (a, c) = text.as_bytes().split_at(3);
    b.send("clipboard", &["5", "text/plain"]).await?;
    b.send("blob", &["5", &STANDARD.encode(a)]).await?;
    b.send("blob", &["5", &STANDARD.encode(c)]).await?;
    b.send("end", &["5"]).await?;
    let _ = encoded;
    b.until(T, "acks", |b| {
        b.log
            .iter()
            .filter(|i| i.opcode == "ack" && i.args == ["5", "OK", "0"])
            .count()
            == 2
    })
    .await?;
    b.pump_for(Duration::from_millis(300)).await?;
    // xclip -o runs while the engine keeps serving the server.
    assert_eq!(
        x.x("xclip", &["-o", "-selection", "clipboard"]).await?,
        text
    );

    // X to browser.
    let back = "Ünïcödé ✓ — 日本語 😀\nzweite Zeile";
    xclip_set(&mut x, back)?;
    b.until(T, "clipboard stream", |b| {
        b.clipboard.iter().any(|t| t == back)
    })
    .await?;
    let open = b
        .log
        .iter()
        .find(|i| i.opcode == "clipboard")
        .context("clipboard instruction")?;
    assert_eq!(open.args[1], "text/plain");

    // A non-text clipboard stream is refused with an ack.
    b.send("clipboard", &["6", "image/png"]).await?;
    b.until(T, "refusal", |b| {
        b.log
            .iter()
            .any(|i| i.opcode == "ack" && i.args[0] == "6" && i.args[2] != "0")
    })
    .await?;
    Ok(())
}

fn screen_size(xdpyinfo: &str) -> Option<(u32, u32)> {
    let line = xdpyinfo.lines().find(|l| l.contains("dimensions:"))?;
    let dims = line.split_whitespace().nth(1)?;
    let (w, h) = dims.split_once('x')?;
    Some((w.parse().ok()?, h.parse().ok()?))
}

/// The browser's size at the start and a later `size` resize the desktop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browser_size_resizes_the_desktop() -> Result<()> {
    if skip() || !have("xdpyinfo") {
        return Ok(());
    }
    let x = Xvnc::start("1024x768", &["-SecurityTypes", "None"])?;
    let mut b = Browser::connect(&x, params(900, 700), EngineConfig::default()).await?;
    b.until(T, "initial resize", |b| (b.width, b.height) == (900, 700))
        .await?;
    assert_eq!(screen_size(&x.x("xdpyinfo", &[]).await?), Some((900, 700)));

    b.send("size", &["1200", "800", "96"]).await?;
    b.until(T, "resize", |b| (b.width, b.height) == (1200, 800))
        .await?;
    assert_eq!(screen_size(&x.x("xdpyinfo", &[]).await?), Some((1200, 800)));
    // After the resize the picture is whole and right.
    x.x("xsetroot", &["-solid", "#ff0000"]).await?;
    b.until(T, "red", |b| b.count(RED) == 1200 * 800).await?;

    // Nonsense sizes are ignored, and the session goes on.
    b.send("size", &["0", "0"]).await?;
    b.send("size", &["abc", "-5"]).await?;
    b.send("mouse", &["99999999999", "-1", "x"]).await?;
    b.send("key", &["notanumber", "1"]).await?;
    b.pump_for(Duration::from_millis(400)).await?;
    assert_eq!((b.width, b.height), (1200, 800));
    x.x("xsetroot", &["-solid", "#00ff00"]).await?;
    b.until(T, "green", |b| b.count(0x0000_ff00) == 1200 * 800)
        .await?;
    Ok(())
}

/// Unanswered frames stay within the limit while the screen keeps
/// changing; answering them lets the newest picture through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_control_bounds_frames_in_flight() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let x = Xvnc::start("640x480", &["-SecurityTypes", "None"])?;
    let cfg = EngineConfig {
        max_frames_in_flight: 2,
        ..EngineConfig::default()
    };
    let mut b = Browser::connect(&x, params(640, 480), cfg).await?;
    b.auto_ack = false;
    b.until(T, "first frame", |b| !b.syncs.is_empty()).await?;
    let colors = [
        "#ff0000", "#00ff00", "#0000ff", "#ffff00", "#00ffff", "#ff00ff",
    ];
    for _ in 0..3 {
        for c in colors {
            x.x("xsetroot", &["-solid", c]).await?;
            b.pump_for(Duration::from_millis(30)).await?;
        }
    }
    b.pump_for(Duration::from_millis(500)).await?;
    assert!(
        b.syncs.len() <= 2,
        "{} frames without answers",
        b.syncs.len()
    );
    let seen = b
        .stats
        .max_frames_in_flight_seen
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(seen <= 2, "{seen}");
    // The server's updates were still read meanwhile.
    assert!(
        b.stats
            .server_updates
            .load(std::sync::atomic::Ordering::Relaxed)
            > 3
    );

    // Answer: more frames come, and the last one shows the newest colour
    // (magenta), never an older one afterwards.
    b.auto_ack = true;
    b.ack_all().await?;
    b.until(T, "newest picture", |b| b.count(0x00ff_00ff) == 640 * 480)
        .await?;
    assert!(b.syncs.len() > 2);
    assert!(
        b.stats
            .last_rtt_micros
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    Ok(())
}

/// VNC Authentication with the right, a wrong and no password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vnc_auth() -> Result<()> {
    if skip() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("passwd");
    std::fs::write(&file, vnc_password_file("s3cret-pw"))?;
    let file = file.to_str().context("path")?.to_owned();
    let x = Xvnc::start(
        "640x480",
        &["-SecurityTypes", "VncAuth", "-PasswordFile", &file],
    )?;
    let ok = EngineConfig {
        password: Some("s3cret-pw".into()),
        name: "My desktop".into(),
        ..EngineConfig::default()
    };
    let mut b = Browser::connect(&x, params(640, 480), ok).await?;
    b.until(T, "first frame", |b| !b.syncs.is_empty()).await?;
    assert!(b
        .log
        .iter()
        .any(|i| i.opcode == "name" && i.args == ["My desktop"]));

    for password in [Some("wrong-pw"), None] {
        let cfg = EngineConfig {
            password: password.map(Into::into),
            ..EngineConfig::default()
        };
        let mut b = Browser::connect(&x, params(640, 480), cfg).await?;
        let err = b.until_end(T).await?.expect_err("auth must fail");
        assert!(matches!(err, EngineError::AuthFailed(_)), "{err:?}");
        assert_eq!(err.status(), Status::UpstreamError);
        assert!(b.syncs.is_empty());
    }
    Ok(())
}

/// x11vnc (libvncserver) in front of an Xvnc display: another server
/// implementation, without client-initiated resizing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x11vnc_shows_the_desktop() -> Result<()> {
    if skip() || !have("x11vnc") {
        return Ok(());
    }
    let mut x = Xvnc::start("800x600", &["-SecurityTypes", "None"])?;
    x.x("xsetroot", &["-solid", "#ff0000"]).await?;
    let dir = tempfile::tempdir()?;
    let sock = dir.path().join("x11vnc.sock");
    let display = format!(":{}", x.display);
    let sock_arg = sock.to_str().context("path")?.to_owned();
    x.x_spawn(
        "x11vnc",
        &[
            "-display",
            &display,
            "-unixsock",
            &sock_arg,
            "-rfbport",
            "0",
            "-nopw",
            "-forever",
            "-shared",
            "-quiet",
        ],
    )?;
    let deadline = std::time::Instant::now() + T;
    while !sock.exists() {
        anyhow::ensure!(std::time::Instant::now() < deadline, "x11vnc did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let server = tokio::net::UnixStream::connect(&sock).await?;
    let mut b = Browser::start(server, params(1024, 768), EngineConfig::default());
    b.until(T, "a red screen", |b| {
        (b.width, b.height) == (800, 600) && b.count(RED) == 800 * 600
    })
    .await?;
    // No resizing here: the request is dropped and the session goes on.
    b.send("size", &["1000", "700"]).await?;
    x.x("xsetroot", &["-solid", "#0000ff"]).await?;
    b.until(T, "a blue screen", |b| b.count(0x0000_00ff) == 800 * 600)
        .await?;
    assert_eq!((b.width, b.height), (800, 600));
    Ok(())
}

/// Characters outside ASCII typed as keysyms (Latin-1, legacy and Unicode
/// keysyms, as guacamole-common-js sends them for any keyboard layout)
/// reach an application as the right text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_non_ascii_reaches_the_application() -> Result<()> {
    if skip() || !have("xterm") {
        return Ok(());
    }
    let mut x = Xvnc::start("800x600", &["-SecurityTypes", "None"])?;
    x.x("xsetroot", &["-solid", "#0000ff"]).await?;
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("typed.txt");
    let script = format!("cat > '{}'", file.display());
    let display = format!(":{}", x.display);
    let child = Command::new("xterm")
        .args(["-u8", "-geometry", "80x24+0+0", "-e", "sh", "-c", &script])
        .env("DISPLAY", display)
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    x.procs.adopt(child);
    let mut b = Browser::connect(&x, params(800, 600), EngineConfig::default()).await?;
    b.until(T, "the xterm", |b| b.pixel(30, 100) == Some(0x00ff_ffff))
        .await?;
    b.send("mouse", &["100", "100", "0"]).await?;
    let text = "aü€ß日";
    let keysyms: Vec<u32> = text
        .chars()
        .map(|c| match c {
            '€' => 0x20ac,                             // EuroSign
            c if u32::from(c) < 0x100 => u32::from(c), // Latin-1
            c => 0x0100_0000 | u32::from(c),           // Unicode keysym
        })
        .chain([0xff0d]) // Return
        .collect();
    for k in keysyms {
        let k = k.to_string();
        b.send("key", &[&k, "1"]).await?;
        b.send("key", &[&k, "0"]).await?;
        b.pump_for(Duration::from_millis(30)).await?;
    }
    // Ctrl+D ends cat.
    b.send("key", &["65507", "1"]).await?;
    b.send("key", &["100", "1"]).await?;
    b.send("key", &["100", "0"]).await?;
    b.send("key", &["65507", "0"]).await?;
    let deadline = std::time::Instant::now() + T;
    loop {
        b.pump_for(Duration::from_millis(100)).await?;
        let got = std::fs::read_to_string(&file).unwrap_or_default();
        if got == format!("{text}\n") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "typed {got:?}, wanted {text:?}"
        );
    }
    Ok(())
}

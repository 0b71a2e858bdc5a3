//! `set_resolution` and the clipboard on a real Xvnc display.

use std::path::Path;

use daas_guest_proxy_wire::message::{
    ClipboardGet, ClipboardSet, Selection, SetKeyboardLayout, SetResolution,
};
use daas_guest_proxy_wire::ErrorCode;

use crate::harness::Proxy;
use crate::support::{skip, Xvnc, BIN};

#[test]
fn set_resolution_with_xrandr() {
    let Some(x) = Xvnc::start("set_resolution") else {
        return;
    };
    let mut p = crate::support::local(&[]);
    let r = p
        .call(SetResolution {
            display: x.display.clone(),
            width: 1024,
            height: 768,
            output: None,
        })
        .unwrap();
    assert_eq!((r.width, r.height), (1024, 768));
    // a size the server does not list: Xvnc takes it as a framebuffer size
    let r = p
        .call(SetResolution {
            display: x.display.clone(),
            width: 1111,
            height: 777,
            output: None,
        })
        .unwrap();
    assert_eq!((r.width, r.height), (1111, 777));
    let bad = |w, h, out: Option<&str>| SetResolution {
        display: x.display.clone(),
        width: w,
        height: h,
        output: out.map(str::to_string),
    };
    for req in [
        bad(0, 10, None),
        bad(10, 99_999, None),
        bad(800, 600, Some("VNC-0; reboot")),
    ] {
        assert_eq!(p.call(req).unwrap_err().code, ErrorCode::InvalidArgument);
    }
    assert_eq!(
        p.call(bad(800, 600, Some("NO-SUCH-OUTPUT")))
            .unwrap_err()
            .code,
        ErrorCode::NotFound
    );
    // a mode the output does not have
    assert_eq!(
        p.call(bad(777, 555, Some("VNC-0"))).unwrap_err().code,
        ErrorCode::CommandFailed
    );
    let r = p.call(bad(1280, 800, Some("VNC-0"))).unwrap();
    assert_eq!((r.width, r.height), (1280, 800));
}

fn clipboard_round_trip(p: &mut Proxy, display: &str, tool: &str) {
    let text = "héllo wörld 😀\nline two";
    for sel in [Selection::Clipboard, Selection::Primary] {
        let r = p
            .call(ClipboardSet {
                display: display.into(),
                text: text.into(),
                selection: sel,
            })
            .unwrap();
        assert_eq!(r.tool, tool);
        let r = p
            .call(ClipboardGet {
                display: display.into(),
                selection: sel,
            })
            .unwrap();
        assert_eq!(r.text.as_deref(), Some(text), "{tool} {sel:?}");
    }
}

#[test]
fn clipboard_with_xclip_then_xsel_then_neither() {
    let Some(x) = Xvnc::start("clipboard") else {
        return;
    };
    if !Path::new("/usr/bin/xclip").exists() || !Path::new("/usr/bin/xsel").exists() {
        skip("clipboard", "xclip and xsel are not both installed");
        return;
    }
    let mut p = crate::support::local(&[]);
    // nobody owns the selection yet
    let r = p
        .call(ClipboardGet {
            display: x.display.clone(),
            selection: Selection::Clipboard,
        })
        .unwrap();
    assert_eq!(r.text, None);
    clipboard_round_trip(&mut p, &x.display, "xclip");

    let only_xsel = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("/usr/bin/xsel", only_xsel.path().join("xsel")).unwrap();
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("serve").env("PATH", only_xsel.path());
    let mut p = Proxy::start(cmd);
    clipboard_round_trip(&mut p, &x.display, "xsel");

    let empty = tempfile::tempdir().unwrap();
    let mut cmd = std::process::Command::new(BIN);
    cmd.arg("serve").env("PATH", empty.path());
    let mut p = Proxy::start(cmd);
    let err = p
        .call(ClipboardSet {
            display: x.display.clone(),
            text: "x".into(),
            selection: Selection::Clipboard,
        })
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Unsupported);
    assert!(err.message.contains("xclip or xsel"), "{}", err.message);
    let err = p
        .call(SetKeyboardLayout {
            display: Some(x.display.clone()),
            layout: "us".into(),
            persist: false,
            ..Default::default()
        })
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Unsupported);
    assert!(err.message.contains("setxkbmap"));
    // a display that does not exist
    let err = p
        .call(ClipboardGet {
            display: ":4098".into(),
            selection: Selection::Clipboard,
        })
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::NotFound);
}

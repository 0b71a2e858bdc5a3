//! Operations on a local X display: keyboard layout, screen size,
//! clipboard. They run the guest's own X tools (`setxkbmap`, `xrandr`,
//! `xclip`/`xsel`) as root with the display owner's `XAUTHORITY`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use daas_guest_proxy_wire::message::{
    ClipboardGet, ClipboardGetResult, ClipboardSet, ClipboardSetResult, Selection,
    SetKeyboardLayout, SetKeyboardLayoutResult, SetResolution, SetResolutionResult,
};
use daas_guest_proxy_wire::ErrorCode;

use crate::accounts::{Accounts, User};
use crate::error::OpError;
use crate::fsutil::write_atomic;
use crate::serve::Ctx;
use crate::tools::{require_tool, Tool};

/// Where X servers put their sockets.
pub(crate) const X11_SOCKET_DIR: &str = "/tmp/.X11-unix";
/// Where the keyboard layout is persisted (Debian's keyboard-configuration,
/// read by X at start).
pub(crate) const KEYBOARD_FILE: &str = "/etc/default/keyboard";

const X_TOOL_TIMEOUT: Duration = Duration::from_secs(15);

/// The display number of `:N` or `:N.S` (local displays only).
pub(crate) fn parse_display(display: &str) -> Result<u32, OpError> {
    let bad = || {
        OpError::invalid(format!(
            "display {display:?} is not a local display such as \":0\""
        ))
    };
    let rest = display.strip_prefix(':').ok_or_else(bad)?;
    let (num, screen) = match rest.split_once('.') {
        Some((n, s)) => (n, Some(s)),
        None => (rest, None),
    };
    let digits = |s: &str| !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(num) || screen.is_some_and(|s| !digits(s)) {
        return Err(bad());
    }
    num.parse().map_err(|_| bad())
}

/// The X server's socket for a display, which must exist.
fn socket(display: &str) -> Result<PathBuf, OpError> {
    let n = parse_display(display)?;
    let sock = Path::new(X11_SOCKET_DIR).join(format!("X{n}"));
    if std::fs::symlink_metadata(&sock).is_err() {
        return Err(OpError::new(
            ErrorCode::NotFound,
            format!("no X display {display} (no socket {})", sock.display()),
        ));
    }
    Ok(sock)
}

/// `XAUTHORITY` candidates for a user.
fn xauthority_for(user: &User) -> Option<String> {
    let p = Path::new(&user.home).join(".Xauthority");
    p.is_file().then(|| p.display().to_string())
}

/// Environment for X clients on `display`: `DISPLAY` and, where one is
/// found, the display owner's `XAUTHORITY`.
pub(crate) fn x_env(display: &str) -> Result<Vec<(String, String)>, OpError> {
    let sock = socket(display)?;
    let mut env = vec![("DISPLAY".to_string(), display.to_string())];
    let acc = Accounts::load(Path::new("/"));
    let owner = std::fs::symlink_metadata(&sock).ok().map(|m| m.uid());
    let xauth = owner
        .and_then(|uid| acc.user_by_uid(uid))
        .and_then(xauthority_for)
        .or_else(|| acc.user_by_uid(0).and_then(xauthority_for));
    if let Some(x) = xauth {
        env.push(("XAUTHORITY".into(), x));
    }
    Ok(env)
}

/// XKB names: layouts, variants, models and options.
fn check_xkb(what: &str, v: &str) -> Result<(), OpError> {
    let ok = !v.is_empty()
        && v.len() <= 256
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_,:()+-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(OpError::invalid(format!(
            "{what} {v:?} is not a valid XKB name"
        )))
    }
}

pub(crate) fn set_keyboard_layout(
    _ctx: &Ctx,
    a: SetKeyboardLayout,
) -> Result<SetKeyboardLayoutResult, OpError> {
    check_xkb("layout", &a.layout)?;
    for (what, v) in [
        ("variant", &a.variant),
        ("model", &a.model),
        ("options", &a.options),
    ] {
        if let Some(v) = v {
            if !v.is_empty() {
                check_xkb(what, v)?;
            }
        }
    }
    if a.display.is_none() && !a.persist {
        return Err(OpError::invalid(
            "nothing to do: no display and persist is false",
        ));
    }
    let mut applied = false;
    if let Some(display) = &a.display {
        let env = x_env(display)?;
        let (_, setxkbmap) = require_tool(&["setxkbmap"], "set_keyboard_layout")?;
        let mut args = vec!["-layout", &a.layout];
        args.extend(["-variant", a.variant.as_deref().unwrap_or("")]);
        if let Some(m) = &a.model {
            args.extend(["-model", m]);
        }
        // `-option ""` clears the options in force before adding new ones.
        args.extend(["-option", ""]);
        if let Some(o) = a.options.as_deref().filter(|o| !o.is_empty()) {
            args.extend(["-option", o]);
        }
        let mut t = Tool::new(&setxkbmap, &args);
        t.env = env;
        t.timeout = X_TOOL_TIMEOUT;
        t.run_ok()?;
        applied = true;
    }
    let mut persisted_to = None;
    if a.persist {
        let path = Path::new(KEYBOARD_FILE);
        let old = std::fs::read_to_string(path).unwrap_or_default();
        let mut set = vec![
            ("XKBLAYOUT", a.layout.as_str()),
            ("XKBVARIANT", a.variant.as_deref().unwrap_or("")),
            ("XKBOPTIONS", a.options.as_deref().unwrap_or("")),
        ];
        if let Some(m) = &a.model {
            set.push(("XKBMODEL", m));
        } else if !old.contains("XKBMODEL=") {
            set.push(("XKBMODEL", "pc105"));
        }
        write_atomic(path, update_shell_vars(&old, &set).as_bytes(), 0o644)?;
        persisted_to = Some(path.display().to_string());
    }
    Ok(SetKeyboardLayoutResult {
        applied,
        persisted_to,
    })
}

/// Sets `KEY="value"` lines in a shell-style variables file, keeping every
/// other line; keys not present are appended.
pub(crate) fn update_shell_vars(old: &str, set: &[(&str, &str)]) -> String {
    let mut done = vec![false; set.len()];
    let mut out = String::new();
    for line in old.lines() {
        let key = line.split_once('=').map(|(k, _)| k.trim());
        match set.iter().position(|(k, _)| Some(*k) == key) {
            Some(i) if !done[i] => {
                out.push_str(&format!("{}=\"{}\"\n", set[i].0, set[i].1));
                done[i] = true;
            }
            Some(_) => {} // a repeated key: the first one now rules
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    for (i, (k, v)) in set.iter().enumerate() {
        if !done[i] {
            out.push_str(&format!("{k}=\"{v}\"\n"));
        }
    }
    out
}

pub(crate) fn set_resolution(_ctx: &Ctx, a: SetResolution) -> Result<SetResolutionResult, OpError> {
    for (what, v) in [("width", a.width), ("height", a.height)] {
        if !(1..=16384).contains(&v) {
            return Err(OpError::invalid(format!(
                "{what} {v} is not within 1..=16384"
            )));
        }
    }
    if let Some(o) = &a.output {
        let ok = !o.is_empty()
            && o.len() <= 64
            && o.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !ok {
            return Err(OpError::invalid(format!(
                "output {o:?} is not a valid xrandr output name"
            )));
        }
    }
    let env = x_env(&a.display)?;
    let (_, xrandr) = require_tool(&["xrandr"], "set_resolution")?;
    let size = format!("{}x{}", a.width, a.height);
    let run = |args: &[&str]| {
        let mut t = Tool::new(&xrandr, args);
        t.env = env.clone();
        t.timeout = X_TOOL_TIMEOUT;
        t.run_ok()
    };
    match &a.output {
        Some(o) => {
            // xrandr only warns about an unknown output and exits 0.
            let listed = run(&["-q"])?.stdout_text();
            if !listed
                .lines()
                .any(|l| l.split_whitespace().next() == Some(o.as_str()))
            {
                return Err(OpError::new(
                    ErrorCode::NotFound,
                    format!("display {} has no output {o:?}", a.display),
                ));
            }
            run(&["--output", o, "--mode", &size])?;
        }
        None => {
            // `-s` picks a listed size; servers such as Xvnc also take any
            // framebuffer size through `--fb`.
            if let Err(first) = run(&["-s", &size]) {
                run(&["--fb", &size]).map_err(|_| first)?;
            }
        }
    }
    let q = run(&["-q"])?;
    let (width, height) = parse_current_size(&q.stdout_text()).ok_or_else(|| {
        OpError::new(
            ErrorCode::CommandFailed,
            "xrandr -q did not report the current size",
        )
    })?;
    Ok(SetResolutionResult { width, height })
}

/// `Screen 0: minimum 32 x 32, current 1280 x 800, maximum ...`
pub(crate) fn parse_current_size(xrandr_q: &str) -> Option<(u32, u32)> {
    let line = xrandr_q.lines().find(|l| l.starts_with("Screen "))?;
    let cur = line
        .split(',')
        .find_map(|p| p.trim().strip_prefix("current "))?;
    let (w, h) = cur.split_once(" x ")?;
    Some((w.trim().parse().ok()?, h.trim().parse().ok()?))
}

fn selection_args(tool: &str, sel: Selection) -> &'static str {
    match (tool, sel) {
        ("xclip", Selection::Clipboard) => "clipboard",
        ("xclip", Selection::Primary) => "primary",
        (_, Selection::Clipboard) => "--clipboard",
        (_, Selection::Primary) => "--primary",
    }
}

pub(crate) fn clipboard_set(_ctx: &Ctx, a: ClipboardSet) -> Result<ClipboardSetResult, OpError> {
    let env = x_env(&a.display)?;
    let (name, path) = require_tool(&["xclip", "xsel"], "clipboard_set")?;
    let sel = selection_args(&name, a.selection);
    let args: Vec<&str> = if name == "xclip" {
        vec!["-display", &a.display, "-selection", sel, "-in"]
    } else {
        vec!["--display", &a.display, sel, "--input"]
    };
    let mut t = Tool::new(&path, &args);
    t.env = env;
    t.stdin = Some(a.text.into_bytes());
    // Both fork a process that serves the selection and keeps stdout.
    t.capture_stdout = false;
    t.timeout = X_TOOL_TIMEOUT;
    t.run_ok()?;
    Ok(ClipboardSetResult { tool: name })
}

pub(crate) fn clipboard_get(_ctx: &Ctx, a: ClipboardGet) -> Result<ClipboardGetResult, OpError> {
    let env = x_env(&a.display)?;
    let (name, path) = require_tool(&["xclip", "xsel"], "clipboard_get")?;
    let sel = selection_args(&name, a.selection);
    let args: Vec<&str> = if name == "xclip" {
        vec![
            "-display",
            &a.display,
            "-selection",
            sel,
            "-out",
            "-target",
            "UTF8_STRING",
        ]
    } else {
        vec!["--display", &a.display, sel, "--output"]
    };
    let mut t = Tool::new(&path, &args);
    t.env = env;
    t.timeout = X_TOOL_TIMEOUT;
    let out = t.run()?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        // xclip's answer when nobody owns the selection.
        if err.contains("not available") {
            return Ok(ClipboardGetResult {
                text: None,
                tool: name,
            });
        }
        return Err(OpError::new(
            ErrorCode::CommandFailed,
            format!("{name} failed ({}): {}", out.status, err.trim()),
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    Ok(ClipboardGetResult {
        text: (!text.is_empty()).then_some(text),
        tool: name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn displays() {
        assert_eq!(parse_display(":0").unwrap(), 0);
        assert_eq!(parse_display(":12.1").unwrap(), 12);
        for bad in ["0", ":", ":x", "host:0", ":0.", ":-1", ":1 ; rm", ":999999"] {
            assert!(parse_display(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keyboard_file() {
        let old = "# KEYBOARD CONFIGURATION FILE\nXKBMODEL=\"pc105\"\nXKBLAYOUT=\"us\"\nXKBVARIANT=\"\"\nBACKSPACE=\"guess\"\n";
        let new = update_shell_vars(
            old,
            &[
                ("XKBLAYOUT", "de"),
                ("XKBVARIANT", "nodeadkeys"),
                ("XKBOPTIONS", ""),
            ],
        );
        assert_eq!(
            new,
            "# KEYBOARD CONFIGURATION FILE\nXKBMODEL=\"pc105\"\nXKBLAYOUT=\"de\"\nXKBVARIANT=\"nodeadkeys\"\nBACKSPACE=\"guess\"\nXKBOPTIONS=\"\"\n"
        );
        assert_eq!(update_shell_vars("", &[("A", "b")]), "A=\"b\"\n");
        assert_eq!(update_shell_vars("A=1\nA=2\n", &[("A", "3")]), "A=\"3\"\n");
        assert!(check_xkb("layout", "us,de").is_ok());
        assert!(check_xkb("options", "grp:alt_shift_toggle,compose:ralt").is_ok());
        assert!(check_xkb("layout", "de\"; rm -rf /").is_err());
        assert!(check_xkb("layout", "").is_err());
    }

    #[test]
    fn xrandr_output() {
        let q = "Screen 0: minimum 32 x 32, current 1024 x 768, maximum 32768 x 32768\nVNC-0 connected primary 1024x768+0+0 0mm x 0mm\n";
        assert_eq!(parse_current_size(q), Some((1024, 768)));
        assert_eq!(parse_current_size("garbage"), None);
    }
}

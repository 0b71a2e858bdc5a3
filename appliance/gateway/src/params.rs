//! The display parameters the browser supplies in the tunnel URL.

use crate::TunnelError;

/// The display the browser asks for: all the browser supplies (where to
/// connect and with which secrets comes from the connect ticket instead).
/// The built-in engine's own type, so the tunnel hands it over unchanged.
pub use daas_vnc_engine::DisplayParams;

/// The size and resolution when the browser gives none: 1024×768 at 96 DPI.
pub const DEFAULT_DISPLAY: (u32, u32, u32) = (1024, 768, 96);

/// The most characters of a time zone name (the longest IANA name has 32).
pub(crate) const MAX_TIMEZONE_CHARS: usize = 64;
/// The most characters of one mimetype.
pub(crate) const MAX_MIMETYPE_CHARS: usize = 64;
/// The most mimetypes of one kind.
pub(crate) const MAX_MIMETYPES: usize = 16;
/// The largest width or height.
pub(crate) const MAX_DIMENSION: u32 = 8192;
/// The largest DPI.
pub(crate) const MAX_DPI: u32 = 1000;

/// Parsing [`DisplayParams`] from the tunnel URL's query.
///
/// `DisplayParams::from_query(&query)` with this trait in scope.
pub trait FromQuery: Sized {
    /// Reads `GUAC_WIDTH`, `GUAC_HEIGHT`, `GUAC_DPI`, `GUAC_TIMEZONE` and the
    /// repeated `GUAC_AUDIO`, `GUAC_VIDEO`, `GUAC_IMAGE` from percent-decoded
    /// query pairs, as guacamole-common-js's `Guacamole.Client.connect` sends
    /// them. Other names (the ticket) are ignored. A missing size or DPI is
    /// [`DEFAULT_DISPLAY`], missing mimetypes an empty list; out of bounds,
    /// malformed or repeated single values are
    /// [`TunnelError::InvalidParameter`].
    fn from_query(query: &[(String, String)]) -> Result<Self, TunnelError>;
}

impl FromQuery for DisplayParams {
    fn from_query(query: &[(String, String)]) -> Result<Self, TunnelError> {
        let mut width = None;
        let mut height = None;
        let mut dpi = None;
        let mut timezone = None;
        let (mut image, mut audio, mut video) = (Vec::new(), Vec::new(), Vec::new());
        for (name, value) in query {
            match name.as_str() {
                "GUAC_WIDTH" => set_once(
                    &mut width,
                    "GUAC_WIDTH",
                    number(value, "GUAC_WIDTH", MAX_DIMENSION)?,
                )?,
                "GUAC_HEIGHT" => set_once(
                    &mut height,
                    "GUAC_HEIGHT",
                    number(value, "GUAC_HEIGHT", MAX_DIMENSION)?,
                )?,
                "GUAC_DPI" => set_once(&mut dpi, "GUAC_DPI", number(value, "GUAC_DPI", MAX_DPI)?)?,
                "GUAC_TIMEZONE" => {
                    let tz = time_zone(value)?;
                    set_once(&mut timezone, "GUAC_TIMEZONE", tz)?;
                }
                "GUAC_IMAGE" => push_mimetype(&mut image, "GUAC_IMAGE", value)?,
                "GUAC_AUDIO" => push_mimetype(&mut audio, "GUAC_AUDIO", value)?,
                "GUAC_VIDEO" => push_mimetype(&mut video, "GUAC_VIDEO", value)?,
                _ => {}
            }
        }
        let (w, h, d) = DEFAULT_DISPLAY;
        Ok(DisplayParams {
            width: width.unwrap_or(w),
            height: height.unwrap_or(h),
            dpi: dpi.unwrap_or(d),
            timezone: timezone.flatten(),
            image,
            audio,
            video,
        })
    }
}

fn set_once<T>(slot: &mut Option<T>, name: &'static str, value: T) -> Result<(), TunnelError> {
    if slot.is_some() {
        return Err(TunnelError::InvalidParameter {
            name,
            reason: "given more than once",
        });
    }
    *slot = Some(value);
    Ok(())
}

fn number(value: &str, name: &'static str, max: u32) -> Result<u32, TunnelError> {
    let invalid = |reason| TunnelError::InvalidParameter { name, reason };
    if value.is_empty() || value.len() > 10 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid("not a decimal number"));
    }
    match value.parse::<u32>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(invalid("out of bounds")),
    }
}

/// An IANA name: letters, digits, `_ + - /`. Empty means none.
fn time_zone(value: &str) -> Result<Option<String>, TunnelError> {
    if value.is_empty() {
        return Ok(None);
    }
    if value.len() > MAX_TIMEZONE_CHARS {
        return Err(TunnelError::InvalidParameter {
            name: "GUAC_TIMEZONE",
            reason: "too long",
        });
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'-' | b'/'))
    {
        return Err(TunnelError::InvalidParameter {
            name: "GUAC_TIMEZONE",
            reason: "not a time zone name",
        });
    }
    Ok(Some(value.to_owned()))
}

/// A mimetype such as `image/webp` or `audio/L16;rate=44100,channels=2`:
/// printable ASCII without spaces, with a `/`.
fn push_mimetype(
    list: &mut Vec<String>,
    name: &'static str,
    value: &str,
) -> Result<(), TunnelError> {
    let invalid = |reason| TunnelError::InvalidParameter { name, reason };
    if list.len() >= MAX_MIMETYPES {
        return Err(invalid("too many mimetypes"));
    }
    if value.is_empty() || value.len() > MAX_MIMETYPE_CHARS {
        return Err(invalid("mimetype empty or too long"));
    }
    if !value.contains('/') || !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid("not a mimetype"));
    }
    if !list.iter().any(|m| m == value) {
        list.push(value.to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn check_err(pairs: &[(&str, &str)], name: &str) {
        match DisplayParams::from_query(&q(pairs)) {
            Err(TunnelError::InvalidParameter { name: n, .. }) => assert_eq!(n, name, "{pairs:?}"),
            other => panic!("{pairs:?}: expected an error on {name}, got {other:?}"),
        }
    }

    #[test]
    fn what_guacamole_common_js_sends() {
        let p = DisplayParams::from_query(&q(&[
            ("ticket", "abc"),
            ("GUAC_WIDTH", "1920"),
            ("GUAC_HEIGHT", "1080"),
            ("GUAC_DPI", "192"),
            ("GUAC_TIMEZONE", "America/Argentina/Buenos_Aires"),
            ("GUAC_AUDIO", "audio/L8"),
            ("GUAC_AUDIO", "audio/L16"),
            ("GUAC_IMAGE", "image/jpeg"),
            ("GUAC_IMAGE", "image/png"),
            ("GUAC_IMAGE", "image/webp"),
            ("GUAC_IMAGE", "image/png"),
        ]))
        .unwrap();
        assert_eq!(
            p,
            DisplayParams {
                width: 1920,
                height: 1080,
                dpi: 192,
                timezone: Some("America/Argentina/Buenos_Aires".into()),
                image: vec!["image/jpeg".into(), "image/png".into(), "image/webp".into()],
                audio: vec!["audio/L8".into(), "audio/L16".into()],
                video: vec![],
            }
        );
    }

    #[test]
    fn defaults() {
        let p = DisplayParams::from_query(&[]).unwrap();
        assert_eq!((p.width, p.height, p.dpi), DEFAULT_DISPLAY);
        assert!(
            p.timezone.is_none() && p.image.is_empty() && p.audio.is_empty() && p.video.is_empty()
        );
        let p = DisplayParams::from_query(&q(&[("GUAC_TIMEZONE", "")])).unwrap();
        assert_eq!(
            (p.width, p.height, p.dpi, p.timezone),
            (1024, 768, 96, None)
        );
    }

    #[test]
    fn bounds_and_forms() {
        for ok in ["1", "8192", "0001"] {
            DisplayParams::from_query(&q(&[("GUAC_WIDTH", ok)])).unwrap();
        }
        for bad in ["0", "8193", "", "-1", "+5", "1e3", "12345678901", "４"] {
            check_err(&[("GUAC_WIDTH", bad)], "GUAC_WIDTH");
            check_err(&[("GUAC_HEIGHT", bad)], "GUAC_HEIGHT");
        }
        check_err(&[("GUAC_DPI", "1001")], "GUAC_DPI");
        check_err(&[("GUAC_DPI", "0")], "GUAC_DPI");
        check_err(
            &[("GUAC_WIDTH", "800"), ("GUAC_WIDTH", "800")],
            "GUAC_WIDTH",
        );
        check_err(&[("GUAC_TIMEZONE", "Europe/Berlin;rm")], "GUAC_TIMEZONE");
        check_err(&[("GUAC_TIMEZONE", "Europe/Berlin\n")], "GUAC_TIMEZONE");
        check_err(&[("GUAC_TIMEZONE", &"A".repeat(65))], "GUAC_TIMEZONE");
        check_err(&[("GUAC_TIMEZONE", "Zürich")], "GUAC_TIMEZONE");
        check_err(&[("GUAC_IMAGE", "png")], "GUAC_IMAGE");
        check_err(&[("GUAC_IMAGE", "image/png x")], "GUAC_IMAGE");
        check_err(&[("GUAC_IMAGE", "")], "GUAC_IMAGE");
        check_err(
            &[("GUAC_VIDEO", &format!("video/{}", "x".repeat(64)))],
            "GUAC_VIDEO",
        );
        let many: Vec<(String, String)> = (0..17)
            .map(|i| ("GUAC_AUDIO".to_owned(), format!("audio/x{i}")))
            .collect();
        assert!(DisplayParams::from_query(&many).is_err());
        DisplayParams::from_query(&many[..16]).unwrap();
    }

    proptest::proptest! {
        /// Any query: never a panic, and what is accepted is within bounds.
        #[test]
        fn any_query_is_bounded(pairs in proptest::collection::vec(
            (
                proptest::sample::select(vec!["GUAC_WIDTH", "GUAC_HEIGHT", "GUAC_DPI", "GUAC_TIMEZONE", "GUAC_IMAGE", "GUAC_AUDIO", "GUAC_VIDEO", "ticket"]),
                proptest::prop_oneof![r"[0-9]{0,12}", r"\PC{0,80}", r"[a-z]{1,8}/[a-zA-Z0-9.;=,+-]{0,70}"],
            ),
            0..24,
        )) {
            let query: Vec<(String, String)> = pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            if let Ok(p) = DisplayParams::from_query(&query) {
                proptest::prop_assert!((1..=MAX_DIMENSION).contains(&p.width));
                proptest::prop_assert!((1..=MAX_DIMENSION).contains(&p.height));
                proptest::prop_assert!((1..=MAX_DPI).contains(&p.dpi));
                proptest::prop_assert!(p.timezone.as_ref().is_none_or(|t| t.len() <= MAX_TIMEZONE_CHARS && t.is_ascii()));
                for list in [&p.image, &p.audio, &p.video] {
                    proptest::prop_assert!(list.len() <= MAX_MIMETYPES);
                    proptest::prop_assert!(list.iter().all(|m| m.len() <= MAX_MIMETYPE_CHARS && m.bytes().all(|b| b.is_ascii_graphic())));
                }
            }
        }
    }
}

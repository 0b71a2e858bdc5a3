//! The DaaS web portal: the front end in `web/` (Preact, guacamole-common-js,
//! bundled by esbuild when this crate builds) embedded in the binary.
//!
//! The appliance's router serves [`page`] for every GET outside the API.
//! This crate knows nothing of HTTP servers: it hands out bytes and the
//! facts a server needs to send them (content type, entity tag, whether the
//! file may be cached forever, a gzipped copy, the security headers).
//!
//! Invariants:
//! - Files under `/assets/` have content hashes in their names and are
//!   [`Asset::immutable`]; `index.html` is not and names the current ones.
//! - The portal's own JavaScript and CSS (without guacamole-common-js, which
//!   is a chunk of its own loaded only by the desktop view) stay within
//!   [`OWN_GZIP_LIMIT`] bytes gzipped (checked by the build and a test).

/// An embedded file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Asset {
    /// The file.
    pub bytes: &'static [u8],
    /// The same, gzipped (for clients that accept gzip), if that is smaller.
    pub gzip: Option<&'static [u8]>,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its entity tag, quoted (a hash of the content).
    pub etag: &'static str,
    /// Whether the name carries the content hash, so it may be cached forever.
    pub immutable: bool,
}

mod generated {
    use super::Asset;
    include!(concat!(env!("OUT_DIR"), "/assets.rs"));
}

/// The most bytes the portal's own JavaScript and CSS may take gzipped.
pub const OWN_GZIP_LIMIT: usize = 150 * 1024;

/// The headers every portal page is served with. The Content Security Policy
/// allows only the appliance's own scripts, styles and connections (the
/// tunnel's WebSocket included), and images from `data:`/`blob:` URLs, which
/// guacamole-common-js draws from.
pub const SECURITY_HEADERS: &[(&str, &str)] = &[
    (
        "content-security-policy",
        "default-src 'self'; img-src 'self' data: blob:; connect-src 'self'; style-src 'self'; \
         frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'",
    ),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-resource-policy", "same-origin"),
];

/// The `Cache-Control` value for an asset.
pub fn cache_control(a: &Asset) -> &'static str {
    if a.immutable {
        "public, max-age=31536000, immutable"
    } else {
        "no-cache"
    }
}

/// The embedded file at `path` (`/index.html`, `/assets/main-….js`; `/`
/// is `index.html`). No `..`, no query.
pub fn asset(path: &str) -> Option<Asset> {
    let p = path.strip_prefix('/').unwrap_or(path);
    let p = if p.is_empty() { "index.html" } else { p };
    generated::FILES
        .iter()
        .find(|(name, _)| *name == p)
        .map(|(_, a)| *a)
}

/// The portal's `index.html`.
pub fn index() -> Asset {
    asset("/index.html").expect("the build always makes index.html")
}

/// What a GET of `path` (outside the API) serves: the embedded file, or
/// `index.html` for the paths the single-page app routes itself
/// (`/desktop/…`, `/admin/…`). A missing file under `/assets/` or with an
/// extension is `None` (a 404), so that an old page never gets HTML for a
/// script.
pub fn page(path: &str) -> Option<Asset> {
    if let Some(a) = asset(path) {
        return Some(a);
    }
    let last = path.rsplit('/').next().unwrap_or("");
    if path.starts_with("/assets/") || last.contains('.') {
        return None;
    }
    Some(index())
}

/// Bytes of the built front end, gzipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// The portal's own JavaScript and CSS.
    pub own_gzip: usize,
    /// guacamole-common-js (its own chunk).
    pub guacamole_gzip: usize,
}

/// The sizes measured when the front end was built.
pub fn sizes() -> Sizes {
    Sizes {
        own_gzip: generated::OWN_GZIP_BYTES,
        guacamole_gzip: generated::GUACAMOLE_GZIP_BYTES,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names_files_that_exist() {
        let html = std::str::from_utf8(index().bytes).unwrap();
        assert!(!index().immutable);
        assert!(index().content_type.starts_with("text/html"));
        let mut found = 0;
        for part in html.split('"').filter(|s| s.starts_with("/assets/")) {
            let a = asset(part).unwrap_or_else(|| panic!("index.html names {part}, not embedded"));
            assert!(a.immutable, "{part} should be cached forever");
            found += 1;
        }
        assert!(
            found >= 2,
            "index.html should load a script and a stylesheet: {html}"
        );
        assert_eq!(asset("/"), Some(index()));
    }

    #[test]
    fn the_spa_routes_fall_back_to_index_but_missing_files_do_not() {
        assert_eq!(page("/desktop/1234"), Some(index()));
        assert_eq!(page("/admin/baseimages"), Some(index()));
        assert_eq!(page("/assets/main-OLDHASH.js"), None);
        assert_eq!(page("/favicon.ico"), None);
        assert_eq!(asset("/../Cargo.toml"), None);
        assert_eq!(asset("/assets/../index.html"), None);
    }

    #[test]
    fn every_file_has_a_type_an_etag_and_a_smaller_gzip() {
        for (name, a) in generated::FILES {
            assert!(!a.content_type.is_empty(), "{name}");
            assert!(a.etag.starts_with('"') && a.etag.ends_with('"'), "{name}");
            if let Some(gz) = a.gzip {
                assert!(gz.len() < a.bytes.len(), "{name}");
                assert_eq!(&gz[..2], &[0x1f, 0x8b], "{name}: gzip magic");
            }
        }
    }

    #[test]
    fn the_portal_own_code_fits_the_budget() {
        let s = sizes();
        println!(
            "portal JS+CSS: {:.1} KiB gzipped (limit {} KiB); guacamole-common-js: {:.1} KiB gzipped",
            s.own_gzip as f64 / 1024.0,
            OWN_GZIP_LIMIT / 1024,
            s.guacamole_gzip as f64 / 1024.0
        );
        assert!(s.own_gzip > 0 && s.guacamole_gzip > 0);
        assert!(s.own_gzip <= OWN_GZIP_LIMIT);
    }
}

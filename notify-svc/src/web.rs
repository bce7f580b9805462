//! The web app and the operator console: static files compiled into the
//! binary (`static/`), so a notify-svc binary or image is the whole front end.
//!
//! * `GET /`, `GET /orders`, `GET /track/{id}`: the customer app, one HTML
//!   shell whose ES modules route in the browser (menu and cart, "my
//!   orders", the live tracker). `/track/<id>#token=<token>` is where
//!   order-svc's `tracking_url` points; the token stays in the fragment,
//!   which browsers never send.
//! * `GET /ops`: the operator console, read-only: it polls order-svc's
//!   `GET /api/v1/admin/overview` with the admin token the operator types
//!   (kept in `sessionStorage`, never in a URL).
//! * `GET /assets/{version}/{file}`: the stylesheet and the ES modules.
//!
//! No build step: the modules are plain ES modules, loaded by the browser as
//! they are (the HTML preloads them all, so there is no import waterfall).
//! No external resource of any kind: no CDN, no web font.
//!
//! **Caching.** The HTML is `no-cache` (revalidated on every load, with an
//! `ETag`) and names its assets under [`Web::version`], a hash of every
//! asset, so assets are `immutable` for a year and a new build has new URLs.
//! An asset asked for under another version (a page of the previous build
//! during a rolling update) is served too, but `no-cache`, so no cache keeps
//! it under a URL it does not belong to.
//!
//! **Configuration.** The HTML carries two `<meta>` values, filled in at
//! start-up: the order API's base URL (`ORDER_API_URL`; empty: same origin,
//! as behind the chart's Ingress) and the currency (`CURRENCY`). The
//! Content-Security-Policy allows scripts, styles and connections to this
//! origin only, plus the order API's origin for `fetch`.

use std::{collections::HashMap, sync::Arc};

use axum::{
    body::Bytes,
    extract::{Path, State, rejection::PathRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use crate::{
    Settings,
    api::{ApiError, AppState},
};

/// One file of the front end.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// Its name under `/assets/<version>/`.
    pub name: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its text.
    pub body: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_str!(concat!("../static/", $name)),
        }
    };
}

/// Every asset served under `/assets/<version>/`.
pub const ASSETS: &[Asset] = &[
    asset!("app.css", CSS),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("cart.js", JS),
    asset!("checkout.js", JS),
    asset!("dom.js", JS),
    asset!("menu.js", JS),
    asset!("money.js", JS),
    asset!("orders.js", JS),
    asset!("steps.js", JS),
    asset!("store.js", JS),
    asset!("tracker.js", JS),
    asset!("ops.js", JS),
];

/// The customer app's HTML template (`__ORDER_API__`, `__CURRENCY__` and
/// `__VERSION__` are filled in at start-up).
pub const APP_HTML: &str = include_str!("../static/index.html");

/// The operator console's HTML template (same placeholders).
pub const OPS_HTML: &str = include_str!("../static/ops.html");

/// How long a browser may keep an asset of the current version.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The front end, rendered once at start-up.
#[derive(Debug)]
pub struct Web {
    /// A hash of every asset: the path segment assets are served under.
    pub version: String,
    app: Page,
    ops: Page,
    assets: HashMap<&'static str, (Asset, HeaderValue)>,
    csp: HeaderValue,
}

/// A rendered HTML page.
#[derive(Debug)]
struct Page {
    body: Bytes,
    etag: HeaderValue,
}

impl Page {
    fn new(template: &str, settings: &Settings, version: &str) -> Self {
        let body = template
            .replace("__ORDER_API__", &escape_attribute(&settings.order_api_url))
            .replace("__CURRENCY__", &escape_attribute(&settings.currency))
            .replace("__VERSION__", version);
        Self {
            etag: etag(fnv1a(body.as_bytes())),
            body: Bytes::from(body),
        }
    }
}

impl Web {
    /// Renders the pages for `settings`.
    pub fn new(settings: &Settings) -> Arc<Self> {
        let version = format!(
            "{:016x}",
            ASSETS.iter().fold(FNV_OFFSET, |h, a| fnv1a_from(
                fnv1a_from(h, a.name.as_bytes()),
                a.body.as_bytes()
            ))
        );
        let connect = match settings.order_api_url.as_str() {
            "" => String::new(),
            url => origin_of(url).map(|o| format!(" {o}")).unwrap_or_default(),
        };
        // 'self' covers this origin's ws:/wss: too (the tracker's socket).
        let csp = format!(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'{connect}; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
        );
        Arc::new(Self {
            app: Page::new(APP_HTML, settings, &version),
            ops: Page::new(OPS_HTML, settings, &version),
            assets: ASSETS
                .iter()
                .map(|a| (a.name, (*a, etag(fnv1a(a.body.as_bytes())))))
                .collect(),
            csp: HeaderValue::from_str(&csp).unwrap_or_else(|_| {
                HeaderValue::from_static("default-src 'self'; frame-ancestors 'none'")
            }),
            version,
        })
    }

    fn html(&self, page: &Page, request: &HeaderMap) -> Response {
        let mut response = respond(
            request,
            page.body.clone(),
            HTML,
            &page.etag,
            HeaderValue::from_static("no-cache"),
        );
        let h = response.headers_mut();
        h.insert(header::CONTENT_SECURITY_POLICY, self.csp.clone());
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
        response
    }
}

/// The body, or `304 Not Modified` when the request already has this ETag.
fn respond(
    request: &HeaderMap,
    body: Bytes,
    content_type: &'static str,
    etag: &HeaderValue,
    cache_control: HeaderValue,
) -> Response {
    let fresh = request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.trim_start_matches("W/").as_bytes() == etag.as_bytes()
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            body,
        )
            .into_response()
    };
    let h = response.headers_mut();
    h.insert(header::ETAG, etag.clone());
    h.insert(header::CACHE_CONTROL, cache_control);
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// `scheme://host[:port]` of an http(s) URL, if it is one.
pub fn origin_of(url: &str) -> Option<String> {
    let u = url::Url::parse(url).ok()?;
    (matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .then(|| u.origin().ascii_serialization())
}

/// `value`, safe inside a double-quoted HTML attribute.
fn escape_attribute(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a, 64 bits: a content hash for cache validators (not security).
fn fnv1a_from(mut hash: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_from(FNV_OFFSET, bytes)
}

fn etag(hash: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{hash:016x}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("\"0\""))
}

/// The web app: menu, cart and checkout.
#[utoipa::path(get, path = "/", tag = "web",
    responses(
        (status = 200, description = "The web app (HTML; `no-cache`, with an ETag and a Content-Security-Policy)", content_type = "text/html", body = String),
        (status = 304, description = "Not modified (`If-None-Match`)"),
    ))]
pub async fn page(State(st): State<AppState>, headers: HeaderMap) -> Response {
    st.web.html(&st.web.app, &headers)
}

/// The web app's "my orders" view (the same page; the browser routes).
#[utoipa::path(get, path = "/orders", tag = "web",
    responses(
        (status = 200, description = "The web app (HTML)", content_type = "text/html", body = String),
        (status = 304, description = "Not modified (`If-None-Match`)"),
    ))]
pub async fn orders_page(State(st): State<AppState>, headers: HeaderMap) -> Response {
    st.web.html(&st.web.app, &headers)
}

/// The tracker of one order: where an order's `tracking_url` points
/// (`/track/<id>#token=<token>`; the token stays in the fragment, which
/// browsers never send). The same page as `/`; it opens the order's live
/// tracker.
#[utoipa::path(get, path = "/track/{id}", tag = "web",
    params(("id" = String, Path, description = "Order id")),
    responses(
        (status = 200, description = "The web app (HTML)", content_type = "text/html", body = String),
        (status = 304, description = "Not modified (`If-None-Match`)"),
    ))]
pub async fn track_page(State(st): State<AppState>, headers: HeaderMap) -> Response {
    st.web.html(&st.web.app, &headers)
}

/// The operator console: streams, consumer groups, dead letters, stock and
/// recent orders, read live from order-svc's admin overview with the admin
/// token the operator enters.
#[utoipa::path(get, path = "/ops", tag = "web",
    responses(
        (status = 200, description = "The operator console (HTML)", content_type = "text/html", body = String),
        (status = 304, description = "Not modified (`If-None-Match`)"),
    ))]
pub async fn ops_page(State(st): State<AppState>, headers: HeaderMap) -> Response {
    st.web.html(&st.web.ops, &headers)
}

/// A stylesheet or ES module of the pages. Under the current version it is
/// `immutable`; under any other, `no-cache`.
#[utoipa::path(get, path = "/assets/{version}/{file}", tag = "web",
    params(
        ("version" = String, Path, description = "The build's asset version (the pages name it)"),
        ("file" = String, Path, description = "File name, e.g. `app.js`"),
    ),
    responses(
        (status = 200, description = "The file", content(
            (String = "text/javascript"),
            (String = "text/css"),
        )),
        (status = 304, description = "Not modified (`If-None-Match`)"),
        (status = 404, description = "`not_found`: no such file", body = common::http::ErrorBody),
    ))]
pub async fn asset(
    State(st): State<AppState>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Ok(Path((version, file))) = path else {
        return Err(ApiError::NoSuchFile);
    };
    let (asset, etag) = st
        .web
        .assets
        .get(file.as_str())
        .ok_or(ApiError::NoSuchFile)?;
    let cache = if version == st.web.version {
        HeaderValue::from_static(IMMUTABLE)
    } else {
        HeaderValue::from_static("no-cache")
    };
    Ok(respond(
        &headers,
        Bytes::from_static(asset.body.as_bytes()),
        asset.content_type,
        etag,
        cache,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_escaped_and_origins_parsed() {
        assert_eq!(
            escape_attribute(r#"http://x/"><script>'"#),
            "http://x/&quot;&gt;&lt;script&gt;&#39;"
        );
        assert_eq!(
            origin_of("http://127.0.0.1:8001").as_deref(),
            Some("http://127.0.0.1:8001")
        );
        assert_eq!(
            origin_of("https://api.example.com/foodchain").as_deref(),
            Some("https://api.example.com")
        );
        assert_eq!(origin_of("javascript:alert(1)"), None);
        assert_eq!(origin_of("127.0.0.1:8001"), None);
    }

    #[test]
    fn every_page_names_only_assets_that_exist() {
        for page in [APP_HTML, OPS_HTML] {
            for (i, _) in page.match_indices("/assets/__VERSION__/") {
                let rest = &page[i + "/assets/__VERSION__/".len()..];
                let name = &rest[..rest.find('"').unwrap_or(0)];
                assert!(
                    ASSETS.iter().any(|a| a.name == name),
                    "a page links {name}, which is not served"
                );
            }
        }
        // Every module a module imports is served too.
        for a in ASSETS {
            for (i, _) in a.body.match_indices("from \"./") {
                let rest = &a.body[i + "from \"./".len()..];
                let name = &rest[..rest.find('"').unwrap_or(0)];
                assert!(
                    ASSETS.iter().any(|b| b.name == name),
                    "{} imports {name}, which is not served",
                    a.name
                );
            }
        }
    }

    #[test]
    fn no_page_loads_anything_from_elsewhere() {
        for (name, text) in ASSETS
            .iter()
            .map(|a| (a.name, a.body))
            .chain([("index.html", APP_HTML), ("ops.html", OPS_HTML)])
        {
            for needle in [
                "http://",
                "https://",
                "//cdn",
                "@import",
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
            ] {
                assert!(!text.contains(needle), "{name} contains {needle}");
            }
        }
    }
}

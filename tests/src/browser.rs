//! A real browser for the tests: headless Chromium driven over the W3C
//! WebDriver protocol by `chromedriver`.
//!
//! One `chromedriver` per test process, started on a free port on first use
//! (as a [`testkit::Server`]: killed with the test process, however it
//! ends). Each [`Browser`] is a WebDriver session, a Chromium of its own
//! with a fresh profile directory, closed when the browser is closed or
//! dropped (even by a failing test). Debian's `chromium` and
//! `chromium-driver` packages provide both (`scripts/infra.sh deps`);
//! `CHROME_BIN` and `CHROMEDRIVER` override where they are.
//!
//! WebDriver is JSON over HTTP, so this is a thin client on the `reqwest`
//! the harness already uses. Waits are for conditions ([`Browser::wait_js`]
//! polls a script until it returns something), never fixed sleeps. Every
//! test keeps screenshots under `target/browser/<test>/`, for a person to
//! look at; a failed wait takes one of the moment it gave up.

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use serde_json::{Value, json};
use tokio::sync::OnceCell;

/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How `chromedriver` is started (see [`testkit::Launch`]).
#[derive(Debug, Clone)]
pub struct Chromedriver {
    binary: PathBuf,
}

impl testkit::Launch for Chromedriver {
    const NAME: &'static str = "chromedriver";
    const START_TIMEOUT: Duration = Duration::from_secs(20);
    const STOP_GRACE: Duration = Duration::from_secs(5);

    fn command(&self, port: u16, _dir: &Path) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .arg("--log-level=WARNING");
        cmd
    }

    async fn ready(&self, port: u16) -> bool {
        let Ok(r) = reqwest::get(format!("http://127.0.0.1:{port}/status")).await else {
            return false;
        };
        r.json::<Value>()
            .await
            .is_ok_and(|v| v["value"]["ready"] == true)
    }
}

fn find_binary(var: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|d| names.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
}

/// The test process' chromedriver, started on first use.
async fn driver() -> &'static testkit::Server<Chromedriver> {
    static DRIVER: OnceCell<testkit::Server<Chromedriver>> = OnceCell::const_new();
    DRIVER
        .get_or_init(|| async {
            let binary = find_binary("CHROMEDRIVER", &["chromedriver"]).expect(
                "chromedriver not found: install Debian's chromium and chromium-driver (`scripts/infra.sh deps` does)",
            );
            testkit::Server::start_with(Chromedriver { binary }).await
        })
        .await
}

/// The directory screenshots of `test` go to: `target/browser/<test>/`.
pub fn screenshot_dir(test: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    target.join("browser").join(test)
}

/// What kind of window.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// A phone: a 375 × 812 CSS-pixel viewport (device pixel ratio 2)
    /// instead of a 1280 × 900 window.
    pub phone: bool,
}

/// One browser session; see the module docs.
#[derive(Debug)]
pub struct Browser {
    http: reqwest::Client,
    /// `http://127.0.0.1:<driver>/session/<id>`.
    base: String,
    driver_port: u16,
    session: String,
    profile: PathBuf,
    shots: PathBuf,
    shot: AtomicU32,
    closed: bool,
}

/// A failed WebDriver command.
#[derive(Debug)]
pub struct WebDriverError(pub String);

impl std::fmt::Display for WebDriverError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Browser {
    /// A new browser for `test` (the name of its screenshot directory, which
    /// is emptied).
    pub async fn start(test: &str, options: Options) -> Self {
        let driver = driver().await;
        let chrome = find_binary(
            "CHROME_BIN",
            &["chromium", "chromium-browser", "google-chrome"],
        )
        .expect("chromium not found: install Debian's chromium (`scripts/infra.sh deps` does)");
        static PROFILES: AtomicU32 = AtomicU32::new(0);
        let profile = std::env::temp_dir().join(format!(
            "foodchain-browser-{}-{}",
            std::process::id(),
            PROFILES.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(&profile).expect("a profile directory");
        let mut args = vec![
            "--headless=new".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--disable-extensions".into(),
            "--no-first-run".into(),
            "--no-default-browser-check".into(),
            "--lang=en-US".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        let mut chrome_options = json!({
            "binary": chrome,
            "prefs": {"intl.accept_languages": "en-US"},
        });
        if options.phone {
            chrome_options["mobileEmulation"] =
                json!({"deviceMetrics": {"width": 375, "height": 812, "pixelRatio": 2.0}});
            args.push("--window-size=420,900".into());
        } else {
            args.push("--window-size=1280,900".into());
        }
        chrome_options["args"] = json!(args);
        let http = reqwest::Client::new();
        let port = driver.port();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": chrome_options,
            "goog:loggingPrefs": {"browser": "ALL"},
            "timeouts": {"implicit": 0, "pageLoad": 30000, "script": 30000},
            "unhandledPromptBehavior": "dismiss",
        }}});
        let r: Value = http
            .post(format!("http://127.0.0.1:{port}/session"))
            .json(&caps)
            .send()
            .await
            .expect("chromedriver answers")
            .json()
            .await
            .expect("a JSON answer");
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver could not start chromium: {r}"))
            .to_owned();
        let shots = screenshot_dir(test);
        let _ = std::fs::remove_dir_all(&shots);
        std::fs::create_dir_all(&shots).expect("a screenshot directory");
        Self {
            http,
            base: format!("http://127.0.0.1:{port}/session/{session}"),
            driver_port: port,
            session,
            profile,
            shots,
            shot: AtomicU32::new(0),
            closed: false,
        }
    }

    /// One WebDriver command; its `value`.
    pub async fn command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, WebDriverError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method.clone(), &url);
        if let Some(b) = body {
            req = req.json(&b);
        } else if method == reqwest::Method::POST {
            req = req.json(&json!({}));
        }
        let r = req
            .send()
            .await
            .map_err(|e| WebDriverError(format!("{method} {path}: {e}")))?;
        let status = r.status();
        let v: Value = r
            .json()
            .await
            .map_err(|e| WebDriverError(format!("{method} {path}: {e}")))?;
        if !status.is_success() {
            return Err(WebDriverError(format!(
                "{method} {path}: {} {}",
                v["value"]["error"], v["value"]["message"]
            )));
        }
        Ok(v["value"].clone())
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.command(reqwest::Method::POST, path, Some(body))
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Opens `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    /// Reloads the page.
    pub async fn reload(&self) {
        self.post("/refresh", json!({})).await;
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) in the
    /// page; its return value.
    pub async fn exec(&self, script: &str, args: &[Value]) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
            .await
    }

    /// Polls `script` until it returns something other than `null`, `false`
    /// or nothing; returns that. On timeout: a screenshot, then a panic
    /// naming `what` and showing the page's text.
    pub async fn wait_js(
        &self,
        what: &str,
        timeout: Duration,
        script: &str,
        args: &[Value],
    ) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let v = self
                .command(
                    reqwest::Method::POST,
                    "/execute/sync",
                    Some(json!({ "script": script, "args": args })),
                )
                .await;
            match v {
                Ok(Value::Null | Value::Bool(false)) | Err(_) => {}
                Ok(v) => return v,
            }
            if tokio::time::Instant::now() >= deadline {
                self.screenshot(&format!("timeout-{}", slug(what))).await;
                let text = self
                    .exec("return document.body ? document.body.innerText : ''", &[])
                    .await;
                panic!(
                    "timed out after {timeout:?} waiting for {what}; the page shows:\n{}",
                    text.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits until an element matching `css` is shown (in the layout).
    pub async fn wait_for(&self, css: &str, timeout: Duration) {
        self.wait_js(
            &format!("{css} to show"),
            timeout,
            "const e = document.querySelector(arguments[0]); return !!(e && e.getClientRects().length);",
            &[json!(css)],
        )
        .await;
    }

    /// Waits until the text of the element matching `css` contains `text`.
    pub async fn wait_text(&self, css: &str, text: &str, timeout: Duration) -> String {
        self.wait_js(
            &format!("{css} to say {text:?}"),
            timeout,
            "const e = document.querySelector(arguments[0]); const t = e && e.textContent; return t && t.includes(arguments[1]) ? t : null;",
            &[json!(css), json!(text)],
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// The text content of the element matching `css` (empty when none).
    pub async fn text(&self, css: &str) -> String {
        self.exec(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : '';",
            &[json!(css)],
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// The WebDriver reference of the element matching `css` (panics if none).
    pub async fn element(&self, css: &str) -> String {
        let v = self
            .post("/element", json!({"using": "css selector", "value": css}))
            .await;
        v[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("no element {css}"))
            .to_owned()
    }

    /// Clicks the element matching `css` as a user would (scrolled into
    /// view; fails if something covers it).
    pub async fn click(&self, css: &str) {
        let id = self.element(css).await;
        self.post(&format!("/element/{id}/click"), json!({})).await;
    }

    /// Clears the input matching `css` and types `text` into it.
    pub async fn type_into(&self, css: &str, text: &str) {
        let id = self.element(css).await;
        self.post(&format!("/element/{id}/clear"), json!({})).await;
        self.post(&format!("/element/{id}/value"), json!({ "text": text }))
            .await;
    }

    /// Presses keys (WebDriver key codes, e.g. [`keys::TAB`]) on whatever
    /// has focus, as real key events.
    pub async fn press(&self, keys: &str) {
        let actions: Vec<Value> = keys
            .chars()
            .flat_map(|k| {
                [
                    json!({"type": "keyDown", "value": k.to_string()}),
                    json!({"type": "keyUp", "value": k.to_string()}),
                ]
            })
            .collect();
        self.post(
            "/actions",
            json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]}),
        )
        .await;
    }

    /// A real double click (two clicks in quick succession) on the element
    /// matching `css`.
    pub async fn double_click(&self, css: &str) {
        let id = self.element(css).await;
        // Scrolled into view first, as a click would.
        self.exec(
            "document.querySelector(arguments[0]).scrollIntoView({block: 'center'})",
            &[json!(css)],
        )
        .await;
        let origin = json!({ ELEMENT: id });
        self.post(
            "/actions",
            json!({"actions": [{"type": "pointer", "id": "mouse", "parameters": {"pointerType": "mouse"}, "actions": [
                {"type": "pointerMove", "origin": origin, "x": 0, "y": 0, "duration": 0},
                {"type": "pointerDown", "button": 0},
                {"type": "pointerUp", "button": 0},
                {"type": "pointerDown", "button": 0},
                {"type": "pointerUp", "button": 0},
            ]}]}),
        )
        .await;
    }

    /// Whether the element matching `css` has focus.
    pub async fn focused(&self, css: &str) -> bool {
        self.exec(
            "return document.activeElement === document.querySelector(arguments[0]);",
            &[json!(css)],
        )
        .await
            == Value::Bool(true)
    }

    /// Presses Tab until the element matching `css` has focus (at most
    /// `max` times); panics if it never does.
    pub async fn tab_to(&self, css: &str, max: usize) {
        for _ in 0..max {
            if self.focused(css).await {
                return;
            }
            self.press(keys::TAB).await;
        }
        if !self.focused(css).await {
            self.screenshot(&format!("tab-to-{}", slug(css))).await;
            let at = self
                .exec(
                    "const e = document.activeElement; return e ? e.outerHTML.slice(0, 200) : '';",
                    &[],
                )
                .await;
            panic!("{css} never got focus with Tab ({max} presses); focus is on {at}");
        }
    }

    /// Saves a screenshot as `target/browser/<test>/<nn>-<name>.png`;
    /// returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let n = self.shot.fetch_add(1, Ordering::SeqCst);
        let path = self.shots.join(format!("{n:02}-{}.png", slug(name)));
        match self
            .command(reqwest::Method::GET, "/screenshot", None)
            .await
        {
            Ok(v) => {
                let png = base64_decode(v.as_str().unwrap_or_default());
                std::fs::write(&path, png).expect("write a screenshot");
            }
            Err(e) => eprintln!("screenshot {name} failed: {e}"),
        }
        path
    }

    /// What the page logged as errors: uncaught exceptions and refusals
    /// (a Content-Security-Policy violation, say). Failed network requests
    /// are not errors here: tests make them happen.
    pub async fn script_errors(&self) -> Vec<String> {
        let log = self
            .command(
                reqwest::Method::POST,
                "/se/log",
                Some(json!({"type": "browser"})),
            )
            .await
            .unwrap_or(Value::Null);
        log.as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["level"] == "SEVERE")
            .filter_map(|e| e["message"].as_str())
            .filter(|m| {
                m.contains("Uncaught") || m.contains("Refused to") || m.contains("SyntaxError")
            })
            .map(str::to_owned)
            .collect()
    }

    /// Ends the session (Chromium exits) and removes the profile.
    pub async fn close(mut self) {
        let _ = self.command(reqwest::Method::DELETE, "", None).await;
        self.closed = true;
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        // A failing test: end the session anyway, without a runtime (a
        // plain blocking request), so no Chromium outlives the test.
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.driver_port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = write!(
                s,
                "DELETE /session/{} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session, self.driver_port
            );
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// WebDriver key codes.
pub mod keys {
    /// Tab.
    pub const TAB: &str = "\u{E004}";
    /// Enter.
    pub const ENTER: &str = "\u{E007}";
    /// Space.
    pub const SPACE: &str = " ";
    /// Shift (held until released by a second press).
    pub const SHIFT: &str = "\u{E008}";
}

fn slug(s: &str) -> String {
    let s: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    s.split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-")
        .chars()
        .take(60)
        .collect()
}

/// Standard base64 (screenshots come as base64 PNG).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from((acc >> bits) & 0xff).unwrap_or_default());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_slugs() {
        assert_eq!(base64_decode("aGVsbG8gd29ybGQ="), b"hello world");
        assert_eq!(base64_decode("TWFu"), b"Man");
        assert_eq!(slug("#conn[data-state=live]"), "conn-data-state-live");
    }
}

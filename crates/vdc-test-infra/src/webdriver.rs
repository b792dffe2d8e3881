//! A minimal WebDriver client, to test the web page in a real headless
//! Chromium.
//!
//! Why: the web page is only proven by a browser that runs its script,
//! renders its tables and clicks its buttons. W3C WebDriver is a small JSON
//! protocol over HTTP, and `chromedriver` speaks it; the few commands a test
//! needs fit in this file, without a browser-automation framework.
//!
//! Steps of a [`Browser`]'s life:
//! 1. spawn `chromedriver --port=<free port>` in its own process group (the
//!    browser it launches joins that group), its output in a log file;
//! 2. poll `/status` until it is ready, with a deadline;
//! 3. create a session: headless Chromium with a throwaway profile;
//! 4. drive the page: navigate, find elements by CSS selector, read text,
//!    click, type, accept `confirm()` prompts, run a script, take
//!    screenshots; every wait polls with a deadline;
//! 5. on drop: delete the session (the browser quits), stop the process
//!    group, remove the profile.
//!
//! The page re-renders its tables on every refresh, so an element found a
//! moment ago may be gone: the `wait_*` and [`Browser::click_css`] helpers
//! find the element again on each attempt and treat a stale or missing
//! element as "not yet".

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

/// Debian's chromedriver.
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// Debian's Chromium.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// Longest wait for chromedriver to answer `/status` as ready.
pub const DRIVER_START_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for one WebDriver command (starting the browser is the
/// slowest: seconds on a busy two-core machine).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);
/// How many chromedriver processes are tried before giving up.
const DRIVER_ATTEMPTS: u32 = 3;
/// Interval of every polling loop here.
const POLL: Duration = Duration::from_millis(100);
/// The key of an element reference in WebDriver's JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";
/// Chromium's command line: headless, quiet (no network calls of its own),
/// and able to run as root.
const CHROMIUM_ARGS: &[&str] = &[
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,900",
];

/// What can go wrong driving the browser.
#[derive(Debug, thiserror::Error)]
pub enum WebDriverError {
    /// The temporary directory (profile, log) could not be made.
    #[error("cannot create the browser's temporary directory")]
    TempDir(#[source] std::io::Error),
    /// No free port on 127.0.0.1.
    #[error("cannot find a free port for chromedriver")]
    Port(#[source] std::io::Error),
    /// chromedriver could not be started.
    #[error("cannot start {0}")]
    Spawn(PathBuf, #[source] std::io::Error),
    /// chromedriver exited before it was ready.
    #[error("chromedriver exited ({status}) before it was ready; its log: {log}")]
    DriverExited {
        /// How it exited.
        status: std::process::ExitStatus,
        /// The end of its log.
        log: String,
    },
    /// chromedriver did not become ready in time.
    #[error("chromedriver not ready after {timeout:?}; its log: {log}")]
    DriverNotReady {
        /// How long we waited.
        timeout: Duration,
        /// The end of its log.
        log: String,
    },
    /// The HTTP request to chromedriver failed.
    #[error("WebDriver request {request} failed")]
    Http {
        /// Method and path.
        request: String,
        /// Why.
        #[source]
        source: reqwest::Error,
    },
    /// chromedriver answered a command with an error.
    #[error("WebDriver {request}: {error}: {message}")]
    Command {
        /// Method and path.
        request: String,
        /// The WebDriver error code, e.g. `no such element`.
        error: String,
        /// chromedriver's message.
        message: String,
    },
    /// chromedriver's answer is not what the protocol says.
    #[error("unexpected WebDriver answer to {request}: {answer}")]
    Protocol {
        /// Method and path.
        request: String,
        /// The answer (or what was wrong with it).
        answer: String,
    },
    /// A screenshot was not valid base64.
    #[error("the screenshot is not valid base64")]
    Screenshot(#[source] base64::DecodeError),
    /// A file could not be written.
    #[error("cannot write {0}")]
    Write(PathBuf, #[source] std::io::Error),
    /// A wait reached its deadline.
    #[error("timed out after {timeout:?} waiting for {what}; last seen: {last}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        timeout: Duration,
        /// The last observation (or error) before the deadline.
        last: String,
    },
}

impl WebDriverError {
    /// The WebDriver error code (`no such element`, `stale element
    /// reference`, `no such alert`, …) if chromedriver answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            WebDriverError::Command { error, .. } => Some(error),
            _ => None,
        }
    }

    /// Whether trying again may succeed: the element is not (yet, or any
    /// longer) there or not clickable at this moment.
    fn is_transient(&self) -> bool {
        matches!(
            self.code(),
            Some(
                "no such element"
                    | "stale element reference"
                    | "element click intercepted"
                    | "element not interactable"
            )
        )
    }
}

/// A reference to an element of the current page. It goes stale when the
/// page replaces the element.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Element {
    id: String,
}

/// A running chromedriver in its own process group; the group (with any
/// browser still in it) is stopped on drop.
struct Driver {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Driver {
    fn spawn(binary: &Path, dir: &Path) -> Result<Self, WebDriverError> {
        let port = free_port()?;
        let log = dir.join("chromedriver.log");
        let out = std::fs::File::create(&log).map_err(|e| WebDriverError::Write(log.clone(), e))?;
        let err = out
            .try_clone()
            .map_err(|e| WebDriverError::Write(log.clone(), e))?;
        let child = Command::new(binary)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| WebDriverError::Spawn(binary.to_path_buf(), e))?;
        Ok(Driver { child, port, log })
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Polls `/status` until chromedriver says it is ready.
    async fn wait_ready(&mut self, http: &reqwest::Client) -> Result<(), WebDriverError> {
        let deadline = Instant::now() + DRIVER_START_TIMEOUT;
        let url = format!("{}/status", self.url());
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(WebDriverError::DriverExited {
                    status,
                    log: self.log_tail(20),
                });
            }
            let ready = match http.get(&url).timeout(Duration::from_secs(2)).send().await {
                Ok(r) => r
                    .json::<Value>()
                    .await
                    .map(|v| v["value"]["ready"] == json!(true))
                    .unwrap_or(false),
                Err(_) => false,
            };
            if ready {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(WebDriverError::DriverNotReady {
                    timeout: DRIVER_START_TIMEOUT,
                    log: self.log_tail(20),
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn log_tail(&self, lines: usize) -> String {
        vdc_lab::process::tail(&self.log, lines)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let Ok(raw) = i32::try_from(self.child.id()) else {
            return;
        };
        let group = Pid::from_raw(raw);
        let _ = killpg(group, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(POLL);
        }
        // Whatever is left of the group (browser processes included).
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// A headless Chromium driven over WebDriver; quits on drop.
pub struct Browser {
    http: reqwest::Client,
    session: String,
    // Dropped in this order: the driver (and browser) before the profile.
    driver: Driver,
    dir: tempfile::TempDir,
}

impl Browser {
    /// Starts Debian's chromedriver and a headless Chromium session
    /// ([`CHROMEDRIVER`], [`CHROMIUM`]).
    pub async fn start() -> Result<Browser, WebDriverError> {
        Self::start_with(Path::new(CHROMEDRIVER), Path::new(CHROMIUM)).await
    }

    /// Starts the given chromedriver and a headless session of the given
    /// Chromium binary.
    pub async fn start_with(
        chromedriver: &Path,
        chromium: &Path,
    ) -> Result<Browser, WebDriverError> {
        let dir = tempfile::Builder::new()
            .prefix("vdc-browser-")
            .tempdir()
            .map_err(WebDriverError::TempDir)?;
        let http = reqwest::Client::builder()
            .timeout(COMMAND_TIMEOUT)
            .build()
            .map_err(|source| WebDriverError::Http {
                request: "client".into(),
                source,
            })?;
        // The port is free when picked, but another process may take it
        // before chromedriver binds it; chromedriver then exits, and a new
        // port is tried.
        let mut attempts = 1;
        let driver = loop {
            let mut driver = Driver::spawn(chromedriver, dir.path())?;
            match driver.wait_ready(&http).await {
                Ok(()) => break driver,
                Err(WebDriverError::DriverExited { .. }) if attempts < DRIVER_ATTEMPTS => {
                    attempts += 1;
                }
                Err(e) => return Err(e),
            }
        };
        let profile = dir.path().join("profile");
        let mut args: Vec<String> = CHROMIUM_ARGS.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": chromium.display().to_string(),
                        "args": args,
                    }
                }
            }
        });
        let request = "POST /session".to_string();
        let answer = send(
            http.post(format!("{}/session", driver.url()))
                .json(&capabilities),
            &request,
        )
        .await?;
        let Some(session) = answer["sessionId"].as_str().map(str::to_string) else {
            return Err(WebDriverError::Protocol {
                request,
                answer: answer.to_string(),
            });
        };
        Ok(Browser {
            http,
            session,
            driver,
            dir,
        })
    }

    /// The end of chromedriver's log, for diagnostics.
    pub fn driver_log_tail(&self, lines: usize) -> String {
        self.driver.log_tail(lines)
    }

    /// The browser's temporary directory (profile and chromedriver log).
    pub fn temp_dir(&self) -> &Path {
        self.dir.path()
    }

    async fn command(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, WebDriverError> {
        let url = format!("{}/session/{}{path}", self.driver.url(), self.session);
        let request = format!("{method} {path}");
        let mut builder = self.http.request(method.clone(), url);
        if method == reqwest::Method::POST {
            builder = builder.json(&body.unwrap_or_else(|| json!({})));
        }
        send(builder, &request).await
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, WebDriverError> {
        self.command(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> Result<Value, WebDriverError> {
        self.command(reqwest::Method::GET, path, None).await
    }

    /// Opens `url` and waits for the page to load.
    pub async fn goto(&self, url: &str) -> Result<(), WebDriverError> {
        self.post("/url", json!({ "url": url })).await.map(drop)
    }

    /// The address of the current page.
    pub async fn current_url(&self) -> Result<String, WebDriverError> {
        let v = self.get("/url").await?;
        string_value("GET /url", v)
    }

    /// The first element matching the CSS selector `css`.
    pub async fn find(&self, css: &str) -> Result<Element, WebDriverError> {
        let v = self
            .post("/element", json!({"using": "css selector", "value": css}))
            .await?;
        element("POST /element", &v)
    }

    /// Every element matching the CSS selector `css`, in document order.
    pub async fn find_all(&self, css: &str) -> Result<Vec<Element>, WebDriverError> {
        let v = self
            .post("/elements", json!({"using": "css selector", "value": css}))
            .await?;
        match v.as_array() {
            Some(items) => items
                .iter()
                .map(|item| element("POST /elements", item))
                .collect(),
            None => Err(WebDriverError::Protocol {
                request: "POST /elements".into(),
                answer: v.to_string(),
            }),
        }
    }

    /// The rendered text of an element.
    pub async fn text(&self, el: &Element) -> Result<String, WebDriverError> {
        let path = format!("/element/{}/text", el.id);
        let v = self.get(&path).await?;
        string_value(&path, v)
    }

    /// A DOM property of an element (`value`, `checked`, …).
    pub async fn property(&self, el: &Element, name: &str) -> Result<Value, WebDriverError> {
        self.get(&format!("/element/{}/property/{name}", el.id))
            .await
    }

    /// Clicks an element (scrolled into view, as a user would).
    pub async fn click(&self, el: &Element) -> Result<(), WebDriverError> {
        self.post(&format!("/element/{}/click", el.id), json!({}))
            .await
            .map(drop)
    }

    /// Types `text` into an element.
    pub async fn send_keys(&self, el: &Element, text: &str) -> Result<(), WebDriverError> {
        self.post(
            &format!("/element/{}/value", el.id),
            json!({ "text": text }),
        )
        .await
        .map(drop)
    }

    /// Runs `script` (a function body; its arguments in `arguments`) in the
    /// page and returns what it returns.
    pub async fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value, WebDriverError> {
        self.post("/execute/sync", json!({ "script": script, "args": args }))
            .await
    }

    /// The text of the open `alert`/`confirm` prompt.
    pub async fn alert_text(&self) -> Result<String, WebDriverError> {
        let v = self.get("/alert/text").await?;
        string_value("GET /alert/text", v)
    }

    /// Waits up to `timeout` for a prompt (`alert`, `confirm`) to open,
    /// accepts it and returns its text.
    pub async fn accept_alert(&self, timeout: Duration) -> Result<String, WebDriverError> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.alert_text().await {
                Ok(text) => {
                    self.post("/alert/accept", json!({})).await?;
                    return Ok(text);
                }
                Err(e) if e.code() == Some("no such alert") => e.to_string(),
                Err(e) => return Err(e),
            };
            if Instant::now() >= deadline {
                return Err(WebDriverError::Timeout {
                    what: "a prompt to accept".into(),
                    timeout,
                    last,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// A PNG screenshot of the window.
    pub async fn screenshot(&self) -> Result<Vec<u8>, WebDriverError> {
        let v = self.get("/screenshot").await?;
        let b64 = string_value("GET /screenshot", v)?;
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(WebDriverError::Screenshot)
    }

    /// Saves a PNG screenshot of the window to `path`.
    pub async fn save_screenshot(&self, path: &Path) -> Result<(), WebDriverError> {
        let png = self.screenshot().await?;
        std::fs::write(path, png).map_err(|e| WebDriverError::Write(path.to_path_buf(), e))
    }

    /// The current DOM serialized as HTML.
    pub async fn page_source(&self) -> Result<String, WebDriverError> {
        let v = self.get("/source").await?;
        string_value("GET /source", v)
    }

    /// Finds the element matching `css` and clicks it, trying again until
    /// `timeout` while it is missing, stale or covered.
    pub async fn click_css(&self, css: &str, timeout: Duration) -> Result<(), WebDriverError> {
        let deadline = Instant::now() + timeout;
        loop {
            let attempt = match self.find(css).await {
                Ok(el) => self.click(&el).await,
                Err(e) => Err(e),
            };
            let last = match attempt {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() => e.to_string(),
                Err(e) => return Err(e),
            };
            if Instant::now() >= deadline {
                return Err(WebDriverError::Timeout {
                    what: format!("a clickable '{css}'"),
                    timeout,
                    last,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls the text of the element matching `css` until `pred` holds for
    /// it (at most `timeout`); returns that text.
    pub async fn wait_text(
        &self,
        css: &str,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<String, WebDriverError> {
        let deadline = Instant::now() + timeout;
        loop {
            let read = match self.find(css).await {
                Ok(el) => self.text(&el).await,
                Err(e) => Err(e),
            };
            let last = match read {
                Ok(text) if pred(&text) => return Ok(text),
                Ok(text) => format!("{text:?}"),
                Err(e) if e.is_transient() => e.to_string(),
                Err(e) => return Err(e),
            };
            if Instant::now() >= deadline {
                return Err(WebDriverError::Timeout {
                    what: format!("the text of '{css}'"),
                    timeout,
                    last,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The rendered text of each cell of each row matching `rows_css`
    /// (e.g. `#vms tbody tr`), read in one go so a re-render cannot tear it.
    pub async fn table_rows(&self, rows_css: &str) -> Result<Vec<Vec<String>>, WebDriverError> {
        const SCRIPT: &str = "return Array.from(document.querySelectorAll(arguments[0]), \
             (tr) => Array.from(tr.cells, (td) => td.innerText.trim()));";
        let v = self.execute(SCRIPT, vec![json!(rows_css)]).await?;
        serde_json::from_value(v.clone()).map_err(|_| WebDriverError::Protocol {
            request: "POST /execute/sync (table rows)".into(),
            answer: v.to_string(),
        })
    }

    /// Polls the rows matching `rows_css` until one satisfies `pred` (at
    /// most `timeout`); returns that row's cell texts.
    pub async fn wait_row(
        &self,
        rows_css: &str,
        timeout: Duration,
        pred: impl Fn(&[String]) -> bool,
    ) -> Result<Vec<String>, WebDriverError> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.table_rows(rows_css).await {
                Ok(rows) => match rows.iter().find(|r| pred(r)) {
                    Some(row) => return Ok(row.clone()),
                    None => format!("{rows:?}"),
                },
                Err(e) => return Err(e),
            };
            if Instant::now() >= deadline {
                return Err(WebDriverError::Timeout {
                    what: format!("a matching row of '{rows_css}'"),
                    timeout,
                    last,
                });
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The browser quits with its session; a failure here is covered by
        // the driver's drop, which stops the whole process group.
        let _ = delete_session(self.driver.port, &self.session);
    }
}

/// `DELETE /session/<id>` over a plain socket: Drop cannot await, and a
/// blocking HTTP client would be another dependency. Returns once
/// chromedriver has answered (the browser has quit by then).
fn delete_session(port: u16, session: &str) -> std::io::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "DELETE /session/{session} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    // The status line and headers are enough: they come after the work.
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    Ok(())
}

/// Sends a request and unwraps WebDriver's `{"value": …}` envelope, turning
/// an error answer into [`WebDriverError::Command`].
async fn send(builder: reqwest::RequestBuilder, request: &str) -> Result<Value, WebDriverError> {
    let http_err = |source| WebDriverError::Http {
        request: request.to_string(),
        source,
    };
    let response = builder.send().await.map_err(http_err)?;
    let status = response.status();
    let body: Value = response.json().await.map_err(http_err)?;
    let value = body.get("value").cloned().unwrap_or(Value::Null);
    if let Some(error) = value.get("error").and_then(Value::as_str) {
        return Err(WebDriverError::Command {
            request: request.to_string(),
            error: error.to_string(),
            message: value["message"].as_str().unwrap_or_default().to_string(),
        });
    }
    if !status.is_success() {
        return Err(WebDriverError::Protocol {
            request: request.to_string(),
            answer: format!("HTTP {status}: {body}"),
        });
    }
    Ok(value)
}

fn string_value(request: &str, v: Value) -> Result<String, WebDriverError> {
    match v {
        Value::String(s) => Ok(s),
        other => Err(WebDriverError::Protocol {
            request: request.to_string(),
            answer: other.to_string(),
        }),
    }
}

fn element(request: &str, v: &Value) -> Result<Element, WebDriverError> {
    match v.get(ELEMENT_KEY).and_then(Value::as_str) {
        Some(id) => Ok(Element { id: id.to_string() }),
        None => Err(WebDriverError::Protocol {
            request: request.to_string(),
            answer: v.to_string(),
        }),
    }
}

fn free_port() -> Result<u16, WebDriverError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(WebDriverError::Port)?;
    Ok(listener.local_addr().map_err(WebDriverError::Port)?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_answers_keep_their_code() {
        let e = WebDriverError::Command {
            request: "POST /element".into(),
            error: "no such element".into(),
            message: "no such element: Unable to locate element".into(),
        };
        assert_eq!(e.code(), Some("no such element"));
        assert!(e.is_transient());
        let e = WebDriverError::Command {
            request: "POST /url".into(),
            error: "unknown error".into(),
            message: "net::ERR_CONNECTION_REFUSED".into(),
        };
        assert!(!e.is_transient());
    }

    #[test]
    fn element_references_are_read_from_the_w3c_key() {
        let v = json!({ ELEMENT_KEY: "abc" });
        assert_eq!(element("x", &v).ok(), Some(Element { id: "abc".into() }));
        assert!(element("x", &json!({"ELEMENT": "abc"})).is_err());
    }
}

//! The web UI in headless Chromium, driven over the DevTools protocol (a tiny client over
//! tokio-tungstenite): sign-in (wrong token refused, right one accepted and kept across a
//! reload), the route list showing a route made through the API, a route created through
//! the form appearing in the API, a validation error shown on its field, an agent created
//! with its one-time token and start command, and gateway status. Screenshots are written
//! to `target/tmp/ui/`.
//!
//! Skipped, loudly, when no Chromium is installed (`apt-get install -y chromium`).

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use common::{Backend, Server, TempDir, Ws, push_connect, send_json};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader};
use tokio_tungstenite::tungstenite::Message;

fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    for name in [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

/// Stops the browser when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A DevTools protocol connection, attached to one page.
struct Cdp {
    ws: Ws,
    next: u64,
    session: Option<String>,
}

impl Cdp {
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let id = self.next;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .expect("send to chromium");
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("chromium did not answer {method}"))
                .expect("chromium connection open")
                .expect("chromium message");
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(t.as_str()).expect("CDP JSON");
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method} failed: {v}");
                return v["result"].clone();
            }
        }
    }

    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "awaitPromise": true, "returnByValue": true}),
            )
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{expr} threw: {r}");
        r["result"]["value"].clone()
    }

    async fn wait_until(&mut self, expr: &str, what: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if self.eval(expr).await == json!(true) {
                return;
            }
            if tokio::time::Instant::now() > deadline {
                let body = self.eval("document.body.innerText").await;
                panic!("timed out waiting for {what}; page text:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn type_into(&mut self, selector: &str, text: &str) {
        self.eval(&format!(
            "(() => {{ const e = document.querySelector({0}); e.value = ''; e.focus(); return true; }})()",
            json!(selector)
        ))
        .await;
        self.call("Input.insertText", json!({"text": text})).await;
    }

    async fn click(&mut self, selector: &str) {
        let found = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({0}); if (!e) return false; e.click(); return true; }})()",
                json!(selector)
            ))
            .await;
        assert_eq!(found, json!(true), "no element {selector}");
    }

    async fn screenshot(&mut self, name: &str) -> PathBuf {
        let r = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().expect("png data"))
            .expect("base64");
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui");
        std::fs::create_dir_all(&dir).expect("screenshot dir");
        let path = dir.join(name);
        std::fs::write(&path, png).expect("write screenshot");
        eprintln!("screenshot: {}", path.display());
        path
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_ui_in_headless_chromium() {
    let Some(browser) = chromium() else {
        let line = "!".repeat(78);
        eprintln!(
            "\n{line}\nSKIPPED: web UI test: no chromium in PATH (apt-get install -y chromium)\n{line}\n"
        );
        return;
    };
    let dir = TempDir::new("ui");
    let s = Server::start(&Backend::Sqlite.fresh_database(&dir).await, &dir).await;
    let api = s.api();
    api.agent("home").await;
    api.route(json!({"name": "api-made", "hosts": ["app.example"], "path": "/app", "upstream": "http://10.0.0.5:8080", "via": "home", "cors": {"allow_origins": ["https://app.example"]}}))
        .await;
    let (_, gw_token) = api.gateway("edge-1", "edge-1.example:7844").await;
    let mut gw = push_connect(&s, &gw_token, "")
        .await
        .expect("gateway connects");
    send_json(
        &mut gw,
        json!({"type": "status", "pin": format!("sha256:{}", "5e".repeat(32)), "requests_per_second": 42.0,
               "certificates": [{"hosts": ["app.example"], "state": "valid", "not_after": "2031-03-01T00:00:00Z"},
                                {"hosts": ["new.example"], "state": "pending"}]}),
    )
    .await;

    let profile = TempDir::new("chromium-profile");
    let mut child = std::process::Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--remote-debugging-port=0",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start chromium");
    let stderr = child.stderr.take().expect("stderr");
    let child = KillOnDrop(child);
    let (url_tx, url_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut url_tx = Some(url_tx);
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let Some(url) = line.split("DevTools listening on ").nth(1)
                && let Some(tx) = url_tx.take()
            {
                let _ = tx.send(url.trim().to_string());
            }
        }
    });
    let ws_url = tokio::time::timeout(Duration::from_secs(60), url_rx)
        .await
        .expect("chromium starts in time")
        .expect("chromium prints its DevTools address");
    let (ws, _) = tokio_tungstenite::connect_async(&ws_url)
        .await
        .expect("DevTools");
    let mut cdp = Cdp {
        ws,
        next: 0,
        session: None,
    };
    let target = cdp
        .call("Target.createTarget", json!({"url": "about:blank"}))
        .await;
    let attached = cdp
        .call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        )
        .await;
    cdp.session = Some(attached["sessionId"].as_str().expect("session").to_string());
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1280, "height": 860, "deviceScaleFactor": 1, "mobile": false}),
    )
    .await;
    cdp.call("Page.navigate", json!({"url": s.url()})).await;
    cdp.wait_until(
        "document.readyState === 'complete' && !!document.querySelector('#token')",
        "the login page",
    )
    .await;

    // A wrong token is refused.
    cdp.type_into("#token", "adm_wrong").await;
    cdp.click("#login-btn").await;
    cdp.wait_until(
        "!document.querySelector('#login-error').classList.contains('hidden')",
        "the login error",
    )
    .await;
    cdp.screenshot("login-refused.png").await;

    // The right one opens the app, whose route list shows the route made through the API.
    cdp.type_into("#token", &s.admin).await;
    cdp.click("#login-btn").await;
    cdp.wait_until(
        "!document.querySelector('#app-view').classList.contains('hidden') && document.querySelector('#routes-table tbody').textContent.includes('api-made')",
        "the route list with api-made",
    )
    .await;
    let stored = cdp
        .eval("sessionStorage.getItem('kakuremichi.admin_token')")
        .await;
    assert_eq!(stored, json!(s.admin));

    // Create a route through the form.
    cdp.click("#new-route").await;
    cdp.type_into("#rf-name", "ui-made").await;
    cdp.type_into("#rf-hosts", "ui.example").await;
    cdp.type_into("#rf-path", "/ui").await;
    cdp.type_into("#rf-upstreams", "http://127.0.0.1:9000")
        .await;
    cdp.eval("(() => { const s = document.querySelector('#rf-via'); s.value = 'home'; return s.value; })()")
        .await;
    cdp.click("#rf-strip").await;
    cdp.click("[data-template=rate_limit]").await;
    cdp.screenshot("route-form.png").await;
    cdp.click("#rf-save").await;
    cdp.wait_until(
        "document.querySelector('#route-editor').classList.contains('hidden') && document.querySelector('#routes-table tbody').textContent.includes('ui-made')",
        "ui-made in the list",
    )
    .await;
    let routes = api.get("/api/v1/routes").await.expect(200).json();
    let made = routes
        .as_array()
        .expect("array")
        .iter()
        .find(|r| r["name"] == "ui-made")
        .expect("the form's route is in the API")
        .clone();
    assert_eq!(made["path"], "/ui");
    assert_eq!(made["hosts"], json!(["ui.example"]));
    assert_eq!(made["upstream"], "http://127.0.0.1:9000");
    assert_eq!(made["via"], "home");
    assert_eq!(made["strip_path"], true);
    assert_eq!(made["rate_limit"]["requests"], 100);
    cdp.screenshot("routes.png").await;

    // Editing keeps the policies; a bad value is shown on its field.
    cdp.eval("(() => { [...document.querySelectorAll('#routes-table tr')].find(tr => tr.dataset.route === 'ui-made').querySelector('button').click(); return true; })()")
        .await;
    cdp.wait_until(
        "document.querySelector('#rf-name').value === 'ui-made' && document.querySelector('#rf-extra').value.includes('rate_limit')",
        "the editor with ui-made",
    )
    .await;
    cdp.type_into("#rf-upstreams", "ftp://nowhere").await;
    cdp.click("#rf-save").await;
    cdp.wait_until(
        "!document.querySelector('#route-error').classList.contains('hidden') && document.querySelector('#route-error').textContent.includes('ftp://nowhere') && document.querySelector('#rf-upstreams').classList.contains('invalid')",
        "the validation error on the upstream field",
    )
    .await;
    cdp.screenshot("route-error.png").await;
    cdp.click("#rf-cancel").await;

    // Agents: create one, see its token and start command once.
    cdp.click("header nav button[data-tab=agents]").await;
    cdp.type_into("#af-name", "ui-agent").await;
    cdp.click("#af-create").await;
    cdp.wait_until(
        "!document.querySelector('#agent-created').classList.contains('hidden') && document.querySelector('#agent-created').textContent.includes('agt_') && document.querySelector('#agent-created').textContent.includes('kakuremichi agent --config agent.toml') && document.querySelector('#agents-table').textContent.includes('ui-agent')",
        "the new agent's token and command",
    )
    .await;
    let agents = api.get("/api/v1/agents").await.json();
    assert!(
        agents
            .as_array()
            .expect("array")
            .iter()
            .any(|a| a["name"] == "ui-agent"),
        "{agents}"
    );
    cdp.screenshot("agents.png").await;

    // Gateways: live status, certificates and request rate.
    cdp.click("header nav button[data-tab=gateways]").await;
    cdp.wait_until(
        "(() => { const t = document.querySelector('#gateways-table').textContent; return t.includes('edge-1') && t.includes('healthy') && t.includes('new.example') && t.includes('42.0'); })()",
        "the gateway with certificates and request rate",
    )
    .await;
    cdp.screenshot("gateways.png").await;

    // The session survives a reload.
    cdp.call("Page.reload", json!({})).await;
    cdp.wait_until(
        "document.readyState === 'complete' && !document.querySelector('#app-view').classList.contains('hidden') && document.querySelector('#gateways-table').textContent.includes('edge-1')",
        "the app after a reload",
    )
    .await;

    cdp.session = None;
    let _ =
        tokio::time::timeout(Duration::from_secs(5), cdp.call("Browser.close", json!({}))).await;
    drop(child);
    drop(gw);
    s.stop().await;
}

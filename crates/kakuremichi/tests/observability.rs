//! Access log lines, Prometheus metrics and the admin health endpoints.

mod common;

use std::time::Duration;

use common::{DEADLINE, KeepAlive, Origin, eventually, gateway_with_routes, get, metric, request};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_access_log_line_per_request_with_every_field() {
    let origin = Origin::slow(Duration::from_millis(300), "hello").await;
    let gw = gateway_with_routes(&format!(
        "[[routes]]\nname = \"app\"\nhosts = [\"app.test\"]\nupstream = \"{}\"\n",
        origin.url()
    ))
    .start()
    .await;

    let r = request(
        gw.http,
        "POST",
        "app.test",
        "/slow/path?q=1",
        &[("x-request-id", "log-1")],
        "0123456789",
    )
    .await;
    assert_eq!(r.status, 200);
    let r = request(
        gw.http,
        "GET",
        "other.test",
        "/missing",
        &[("x-request-id", "log-2")],
        "",
    )
    .await;
    assert_eq!(r.status, 404);

    let line = gw.logs.wait_access("log-1").await;
    assert!(
        line["timestamp"].as_str().is_some_and(|t| t.len() >= 20),
        "{line}"
    );
    assert_eq!(line["request_id"], "log-1");
    assert_eq!(line["client_ip"], "127.0.0.1");
    assert_eq!(line["method"], "POST");
    assert_eq!(line["host"], "app.test");
    assert_eq!(line["path"], "/slow/path");
    assert_eq!(line["route"], "app");
    assert_eq!(line["upstream"], origin.url().as_str());
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes_in"], 10);
    assert_eq!(line["bytes_out"], 5);
    let ms = line["duration_ms"]
        .as_f64()
        .expect("duration_ms is a number");
    assert!(
        (300.0..10_000.0).contains(&ms),
        "duration {ms} ms for a 300 ms origin"
    );

    let line = gw.logs.wait_access("log-2").await;
    assert_eq!(line["status"], 404);
    assert_eq!(line["host"], "other.test");
    assert_eq!(line["path"], "/missing");
    for field in ["route", "upstream"] {
        assert!(
            line.get(field).is_some(),
            "{field} present even without a route"
        );
    }
    assert!(line["bytes_out"].as_u64().unwrap() > 0);

    // Exactly one line each.
    for id in ["log-1", "log-2"] {
        let n = gw
            .logs
            .access()
            .iter()
            .filter(|l| l["request_id"] == id)
            .count();
        assert_eq!(n, 1, "access lines for {id}");
    }
    // Every access line is a JSON object with the access target; other logs are JSON too.
    for l in gw.logs.all() {
        assert!(
            serde_json::from_str::<serde_json::Value>(&l).is_ok(),
            "a log line that is not JSON: {l}"
        );
    }
}

/// Log lines are written in batches by a background thread: a burst of requests answered
/// just before SIGTERM still has every one of its access lines in the log after exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_access_line_is_written_before_exit() {
    let origin = Origin::fixed("ok").await;
    let mut gw = gateway_with_routes(&format!(
        "[[routes]]\nname = \"app\"\nupstream = \"{}\"\n",
        origin.url()
    ))
    .start()
    .await;
    const BURST: usize = 300;
    for i in 0..BURST {
        let id = format!("burst-{i}");
        let r = request(
            gw.http,
            "GET",
            "h",
            "/",
            &[("x-request-id", id.as_str())],
            "",
        )
        .await;
        assert_eq!(r.status, 200);
    }
    gw.signal("TERM");
    let status = gw.wait_exit(DEADLINE).await;
    assert!(status.success(), "{status:?}");
    let count = || {
        gw.logs
            .access()
            .iter()
            .filter(|l| {
                l["request_id"]
                    .as_str()
                    .is_some_and(|id| id.starts_with("burst-"))
            })
            .count()
    };
    // The test's reader of the gateway's stdout may still be draining the pipe.
    let _ = eventually("all access lines read", Duration::from_secs(5), || {
        let n = count();
        async move { (n >= BURST).then_some(()) }
    })
    .await;
    assert_eq!(
        count(),
        BURST,
        "one access line per request, none lost at exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_cover_requests_latency_bytes_connections_and_upstreams() {
    let origin = Origin::fixed("0123456789abcdef").await;
    let gw = gateway_with_routes(&format!(
        "[[routes]]\nname = \"web\"\npath = \"/web\"\nupstream = \"{}\"\n",
        origin.url()
    ))
    .start()
    .await;

    for _ in 0..3 {
        let r = request(gw.http, "POST", "h", "/web/x", &[], vec![1u8; 100]).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(get(gw.http, "h", "/nothing-here").await.status, 404);

    let ok = [("route", "web"), ("status", "200")];
    gw.wait_metric("kakuremichi_http_requests_total", &ok, |v| v == 3.0)
        .await;
    gw.wait_metric(
        "kakuremichi_http_requests_total",
        &[("route", "-"), ("status", "404")],
        |v| v == 1.0,
    )
    .await;

    // A kept-alive connection is counted while it is open.
    let mut held = KeepAlive::connect(gw.http).await;
    assert_eq!(held.get("h", "/web").await.status, 200);
    gw.wait_metric("kakuremichi_open_connections", &[], |v| v >= 1.0)
        .await;

    let text = gw.metrics().await;
    let route = [("route", "web")];
    assert_eq!(
        metric(
            &text,
            "kakuremichi_http_request_duration_seconds_count",
            &route
        ),
        Some(4.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "kakuremichi_http_request_duration_seconds_bucket",
            &[("route", "web"), ("le", "+Inf")]
        ),
        Some(4.0)
    );
    assert!(
        metric(
            &text,
            "kakuremichi_http_request_duration_seconds_sum",
            &route
        )
        .unwrap()
            > 0.0
    );
    assert_eq!(
        metric(&text, "kakuremichi_http_request_bytes_total", &route),
        Some(300.0)
    );
    assert_eq!(
        metric(&text, "kakuremichi_http_response_bytes_total", &route),
        Some(64.0)
    );
    assert_eq!(
        metric(&text, "kakuremichi_open_upgraded_connections", &[]),
        Some(0.0)
    );
    assert_eq!(
        metric(
            &text,
            "kakuremichi_upstream_healthy",
            &[("route", "web"), ("upstream", &origin.url())]
        ),
        Some(1.0)
    );
    assert!(
        text.contains("# TYPE kakuremichi_http_request_duration_seconds histogram"),
        "{text}"
    );
    drop(held);
    gw.wait_metric("kakuremichi_open_connections", &[], |v| v == 0.0)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_health_endpoints_answer() {
    let gw = gateway_with_routes("").start().await;
    let r = get(gw.admin, "admin", "/healthz").await;
    assert_eq!(r.status, 200);
    let r = get(gw.admin, "admin", "/readyz").await;
    assert_eq!(r.status, 200);
    let r = get(gw.admin, "admin", "/metrics").await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("text/plain") || c.contains("openmetrics")),
        "{:?}",
        r.header("content-type")
    );
    assert!(r.text().contains("kakuremichi_open_connections"));
    assert_eq!(get(gw.admin, "admin", "/nope").await.status, 404);
    // The admin listener is separate: client traffic does not see these paths.
    assert_eq!(get(gw.http, "h", "/metrics").await.status, 404);
}

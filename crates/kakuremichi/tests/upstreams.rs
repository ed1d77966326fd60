//! Several upstreams per route: load balancing, passive and active health, and the 502, 503
//! and 504 answers.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Gateway, Origin, closed_port, eventually, gateway_with_routes, get, respond};

fn body_of(r: &common::Resp) -> String {
    assert_eq!(r.status, 200, "{}", r.text());
    r.text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_requests_evenly() {
    let a = Origin::fixed("a").await;
    let b = Origin::fixed("b").await;
    let gw = gateway_with_routes(&format!(
        "[[routes]]\nname = \"rr\"\nupstreams = [\"{}\", \"{}\"]\nload_balance = \"round_robin\"\n",
        a.url(),
        b.url()
    ))
    .start()
    .await;
    let mut seq = Vec::new();
    for _ in 0..10 {
        seq.push(body_of(&get(gw.http, "h", "/").await));
    }
    assert_eq!(a.requests.load(Ordering::SeqCst), 5, "{seq:?}");
    assert_eq!(b.requests.load(Ordering::SeqCst), 5, "{seq:?}");
    assert!(
        seq.windows(2).all(|w| w[0] != w[1]),
        "round robin alternates: {seq:?}"
    );
}

/// An origin that answers `name` at once, or on `/slow` only once `release` fires.
async fn gated(name: &'static str, release: Arc<tokio::sync::Notify>) -> Origin {
    Origin::serve(move |req| {
        let release = release.clone();
        async move {
            if req.uri().path() == "/slow" {
                release.notified().await;
            }
            respond(200, name)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_requests_prefers_the_idle_upstream() {
    let release = Arc::new(tokio::sync::Notify::new());
    let a = gated("a", release.clone()).await;
    let b = gated("b", release.clone()).await;
    let gw = gateway_with_routes(&format!(
        "[[routes]]\nname = \"lr\"\nupstreams = [\"{}\", \"{}\"]\nload_balance = \"least_requests\"\n",
        a.url(),
        b.url()
    ))
    .start()
    .await;

    let addr = gw.http;
    let slow = tokio::spawn(async move { get(addr, "h", "/slow").await });
    let busy = eventually(
        "the slow request to reach an origin",
        common::DEADLINE,
        || {
            let (ra, rb) = (
                a.requests.load(Ordering::SeqCst),
                b.requests.load(Ordering::SeqCst),
            );
            async move {
                match (ra, rb) {
                    (1, 0) => Some("a"),
                    (0, 1) => Some("b"),
                    _ => None,
                }
            }
        },
    )
    .await;
    for _ in 0..6 {
        let got = body_of(&get(gw.http, "h", "/fast").await);
        assert_ne!(
            got, busy,
            "the busy upstream was chosen while the other was idle"
        );
    }
    release.notify_waiters();
    let r = slow.await.unwrap();
    assert_eq!(body_of(&r), busy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_upstream_is_skipped() {
    let good = Origin::fixed("good").await;
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let gw = gateway_with_routes(&format!(
        "[[routes]]\nname = \"two\"\nupstreams = [\"{dead}\", \"{}\"]\n",
        good.url()
    ))
    .start()
    .await;
    for _ in 0..10 {
        assert_eq!(body_of(&get(gw.http, "h", "/").await), "good");
    }
    assert_eq!(good.requests.load(Ordering::SeqCst), 10);
    // Passive health: the refusing member is reported down.
    let text = gw.metrics().await;
    assert_eq!(
        common::metric(
            &text,
            "kakuremichi_upstream_healthy",
            &[("route", "two"), ("upstream", &dead)]
        ),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        common::metric(
            &text,
            "kakuremichi_upstream_healthy",
            &[("route", "two"), ("upstream", &good.url())]
        ),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_refusing_upstream_gives_502() {
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let gw = gateway_with_routes(&format!(
        "[[routes]]\nname = \"dead\"\nupstream = \"{dead}\"\n"
    ))
    .start()
    .await;
    for _ in 0..3 {
        let r = get(gw.http, "h", "/x").await;
        assert_eq!(r.status, 502);
        assert_eq!(r.json()["error"], "upstream_unreachable");
    }
    let r = get(gw.http, "h", "/x").await;
    let line = gw.logs.wait_access(r.header("x-request-id").unwrap()).await;
    assert_eq!(line["status"], 502);
    assert_eq!(line["route"], "dead");
    assert_eq!(line["upstream"], dead.as_str());
}

/// A route with a 500 ms response timeout to an upstream that answers `/slow*` after 5 s
/// and anything else at once.
async fn slow_route() -> (Origin, Gateway) {
    let slow = Origin::slow(Duration::from_secs(5), "late").await;
    let gw = gateway_with_routes(&format!(
        "[[routes]]\nname = \"slow\"\ntimeouts = {{ response = \"500ms\" }}\nupstream = \"{}\"\n",
        slow.url()
    ))
    .start()
    .await;
    (slow, gw)
}

async fn slow_request_gets_504_after_500ms(gw: &Gateway) {
    let started = Instant::now();
    let r = get(gw.http, "h", "/slow").await;
    let took = started.elapsed();
    assert_eq!(r.status, 504);
    assert_eq!(r.json()["error"], "upstream_timeout");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "answered after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upstream_gives_504_after_the_response_timeout() {
    let (_slow, gw) = slow_route().await;
    slow_request_gets_504_after_500ms(&gw).await;
    // A fast answer on the same route is fine.
    assert_eq!(body_of(&get(gw.http, "h", "/fast").await), "late");
}

/// The response timeout is counted per request on kept-alive upstream connections too:
/// an earlier request's deadline passing neither cuts a later request short nor lets a slow
/// one run past its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_timeout_counts_per_request_on_a_kept_alive_upstream_connection() {
    let (_slow, gw) = slow_route().await;
    assert_eq!(get(gw.http, "h", "/fast").await.status, 200);
    // The first request's deadline passes while its connection waits in the pool.
    tokio::time::sleep(Duration::from_millis(800)).await;
    for _ in 0..6 {
        assert_eq!(get(gw.http, "h", "/fast").await.status, 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    slow_request_gets_504_after_500ms(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_does_not_accept_gives_504_after_the_connect_timeout() {
    // A listener that never accepts, with its accept queue filled: further SYNs are dropped
    // by the kernel, so a connect hangs until the client gives up (Linux behaviour).
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    let mut full = false;
    for _ in 0..64 {
        match tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(s)) => fillers.push(s),
            Ok(Err(e)) => panic!("connect to the never-accepting listener failed: {e}"),
            Err(_) => {
                full = true;
                break;
            }
        }
    }
    assert!(
        full,
        "could not fill the accept queue of a local listener; no way to test connect timeouts here"
    );

    let gw = gateway_with_routes(&format!(
        "[[routes]]\nname = \"blackhole\"\ntimeouts = {{ connect = \"500ms\", response = \"10s\" }}\nupstream = \"http://{addr}\"\n"
    ))
    .start()
    .await;
    let started = Instant::now();
    let r = get(gw.http, "h", "/").await;
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"], "upstream_connect_timeout");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(5),
        "answered after {took:?}"
    );
    drop(fillers);
    drop(listener);
}

/// An origin whose `/healthz` answers 200 or 500 as `healthy` says; every other path `name`.
async fn checkable(name: &'static str, healthy: Arc<AtomicBool>) -> Origin {
    Origin::serve(move |req| {
        let healthy = healthy.clone();
        async move {
            if req.uri().path() == "/healthz" {
                if healthy.load(Ordering::SeqCst) {
                    respond(200, "ok")
                } else {
                    respond(500, "sick")
                }
            } else {
                respond(200, name)
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_health_checks_take_failing_upstreams_out() {
    let a_ok = Arc::new(AtomicBool::new(false));
    let b_ok = Arc::new(AtomicBool::new(true));
    let a = checkable("a", a_ok.clone()).await;
    let b = checkable("b", b_ok.clone()).await;
    let gw = gateway_with_routes(&format!(
        "[[routes]]\nname = \"hc\"\nupstreams = [\"{}\", \"{}\"]\nhealth_check = {{ path = \"/healthz\", interval = \"200ms\", timeout = \"1s\" }}\n",
        a.url(),
        b.url()
    ))
    .start()
    .await;
    let (au, bu) = (a.url(), b.url());
    let a_label = [("route", "hc"), ("upstream", au.as_str())];
    let b_label = [("route", "hc"), ("upstream", bu.as_str())];

    gw.wait_metric("kakuremichi_upstream_healthy", &a_label, |v| v == 0.0)
        .await;
    for _ in 0..6 {
        assert_eq!(body_of(&get(gw.http, "h", "/").await), "b");
    }

    // None healthy: 503 with Retry-After, and the upstreams are not called.
    b_ok.store(false, Ordering::SeqCst);
    gw.wait_metric("kakuremichi_upstream_healthy", &b_label, |v| v == 0.0)
        .await;
    let before = (
        a.requests.load(Ordering::SeqCst),
        b.requests.load(Ordering::SeqCst),
    );
    let r = get(gw.http, "h", "/").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "no_healthy_upstream");
    assert!(r.header("retry-after").is_some());
    // Only health checks reached the origins since (they answer on /healthz).
    let after = (
        a.requests.load(Ordering::SeqCst),
        b.requests.load(Ordering::SeqCst),
    );
    assert!(after.0 >= before.0 && after.1 >= before.1);

    // A recovered upstream comes back.
    a_ok.store(true, Ordering::SeqCst);
    gw.wait_metric("kakuremichi_upstream_healthy", &a_label, |v| v == 1.0)
        .await;
    assert_eq!(body_of(&get(gw.http, "h", "/").await), "a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_a_body_is_retried_on_another_upstream_when_the_first_refuses() {
    let sink = Origin::upload_sink().await;
    let dead = format!("http://127.0.0.1:{}", closed_port());
    let gw = gateway_with_routes(&format!(
        "[[routes]]\nname = \"two\"\nupstreams = [\"{dead}\", \"{}\"]\n",
        sink.url()
    ))
    .start()
    .await;
    // Round robin starts with the refusing member: the body must still arrive whole.
    for _ in 0..2 {
        let r = common::request(gw.http, "POST", "h", "/up", &[], vec![5u8; 10_240]).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["bytes"], 10_240);
    }
    assert_eq!(sink.requests.load(Ordering::SeqCst), 2);
}

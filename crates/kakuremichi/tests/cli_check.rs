//! `kakuremichi check --config FILE` and `--help`, run as a user would.

mod common;

use common::{run_cli, temp_dir};

/// Writes `text` to a fresh gateway.toml and runs `kakuremichi check` on it.
fn check(text: &str) -> (i32, String, String, String) {
    let dir = temp_dir("check");
    let file = dir.join("gateway.toml");
    std::fs::write(&file, text).unwrap();
    let out = run_cli(&["check", "--config", file.to_str().unwrap()]);
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.code().expect("exit code"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        file.display().to_string(),
    )
}

/// Asserts that `check` refuses `text` with exit 2 and `FILE:LINE:COLUMN: message` on stderr,
/// at `line` and `column`, with a message containing every one of `words`.
fn refused(text: &str, line: usize, column: usize, words: &[&str]) {
    let (code, stdout, stderr, file) = check(text);
    assert_eq!(code, 2, "exit status; stdout {stdout:?} stderr {stderr:?}");
    let first = stderr.lines().next().unwrap_or_default();
    let prefix = format!("{file}:{line}:{column}: ");
    assert!(
        first.starts_with(&prefix),
        "expected stderr to start with {prefix:?}, got {first:?}"
    );
    let message = &first[prefix.len()..];
    assert!(!message.trim().is_empty(), "empty message");
    for w in words {
        assert!(
            message.contains(w),
            "message {message:?} should mention {w:?}"
        );
    }
    assert!(stdout.trim().is_empty(), "nothing on stdout: {stdout:?}");
}

const HEAD: &str = "[gateway]\nhttp = \"127.0.0.1:8080\"\n";

#[test]
fn unknown_key_is_refused_with_its_position() {
    refused(
        &format!("{HEAD}max_conections = 5\n"),
        3,
        1,
        &["max_conections"],
    );
    // ... also inside a route, and inside an inline table.
    refused(
        &format!(
            "{HEAD}\n[[routes]]\nname = \"a\"\nupstream = \"http://127.0.0.1:1\"\nstrip_paht = true\n"
        ),
        7,
        1,
        &["strip_paht"],
    );
    refused(
        &format!(
            "{HEAD}\n[[routes]]\nname = \"a\"\nupstream = \"http://127.0.0.1:1\"\ntimeouts = {{ conect = \"5s\" }}\n"
        ),
        7,
        14,
        &["conect"],
    );
}

#[test]
fn bad_duration_is_refused() {
    refused(
        &format!("{HEAD}header_timeout = \"10 parsecs\"\n"),
        3,
        18,
        &["duration", "10 parsecs"],
    );
    // A bare number has no unit.
    refused(&format!("{HEAD}drain_timeout = 30\n"), 3, 17, &["30s"]);
    refused(
        &format!(
            "{HEAD}\n[[routes]]\nname = \"a\"\nupstream = \"http://127.0.0.1:1\"\ntimeouts = {{ idle = \"1y\" }}\n"
        ),
        7,
        21,
        &["duration"],
    );
}

#[test]
fn bad_size_is_refused() {
    refused(
        &format!("{HEAD}max_header_size = \"64 kilobananas\"\n"),
        3,
        19,
        &["64 kilobananas"],
    );
    refused(
        &format!(
            "{HEAD}\n[[routes]]\nname = \"a\"\nupstream = \"http://127.0.0.1:1\"\nmax_body = \"-5MiB\"\n"
        ),
        7,
        12,
        &["-5MiB"],
    );
}

#[test]
fn bad_address_is_refused() {
    refused(
        "[gateway]\nhttp = \"127.0.0.1:99999\"\n",
        2,
        8,
        &["127.0.0.1:99999"],
    );
    refused(
        "[gateway]\nhttp = \"127.0.0.1:8080\"\nadmin = \"localhost-9090\"\n",
        3,
        9,
        &["localhost-9090"],
    );
}

#[test]
fn bad_url_is_refused() {
    refused(
        &format!("{HEAD}\n[[routes]]\nname = \"a\"\nupstream = \"ftp://files.example\"\n"),
        6,
        12,
        &["ftp://files.example"],
    );
    refused(
        &format!(
            "{HEAD}\n[[routes]]\nname = \"a\"\nupstreams = [\"http://ok:1\", \"http//nope\"]\n"
        ),
        6,
        13,
        &["http//nope"],
    );
}

#[test]
fn bad_cidr_is_refused() {
    refused(
        &format!("{HEAD}trusted_proxies = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n"),
        3,
        19,
        &["10.0.0.0/33"],
    );
    refused(
        &format!(
            "{HEAD}\n[[routes]]\nname = \"a\"\nupstream = \"http://127.0.0.1:1\"\n\n[routes.ip]\nallow = [\"not-a-cidr\"]\n"
        ),
        9,
        9,
        &["not-a-cidr"],
    );
}

#[test]
fn duplicate_route_names_are_refused() {
    refused(
        &format!(
            "{HEAD}\n[[routes]]\nname = \"web\"\npath = \"/a\"\nupstream = \"http://127.0.0.1:1\"\n\n[[routes]]\nname = \"web\"\npath = \"/b\"\nupstream = \"http://127.0.0.1:2\"\n"
        ),
        10,
        8,
        &["duplicate", "web"],
    );
}

#[test]
fn two_routes_with_the_same_hosts_and_path_are_refused() {
    refused(
        &format!(
            "{HEAD}\n[[routes]]\nname = \"one\"\nhosts = [\"a.example\"]\npath = \"/api\"\nupstream = \"http://127.0.0.1:1\"\n\n[[routes]]\nname = \"two\"\nhosts = [\"A.example\"]\npath = \"/api/\"\nupstream = \"http://127.0.0.1:2\"\n"
        ),
        13,
        8,
        &["one", "two", "/api"],
    );
    // No hosts on either: both claim every host.
    refused(
        &format!(
            "{HEAD}\n[[routes]]\nname = \"one\"\nupstream = \"http://127.0.0.1:1\"\n\n[[routes]]\nname = \"two\"\npath = \"/\"\nupstream = \"http://127.0.0.1:2\"\n"
        ),
        10,
        8,
        &["one", "two"],
    );
}

#[test]
fn https_without_tls_is_refused() {
    refused(
        "[gateway]\nhttps = \"127.0.0.1:8443\"\n",
        2,
        9,
        &["https", "[tls]"],
    );
}

#[test]
fn a_valid_gateway_file_passes() {
    let text = r#"
[gateway]
http = "127.0.0.1:8080"
admin = "127.0.0.1:9090"
request_id_header = "x-correlation-id"
trusted_proxies = ["10.0.0.0/8", "::1/128"]
max_header_size = "64KiB"
header_timeout = "10s"
max_connections = 10000
drain_timeout = "30s"

[[routes]]
name = "ai-interview"
hosts = ["cloud.example.tech"]
path = "/ai-interview"
strip_path = true
methods = ["GET", "POST"]
upstream = "https://d111.cloudfront.example"
host_header = "d111.cloudfront.example"
tls_verify = true
max_body = "500MiB"
timeouts = { connect = "5s", response = "60s", idle = "24h" }

[[routes]]
name = "app"
hosts = ["*.example.tech"]
path = "/"
upstreams = ["http://10.0.0.1:8080", "http://10.0.0.2:8080"]
load_balance = "least_requests"
health_check = { path = "/healthz", interval = "5s" }
enabled = false

[routes.ip]
allow = ["203.0.113.0/24"]
deny = []

[routes.headers]
request_set = { "x-from" = "edge" }
request_remove = ["x-internal"]
response_set = { "strict-transport-security" = "max-age=31536000" }

[[routes]]
name = "same-path-other-methods"
hosts = ["cloud.example.tech"]
path = "/ai-interview"
methods = ["DELETE"]
upstream = "http://127.0.0.1:9"
"#;
    let (code, stdout, stderr, file) = check(text);
    assert_eq!(code, 0, "stderr: {stderr}");
    assert!(stderr.is_empty(), "stderr: {stderr}");
    assert!(
        stdout.contains(&file) && stdout.contains("ok") && stdout.contains("gateway"),
        "stdout: {stdout}"
    );
}

#[test]
fn agent_and_control_files_are_checked_too() {
    let dir = temp_dir("check-kinds");
    let agent = dir.join("agent.toml");
    std::fs::write(
        &agent,
        "[agent]\nname = \"home\"\ntoken = \"agt_x\"\ngateways = [\"gw1.example.com:7844\"]\n",
    )
    .unwrap();
    let out = run_cli(&["check", "--config", agent.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("agent"));

    let control = dir.join("control.toml");
    std::fs::write(
        &control,
        "[control]\nlisten = \"0.0.0.0:3000\"\nlistne = \"typo\"\n",
    )
    .unwrap();
    let out = run_cli(&["check", "--config", control.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!("{}:3:1: ", control.display())) && stderr.contains("listne"),
        "stderr: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_missing_file_exits_2_and_names_it() {
    let dir = temp_dir("check-missing");
    let file = dir.join("nope.toml");
    let out = run_cli(&["check", "--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&file.display().to_string()), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_gateway_refuses_to_start_on_an_invalid_file() {
    let dir = temp_dir("gateway-invalid");
    let file = dir.join("gateway.toml");
    std::fs::write(&file, format!("{HEAD}bogus = true\n")).unwrap();
    let out = run_cli(&["gateway", "--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:3:1: ", file.display())) && stderr.contains("bogus"),
        "stderr: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn help_works_on_every_subcommand() {
    for sub in ["gateway", "agent", "control", "check", "demo"] {
        let out = run_cli(&[sub, "--help"]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "`kakuremichi {sub} --help` stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains("Usage: kakuremichi") && stdout.contains(sub),
            "`kakuremichi {sub} --help` printed {stdout:?}"
        );
        if sub != "demo" {
            assert!(stdout.contains("--config"), "{sub}: {stdout}");
        }
    }
    let out = run_cli(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for sub in ["gateway", "agent", "control", "check", "demo"] {
        assert!(stdout.contains(sub), "top-level help lists {sub}: {stdout}");
    }
}

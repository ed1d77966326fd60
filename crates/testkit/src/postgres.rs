//! A throwaway PostgreSQL cluster from Debian's `postgresql` package: `initdb` into a
//! temporary folder, `pg_ctl start` on a free port of 127.0.0.1 (as the `postgres` user when
//! the tests run as root), databases made with `createdb`, `pg_ctl stop` on drop. When the
//! package is missing, `start` says so loudly and the caller skips its test.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::ports::free_port;

pub struct Postgres {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    run_as: Option<String>,
    next_db: AtomicU32,
}

fn find_bin() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .ok()
        .is_some_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Prints why `who` (the tests that wanted the cluster) are skipped, loudly.
fn skip(who: &str, why: &str) -> Option<Postgres> {
    let line = "!".repeat(78);
    eprintln!(
        "\n{line}\nSKIPPED: {who}: {why}\nInstall Debian's package (apt-get install -y postgresql) to run them.\n{line}\n"
    );
    None
}

/// A folder name no other test run uses.
fn unique_tag() -> String {
    static COUNT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    format!("{}-{n}-{nanos:x}", std::process::id())
}

impl Postgres {
    /// Starts a cluster, or returns `None` after a loud message naming `who` (the tests
    /// that are skipped) when that is impossible.
    pub fn start(who: &str) -> Option<Postgres> {
        let Some(bin) = find_bin() else {
            return skip(who, "no /usr/lib/postgresql/*/bin/initdb");
        };
        let run_as = if is_root() {
            let has_user = Command::new("id")
                .arg("postgres")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !has_user {
                return skip(
                    who,
                    "running as root and there is no `postgres` user to run initdb as",
                );
            }
            Some("postgres".to_string())
        } else {
            None
        };
        let dir = std::env::temp_dir().join(format!("kakuremichi-pg-{}", unique_tag()));
        std::fs::create_dir_all(&dir).expect("pg dir");
        if let Some(user) = &run_as {
            let ok = Command::new("chown")
                .arg(format!("{user}:"))
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return skip(who, "cannot chown the data folder to postgres");
            }
        }
        let pg = Postgres {
            dir,
            bin,
            port: free_port(),
            run_as,
            next_db: AtomicU32::new(0),
        };
        let data = pg.dir.join("data");
        let out = pg
            .command("initdb")
            .args([
                "-U",
                "kakuremichi",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "-N",
                "-D",
            ])
            .arg(&data)
            .output()
            .expect("run initdb");
        if !out.status.success() {
            return skip(
                who,
                &format!("initdb failed: {}", String::from_utf8_lossy(&out.stderr)),
            );
        }
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            pg.port,
            pg.dir.display()
        );
        let out = pg
            .command("pg_ctl")
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(pg.dir.join("log"))
            .args(["-w", "-t", "60", "-o", &options, "start"])
            .output()
            .expect("run pg_ctl");
        if !out.status.success() {
            let log = std::fs::read_to_string(pg.dir.join("log")).unwrap_or_default();
            return skip(
                who,
                &format!(
                    "pg_ctl start failed: {}{log}",
                    String::from_utf8_lossy(&out.stderr)
                ),
            );
        }
        Some(pg)
    }

    fn command(&self, tool: &str) -> Command {
        let path = self.bin.join(tool);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://kakuremichi@127.0.0.1:{}/{db}", self.port)
    }

    /// Creates an empty database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        let out = self
            .command("createdb")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "kakuremichi",
                name,
            ])
            .output()
            .expect("run createdb");
        assert!(
            out.status.success(),
            "createdb {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.url(name)
    }

    /// Creates an empty database with a name not used before on this cluster.
    pub fn fresh_database(&self) -> String {
        let n = self.next_db.fetch_add(1, Ordering::Relaxed);
        self.create_database(&format!("db_{n}"))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

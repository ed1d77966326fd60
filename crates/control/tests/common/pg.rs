//! A throwaway PostgreSQL cluster from Debian's `postgresql` package: `initdb` into a
//! temporary folder, `pg_ctl start` on a free port of 127.0.0.1 (as the `postgres` user when
//! the tests run as root), a fresh database per test, `pg_ctl stop` on drop.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Prints why PostgreSQL tests are skipped, loudly.
fn skip(why: &str) -> Option<Postgres> {
    let line = "!".repeat(78);
    eprintln!(
        "\n{line}\nSKIPPED: PostgreSQL tests: {why}\nInstall Debian's package (apt-get install -y postgresql) to run them.\n{line}\n"
    );
    None
}

impl Postgres {
    /// Starts a cluster, or returns `None` after a loud message when that is impossible.
    pub fn start() -> Option<Postgres> {
        let Some(bin) = find_bin() else {
            return skip("no /usr/lib/postgresql/*/bin/initdb");
        };
        let run_as = if is_root() {
            let has_user = Command::new("id")
                .arg("postgres")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !has_user {
                return skip("running as root and there is no `postgres` user to run initdb as");
            }
            Some("postgres".to_string())
        } else {
            None
        };
        let mut b = [0u8; 6];
        getrandom::fill(&mut b).expect("random");
        let tag: String = b.iter().map(|x| format!("{x:02x}")).collect();
        let dir = std::env::temp_dir().join(format!("kakuremichi-pg-{tag}"));
        std::fs::create_dir_all(&dir).expect("pg dir");
        if let Some(user) = &run_as {
            let ok = Command::new("chown")
                .arg(format!("{user}:"))
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return skip("cannot chown the data folder to postgres");
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
            return skip(&format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
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
            return skip(&format!(
                "pg_ctl start failed: {}{log}",
                String::from_utf8_lossy(&out.stderr)
            ));
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

    /// Creates an empty database and returns its URL.
    pub async fn fresh_database(&self) -> String {
        let n = self.next_db.fetch_add(1, Ordering::Relaxed);
        let name = format!("control_{n}");
        let (client, conn) = tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls)
            .await
            .expect("connect to postgres");
        let task = tokio::spawn(conn);
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create database");
        drop(client);
        let _ = task.await;
        self.url(&name)
    }

    pub fn data_dir(&self) -> &Path {
        &self.dir
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

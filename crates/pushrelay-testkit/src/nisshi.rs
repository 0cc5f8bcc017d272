//! A Nisshi broker of a test's own, on SQLite storage in a folder of its own, so the test
//! can kill and restart it (the shared broker of `scripts/test` must stay up for the
//! others). Needs the `nisshi` binary on `PATH`; `scripts/test` installs it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running Nisshi; killed when dropped.
#[derive(Debug)]
pub struct OwnNisshi {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl OwnNisshi {
    /// Starts Nisshi on a free loopback port with storage under a new temp folder, or
    /// `None` when the `nisshi` binary is missing.
    pub fn start(name: &str) -> Option<Self> {
        let dir = std::env::temp_dir().join(crate::unique_prefix(name));
        std::fs::create_dir_all(&dir).expect("broker folder");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        Self::start_on(port, &dir)
    }

    fn start_on(port: u16, dir: &Path) -> Option<Self> {
        let child = Command::new("nisshi")
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{port}"),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{port}"),
                "--storage-engine",
                "sqlite://nisshi.db",
                "--group-initial-rebalance-delay",
                "0s",
            ])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "nisshi did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(Self {
            child: Some(child),
            port,
            dir: dir.to_owned(),
        })
    }

    /// Its bootstrap address.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL, and wait for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGKILL, stay down for `down`, start again on the same port and storage.
    pub fn restart_after(&mut self, down: Duration) {
        self.kill();
        std::thread::sleep(down);
        let mut again = Self::start_on(self.port, &self.dir).expect("nisshi restarts");
        self.child = again.child.take();
    }
}

impl Drop for OwnNisshi {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

//! A real etcd cluster for tests: three members (or as many as asked) on loopback ports the
//! OS picks, data in a temporary directory, each member a process ended when the cluster is
//! dropped. Needs the `etcd` program (Debian's `etcd-server`; `bash .ci/run` installs it,
//! `ETCD` names another); [`Cluster::start`] says why it cannot run otherwise.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The etcd program: `$ETCD`, else `etcd` on the PATH.
fn program() -> Result<String, String> {
    let name = std::env::var("ETCD").unwrap_or_else(|_| "etcd".into());
    let found = Command::new(&name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    found
        .then_some(name)
        .ok_or_else(|| "etcd is not installed (bash .ci/run installs etcd-server)".into())
}

/// Ports free right now on 127.0.0.1, held until all are picked so none repeats.
fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// A running etcd cluster.
pub struct Cluster {
    members: Vec<Option<Child>>,
    /// Each member's client endpoint, `127.0.0.1:PORT`.
    pub endpoints: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `size` members and waits until the cluster answers (has a leader).
    pub fn start(size: usize) -> Result<Self, String> {
        let etcd = program()?;
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let ports = free_ports(2 * size);
        let (clients, peers) = ports.split_at(size);
        let names: Vec<String> = (0..size).map(|i| format!("e{i}")).collect();
        let initial: Vec<String> = names
            .iter()
            .zip(peers)
            .map(|(n, p)| format!("{n}=http://127.0.0.1:{p}"))
            .collect();
        let token = format!("gc-test-{}-{}", std::process::id(), clients[0]);
        let mut members = Vec::new();
        for i in 0..size {
            let log = std::fs::File::create(dir.path().join(format!("{}.log", names[i])))
                .map_err(|e| e.to_string())?;
            let client = format!("http://127.0.0.1:{}", clients[i]);
            let peer = format!("http://127.0.0.1:{}", peers[i]);
            let child = Command::new(&etcd)
                .args([
                    "--name",
                    &names[i],
                    "--data-dir",
                    &dir.path().join(&names[i]).display().to_string(),
                    "--listen-client-urls",
                    &client,
                    "--advertise-client-urls",
                    &client,
                    "--listen-peer-urls",
                    &peer,
                    "--initial-advertise-peer-urls",
                    &peer,
                    "--initial-cluster",
                    &initial.join(","),
                    "--initial-cluster-token",
                    &token,
                    "--initial-cluster-state",
                    "new",
                    // Quick elections on loopback: a member stopped costs half a second.
                    "--heartbeat-interval",
                    "50",
                    "--election-timeout",
                    "500",
                ])
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .map_err(|e| format!("cannot start etcd: {e}"))?;
            members.push(Some(child));
        }
        let cluster = Self {
            members,
            endpoints: clients.iter().map(|p| format!("127.0.0.1:{p}")).collect(),
            _dir: dir,
        };
        cluster.wait_until_ready(Duration::from_secs(30))?;
        Ok(cluster)
    }

    /// `etcd://` URL of the whole cluster, as the tracker's `--registry` takes it.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoints.join(","))
    }

    /// Every member answers a write through the gateway (a leader is elected).
    fn wait_until_ready(&self, patience: Duration) -> Result<(), String> {
        let deadline = Instant::now() + patience;
        for endpoint in &self.endpoints {
            loop {
                if health(endpoint) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("etcd at {endpoint} did not become healthy"));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Ok(())
    }

    /// Stops member `i` at once (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Whether the member at `endpoint` reports itself healthy (`GET /health`).
fn health(endpoint: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(endpoint) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /health HTTP/1.0\r\nHost: {endpoint}\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.contains("\"health\":\"true\"")
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

//! A real `redis-server` for the fleet's tests: started on a free loopback port without
//! persistence, killed when dropped; a one-node Cluster too.

use std::time::Duration;

use super::free_port;

/// A `redis-server` on a free loopback port; killed when dropped.
pub struct Redis {
    pub child: Option<std::process::Child>,
    pub port: u16,
    /// Extra arguments (a cluster node's).
    pub args: Vec<String>,
    /// A cluster node's working directory (its `nodes.conf`), removed when dropped.
    pub dir: Option<std::path::PathBuf>,
    /// Arguments before the options (a Sentinel's configuration file and `--sentinel`).
    pub first: Vec<String>,
}

impl Redis {
    /// Starts one, or `None` (after saying so) when the program is missing outside CI.
    pub fn start() -> Option<Redis> {
        Redis::start_with(Vec::new())
    }

    /// A one-node Redis Cluster owning every slot: it refuses (CROSSSLOT) any command whose
    /// keys hash to different slots, as every Cluster does.
    ///
    /// The node starts in an empty directory of its own: a `nodes.conf` left there by an
    /// earlier run (same name, another process) would hand it the slots already, and
    /// ADDSLOTS would fail with "Slot 0 is already busy".
    pub async fn start_cluster() -> Option<Redis> {
        let dir = std::env::temp_dir().join(format!(
            "timgate-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut redis = Redis::start_with(vec![
            "--cluster-enabled".into(),
            "yes".into(),
            "--dir".into(),
            dir.to_str().unwrap().into(),
        ])?;
        redis.dir = Some(dir);
        let mut client = redis.client().await;
        let mut add = redis::cmd("CLUSTER");
        add.arg("ADDSLOTS").arg((0..16384).collect::<Vec<u16>>());
        let () = add.query_async(&mut client).await.unwrap();
        super::eventually(|| {
            let mut client = client.clone();
            async move {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut client)
                    .await
                    .unwrap();
                info.contains("cluster_state:ok")
            }
        })
        .await;
        Some(redis)
    }

    pub fn start_with(args: Vec<String>) -> Option<Redis> {
        let found = std::env::var_os("PATH").is_some_and(|path| {
            std::env::split_paths(&path).any(|dir| dir.join("redis-server").is_file())
        });
        if !found {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is not on PATH, and CI is set: .ci/run installs it"
            );
            eprintln!(
                "\n*** SKIPPED: redis-server is not on PATH; install it (apt-get install redis-server) to run the fleet tests ***\n"
            );
            return None;
        }
        let mut redis = Redis {
            child: None,
            port: 0,
            args,
            dir: None,
            first: Vec::new(),
        };
        redis.spawn_on_a_free_port();
        Some(redis)
    }

    /// Starts the server on a port free a moment ago, and on another should that one be
    /// taken by the time the server binds it (a free port is only free until someone binds
    /// it: another test's server, or a connection's local port).
    pub fn spawn_on_a_free_port(&mut self) {
        let mut failed = Vec::new();
        for _ in 0..ATTEMPTS {
            self.port = free_port();
            match self.try_spawn() {
                Ok(()) => return,
                Err(why) => failed.push(why),
            }
        }
        panic!("redis-server did not start: {failed:?}");
    }

    /// Starts the server again on its port (a restart keeps the address).
    pub fn spawn(&mut self) {
        if let Err(why) = self.try_spawn() {
            panic!("redis-server did not start again: {why}");
        }
    }

    /// Starts the server and waits until it serves, as itself, on `self.port`.
    fn try_spawn(&mut self) -> Result<(), String> {
        let mut child = std::process::Command::new("redis-server")
            .args(&self.first)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server starts");
        // A server started with a password answers nothing else until it is given.
        let password = self
            .args
            .windows(2)
            .find(|pair| pair[0] == "--requirepass")
            .map(|pair| pair[1].as_str());
        match serving(&mut child, self.port, password) {
            Ok(()) => {
                self.child = Some(child);
                Ok(())
            }
            Err(why) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(why)
            }
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn signal(&self, signal: rustix::process::Signal) {
        let id = self.child.as_ref().unwrap().id();
        let pid = rustix::process::Pid::from_raw(i32::try_from(id).unwrap()).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }

    /// SIGKILL: Redis and all its state are gone.
    pub fn kill(&mut self) {
        self.signal(rustix::process::Signal::KILL);
        self.child.take().unwrap().wait().unwrap();
    }

    /// A new, empty Redis on the same port.
    pub fn restart(&mut self) {
        self.spawn();
    }

    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

/// How many free ports a server is tried on before its start counts as failed.
const ATTEMPTS: usize = 5;

/// Waits until the `redis-server` `child` serves on `port`: `Err` when it exits first (the
/// port was taken meanwhile) or does not serve within 10 s.
fn serving(
    child: &mut std::process::Child,
    port: u16,
    password: Option<&str>,
) -> Result<(), String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("exited ({status}) before serving on port {port}"));
        }
        if answers_as(child.id(), port, password) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("not serving on port {port} within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether the server on `port` is the process `pid`: a connection that merely succeeds may
/// reach another server that holds the port, or the probe's own socket (a connection to a
/// port of the ephemeral range nobody listens on can be given that very port, and connects
/// to itself).
fn answers_as(pid: u32, port: u16, password: Option<&str>) -> bool {
    let auth = password.map_or(String::new(), |password| format!(":{password}@"));
    let info = redis::Client::open(format!("redis://{auth}127.0.0.1:{port}/"))
        .and_then(|client| client.get_connection_with_timeout(Duration::from_secs(1)))
        .and_then(|mut connection| {
            connection.set_read_timeout(Some(Duration::from_secs(1)))?;
            redis::cmd("INFO")
                .arg("server")
                .query::<String>(&mut connection)
        });
    info.is_ok_and(|info| {
        info.lines()
            .any(|line| line.trim() == format!("process_id:{pid}"))
    })
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

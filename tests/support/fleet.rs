//! The fleet's test kit: a real `redis-server` (one, a Cluster node, and more below), and
//! gateway processes under a fixed load whose answers are tallied and whose sends are
//! counted at the upstream.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;

use super::{Answer, Caller, Process, Recorder, free_port, sample};

pub const SEND: &str = "/v4/openim/sendmsg";
/// The smallest sendmsg the rules let through (…/269/2282: To_Account, MsgRandom, MsgBody).
pub const SEND_BODY: &str = r#"{"To_Account":"b","MsgRandom":1,"MsgBody":[{"MsgType":"TIMTextElem","MsgContent":{"Text":"hi"}}]}"#;

pub use super::redis::Redis;

/// How each request was answered.
#[derive(Debug, Default)]
pub struct Tally {
    pub ok: usize,
    pub throttled: usize,
    pub throttled_without_retry_after: usize,
    pub other: Vec<u16>,
}

impl Tally {
    /// Counts `other`'s answers in too.
    pub fn add(&mut self, other: Tally) {
        self.ok += other.ok;
        self.throttled += other.throttled;
        self.throttled_without_retry_after += other.throttled_without_retry_after;
        self.other.extend(other.other);
    }

    fn count(&mut self, answer: &Answer) {
        match answer.status.as_u16() {
            200 => self.ok += 1,
            429 => {
                self.throttled += 1;
                if !answer.headers.contains_key("retry-after") {
                    self.throttled_without_retry_after += 1;
                }
            }
            status => self.other.push(status),
        }
    }
}

/// The gateway addresses of `replicas`.
pub fn addrs(replicas: &[Process]) -> Vec<SocketAddr> {
    replicas.iter().map(|r| r.addr).collect()
}

/// The request a load repeats: a POST of `body` to `path`, with `headers`.
#[derive(Clone)]
pub struct Post {
    pub path: &'static str,
    pub headers: &'static [(&'static str, &'static str)],
    pub body: Bytes,
}

impl Post {
    /// `body` to `path`, without headers of its own.
    pub fn of(path: &'static str, body: impl Into<Bytes>) -> Post {
        Post {
            path,
            headers: &[],
            body: body.into(),
        }
    }

    /// The smallest sendmsg (`SEND`, `SEND_BODY`).
    pub fn send() -> Post {
        Post::of(SEND, SEND_BODY)
    }

    /// The same with `headers` on every request.
    pub fn with(self, headers: &'static [(&'static str, &'static str)]) -> Post {
        Post { headers, ..self }
    }
}

/// Offers `rate` of `post` a second to `addr` for `seconds`, on a fixed schedule (not
/// waiting for answers), and tallies every answer.
pub async fn offer(addr: SocketAddr, post: Post, rate: u32, seconds: f64) -> Tally {
    let caller = Caller::default();
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = Instant::now() + Duration::from_secs_f64(seconds);
    let mut requests = Vec::new();
    while Instant::now() < end {
        ticks.tick().await;
        let (caller, post) = (caller.clone(), post.clone());
        requests.push(tokio::spawn(async move {
            caller
                .send_with("POST", addr, post.path, post.headers, post.body)
                .await
        }));
    }
    let mut tally = Tally::default();
    for request in requests {
        tally.count(&request.await.expect("every request is answered"));
    }
    tally
}

/// `offer` to each of `replicas` at once; their answers tallied together.
pub async fn offer_each(replicas: Vec<SocketAddr>, post: Post, rate: u32, seconds: f64) -> Tally {
    let loads: Vec<_> = replicas
        .into_iter()
        .map(|addr| tokio::spawn(offer(addr, post.clone(), rate, seconds)))
        .collect();
    let mut tally = Tally::default();
    for load in loads {
        tally.add(load.await.expect("every load ends"));
    }
    tally
}

pub fn arrivals(upstream: &Recorder) -> Vec<Instant> {
    upstream.seen().iter().map(|s| s.at).collect()
}

pub fn count_between(times: &[Instant], from: Instant, to: Instant) -> usize {
    times.iter().filter(|t| **t >= from && **t < to).count()
}

/// Waits until every replica has beaten live at least once, so the fleet knows its size,
/// and a request passes: a Redis seen for the first time holds its guard shut for
/// `QUARANTINE`, as after a restart.
pub async fn fleet_formed(replicas: &[Process], caller: &Caller) {
    let size = replicas.len() as f64;
    for replica in replicas {
        let admin = replica.admin;
        super::eventually(|| async move {
            let text = caller.get(admin, "/metrics").await.body;
            sample(
                std::str::from_utf8(&text).unwrap(),
                "timgate_fleet_members",
                &[],
            ) >= size
        })
        .await;
    }
    let addr = replicas[0].addr;
    super::eventually(|| async move { caller.post(addr, SEND, SEND_BODY).await.status == 200 })
        .await;
}

/// An empty directory of its own for a server's files, under the system's temporary one.
fn own_dir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "timgate-{what}-{}-{}",
        std::process::id(),
        free_port()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The first line of `INFO section` holding `field:`, its value.
pub async fn info(redis: &Redis, section: &str, field: &str) -> Option<String> {
    let mut client = redis.client().await;
    let text: String = redis::cmd("INFO")
        .arg(section)
        .query_async(&mut client)
        .await
        .ok()?;
    let prefix = format!("{field}:");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix).map(|v| v.trim().to_owned()))
}

/// Waits (up to `within`) until `probe` holds.
pub async fn within<F: std::future::Future<Output = bool>>(
    within: Duration,
    what: &str,
    mut probe: impl FnMut() -> F,
) {
    let deadline = Instant::now() + within;
    while !probe().await {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A primary, one replica of it and three Sentinels monitoring it as `mymaster` (quorum
/// two, down after 1 s), all on free loopback ports; stopped when dropped.
pub struct Sentinels {
    pub primary: Redis,
    pub replica: Redis,
    pub sentinels: Vec<Redis>,
}

impl Sentinels {
    /// Starts them and waits until every Sentinel knows the replica and the two other
    /// Sentinels (a failover needs both); `None` when redis-server is missing outside CI.
    pub async fn start() -> Option<Sentinels> {
        let primary = Redis::start()?;
        let replica = Redis::start_with(vec![
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary.port.to_string(),
        ])?;
        within(Duration::from_secs(10), "the replica in sync", || async {
            info(&replica, "replication", "master_link_status")
                .await
                .as_deref()
                == Some("up")
        })
        .await;
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            sentinels.push(Sentinels::sentinel(primary.port)?);
        }
        for sentinel in &sentinels {
            within(
                Duration::from_secs(15),
                "the Sentinels know each other",
                || async {
                    let mut client = sentinel.client().await;
                    let others: Vec<redis::Value> = redis::cmd("SENTINEL")
                        .arg("SENTINELS")
                        .arg("mymaster")
                        .query_async(&mut client)
                        .await
                        .unwrap_or_default();
                    let replicas: Vec<redis::Value> = redis::cmd("SENTINEL")
                        .arg("REPLICAS")
                        .arg("mymaster")
                        .query_async(&mut client)
                        .await
                        .unwrap_or_default();
                    others.len() == 2 && replicas.len() == 1
                },
            )
            .await;
        }
        Some(Sentinels {
            primary,
            replica,
            sentinels,
        })
    }

    fn sentinel(primary: u16) -> Option<Redis> {
        let dir = own_dir("sentinel");
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "sentinel monitor mymaster 127.0.0.1 {primary} 2\n\
                 sentinel down-after-milliseconds mymaster 1000\n\
                 sentinel failover-timeout mymaster 10000\n"
            ),
        )
        .unwrap();
        let mut sentinel = Redis {
            child: None,
            port: 0,
            args: vec!["--dir".into(), dir.to_str().unwrap().into()],
            dir: Some(dir),
            first: vec![conf.to_str().unwrap().into(), "--sentinel".into()],
        };
        sentinel.spawn_on_a_free_port();
        Some(sentinel)
    }

    /// The `sentinels = [...]` line of a `[fleet]` table.
    pub fn addresses(&self) -> String {
        let each: Vec<String> = self
            .sentinels
            .iter()
            .map(|s| format!("\"127.0.0.1:{}\"", s.port))
            .collect();
        format!("[{}]", each.join(", "))
    }

    /// The port of the primary the first Sentinel that answers names.
    pub async fn primary_port(&self) -> Option<u16> {
        for sentinel in &self.sentinels {
            if sentinel.child.is_none() {
                continue;
            }
            let mut client = sentinel.client().await;
            let named: Result<(String, u16), _> = redis::cmd("SENTINEL")
                .arg("GET-MASTER-ADDR-BY-NAME")
                .arg("mymaster")
                .query_async(&mut client)
                .await;
            if let Ok((_, port)) = named {
                return Some(port);
            }
        }
        None
    }
}

/// A Redis Cluster of three masters with one replica each (`cluster-node-timeout` 1 s),
/// made by `redis-cli --cluster create`; stopped when dropped.
pub struct Cluster {
    pub nodes: Vec<Redis>,
}

impl Cluster {
    /// Starts it and waits until every node says the Cluster is ok and every replica is in
    /// sync; `None` when redis-server or redis-cli is missing outside CI.
    pub async fn start() -> Option<Cluster> {
        if !on_path("redis-cli") {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-cli is not on PATH, and CI is set: .ci/run installs it (redis-tools)"
            );
            eprintln!(
                "\n*** SKIPPED: redis-cli is not on PATH; install it (apt-get install redis-tools) to run the Cluster tests ***\n"
            );
            return None;
        }
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let dir = own_dir("cluster");
            let mut node = Redis::start_with(vec![
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-node-timeout".into(),
                "1000".into(),
                "--dir".into(),
                dir.to_str().unwrap().into(),
            ])?;
            node.dir = Some(dir);
            nodes.push(node);
        }
        let created = std::process::Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("redis-cli runs (package redis-tools)");
        assert!(created.success(), "redis-cli --cluster create failed");
        let cluster = Cluster { nodes };
        for node in &cluster.nodes {
            within(
                Duration::from_secs(15),
                "the Cluster ok on every node",
                || async { info_cluster(node).await.contains("cluster_state:ok") },
            )
            .await;
            within(Duration::from_secs(15), "every replica in sync", || async {
                match info(node, "replication", "role").await.as_deref() {
                    Some("master") => true,
                    _ => {
                        info(node, "replication", "master_link_status")
                            .await
                            .as_deref()
                            == Some("up")
                    }
                }
            })
            .await;
        }
        Some(cluster)
    }

    /// The `cluster_nodes = [...]` line of a `[fleet]` table: every node.
    pub fn addresses(&self) -> String {
        let each: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("\"127.0.0.1:{}\"", n.port))
            .collect();
        format!("[{}]", each.join(", "))
    }

    /// The index (in `nodes`) of the master that serves the slot of hash tag `tag`,
    /// as the first live node tells.
    pub async fn master_of(&self, tag: &str) -> usize {
        let node = self.nodes.iter().find(|n| n.child.is_some()).unwrap();
        let mut client = node.client().await;
        let slot: u16 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(tag)
            .query_async(&mut client)
            .await
            .unwrap();
        let ranges: Vec<redis::Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query_async(&mut client)
            .await
            .unwrap();
        for range in ranges {
            let (from, to, master): (u16, u16, (String, u16)) = match range {
                redis::Value::Array(items) if items.len() >= 3 => (
                    redis::from_redis_value(items[0].clone()).unwrap(),
                    redis::from_redis_value(items[1].clone()).unwrap(),
                    {
                        let node: Vec<redis::Value> =
                            redis::from_redis_value(items[2].clone()).unwrap();
                        (
                            redis::from_redis_value(node[0].clone()).unwrap(),
                            redis::from_redis_value(node[1].clone()).unwrap(),
                        )
                    },
                ),
                _ => continue,
            };
            if (from..=to).contains(&slot) {
                return self.nodes.iter().position(|n| n.port == master.1).unwrap();
            }
        }
        panic!("no master serves slot {slot}");
    }
}

/// `CLUSTER INFO` of `node`, empty if it does not answer.
pub async fn info_cluster(node: &Redis) -> String {
    let mut client = node.client().await;
    redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async(&mut client)
        .await
        .unwrap_or_default()
}

/// Whether `program` is in a directory of `PATH`.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

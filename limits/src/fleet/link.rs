//! How the fleet reaches Redis: one small trait, and redis-rs's implementation of it.
//!
//! Every call the fleet makes (a batch of turns or guards, a heartbeat, a release, a
//! slow-down, leaving) is one run of its script (`fleet/script.lua`) with the keys and arguments the
//! fleet puts together; what a link adds is the way there, its time limit, and why a call
//! failed. The simulations in `tests.rs` reach a real `redis-server` through a second
//! implementation, at a Redis time they fix.
//!
//! redis-rs's implementation runs on one of three connections ([`Way`]): a server at a URL
//! (a `ConnectionManager`, reconnecting to the same address), the primary that Redis
//! Sentinel names ([`Sentinel`]: asked again after a failed call, and a new connection when
//! it names another server), or a Redis Cluster ([`Cluster`]: redis-rs follows `MOVED` and
//! `ASK` and refreshes its slot map itself).
//!
//! # A promoted replica
//! A replica promoted by a failover may lack the primary's last writes (replication is
//! asynchronous), so its lanes may miss sends admitted in the last second. Before its first
//! call after any failure that may mean another server (refused, dropped, timed out, or a
//! topology error), the link asks the server for its replication ID (`master_replid`, which
//! a promoted replica, and a restarted server, draw anew) in a small script of its own on
//! the epoch key's slot; when it differs from the one this link saw last, the same script
//! deletes the epoch key, so the fleet's script treats the state as lost and its guard
//! admits nothing for `QUARANTINE` (`ARGUMENT.md` §5, lost state). A server that answers
//! again under the same ID (a connection that broke, a pause) keeps its epoch.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::SentinelClient;
use redis::{
    AsyncConnectionConfig, ErrorKind, RedisResult, Script, ServerErrorKind, ToSingleRedisArg,
};
use tracing::info;

use super::cause::{Cause, Causes};

/// A call's answer to come: the script's reply, or why there is none.
pub(super) type Answer<'a> =
    Pin<Box<dyn Future<Output = Result<redis::Value, String>> + Send + 'a>>;

/// The fleet's way to Redis.
pub(super) trait Link: Send + Sync {
    /// The script this link runs: its hash heads every call (`Call::new`).
    fn script(&self) -> &Script;

    /// Runs `call`, answered within `timeout` or failed, saying why.
    fn eval(&self, call: Call, timeout: Duration) -> Answer<'_>;
}

/// One run of the script, as the command Redis receives: `EVALSHA`, the script's hash, the
/// number of keys, the keys, then the arguments (ARGV[1] the op; ARGV[2] empty, for the
/// script to read Redis's own clock, or a time the link fixes instead). Each is written
/// once, into the one buffer the command is sent from: a request's call carries a dozen.
pub(super) struct Call {
    command: redis::Cmd,
    keys: usize,
}

/// The words before the keys: `EVALSHA`, the hash, the number of keys.
const HEAD: usize = 3;

impl Call {
    /// A call of `script`'s `op` on `keys`; its arguments after the op follow (`arg`).
    pub(super) fn new<'a>(
        script: &Script,
        op: &str,
        keys: impl Iterator<Item = &'a str> + Clone,
    ) -> Call {
        let n = keys.clone().count();
        // Room for the usual call: a batch of one request on its app's and API's lanes.
        let mut command = redis::Cmd::with_capacity(20, 320);
        command.arg("EVALSHA").arg(script.get_hash()).arg(n);
        for key in keys {
            command.arg(key);
        }
        command.arg(op).arg("");
        Call { command, keys: n }
    }

    /// Appends one argument, as Redis reads it (a number in decimal).
    pub(super) fn arg(&mut self, arg: impl ToSingleRedisArg) -> &mut Call {
        self.command.arg(arg);
        self
    }

    /// Each word of the command, as sent.
    pub(super) fn words(&self) -> impl Iterator<Item = &[u8]> {
        self.command.args_iter().map(|word| match word {
            redis::Arg::Simple(word) => word,
            // A call sets no cursor (a scan's).
            _ => &[],
        })
    }

    /// The keys, as sent.
    pub(super) fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.words().skip(HEAD).take(self.keys)
    }

    /// The arguments, as sent.
    #[cfg(test)]
    pub(super) fn args(&self) -> impl Iterator<Item = &[u8]> {
        self.words().skip(HEAD + self.keys)
    }
}

/// How long finding a server may take (the Sentinels' answer and a connection to the
/// primary, or a Cluster's slot map) before it is tried again on the next call.
const FIND: Duration = Duration::from_secs(1);

/// Asks the server for its replication ID, and deletes the epoch key (KEYS[1]) when the
/// ID differs from the one last seen (ARGV[1], empty at first): a promoted replica, or a
/// restarted server, starts a new epoch.
const IDENTITY: &str = r"
local id = string.match(redis.call('INFO', 'replication'), 'master_replid:(%x+)') or ''
if ARGV[1] ~= '' and ARGV[1] ~= id then
  redis.call('DEL', KEYS[1])
end
return id
";

/// Where a link's connection comes from.
pub(super) trait Way: Send + Sync + 'static {
    /// The connection the script runs on.
    type Connection: ConnectionLike + Clone + Send + 'static;

    /// The connection to use now, or `None` while one is being found.
    fn connection(&self) -> Option<Self::Connection>;

    /// A call failed with `cause`: the server may have moved.
    fn lost(&self, _cause: Cause) {}
}

impl Way for ConnectionManager {
    type Connection = ConnectionManager;

    /// Always there: it reconnects to its address by itself.
    fn connection(&self) -> Option<ConnectionManager> {
        Some(self.clone())
    }
}

/// The real connection, run by EVALSHA; the script reads Redis's own clock.
pub(super) struct Redis<W: Way> {
    way: W,
    script: Arc<Script>,
    identity: Arc<Script>,
    /// The replication ID last seen, and whether calls since went to that server.
    seen: Arc<Mutex<Seen>>,
    /// Why calls fail, logged once per change (shared with the fleet).
    causes: Arc<Causes>,
}

/// What the link knows of the server it calls.
#[derive(Default)]
struct Seen {
    id: Option<String>,
    current: bool,
}

impl<W: Way> Redis<W> {
    /// `script` on `way`'s connection, its failures told to `causes`.
    pub(super) fn new(way: W, script: Script, causes: Arc<Causes>) -> Redis<W> {
        Redis {
            way,
            script: Arc::new(script),
            identity: Arc::new(Script::new(IDENTITY)),
            seen: Arc::default(),
            causes,
        }
    }

    /// The epoch key and the ID last seen, when the server must be asked who it is first.
    fn to_check(&self, call: &Call) -> Option<(Vec<u8>, String)> {
        let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        // KEYS[3] is the epoch key in every call of the fleet's script.
        let epoch = call.keys().nth(2).filter(|_| !seen.current)?;
        Some((epoch.to_vec(), seen.id.clone().unwrap_or_default()))
    }

    /// A call failed with `cause`: the next call asks who the server is, if it may be another.
    fn lost(&self, cause: Cause) {
        if matches!(
            cause,
            Cause::Refused | Cause::Dropped | Cause::Timeout | Cause::Topology
        ) {
            self.seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .current = false;
        }
        self.way.lost(cause);
    }
}

/// Runs the identity script on `connection`, recording the server's replication ID.
async fn check<C: ConnectionLike>(
    connection: &mut C,
    identity: &Script,
    seen: &Mutex<Seen>,
    (epoch, last): (Vec<u8>, String),
) -> RedisResult<()> {
    let id: String = identity
        .key(epoch)
        .arg(&last)
        .invoke_async(connection)
        .await?;
    if !last.is_empty() && id != last {
        info!("fleet: Redis is another server (a failover or a restart): its epoch starts anew");
    }
    let mut seen = seen.lock().unwrap_or_else(PoisonError::into_inner);
    *seen = Seen {
        id: Some(id),
        current: true,
    };
    Ok(())
}

/// `call` run, its script loaded first when the server lacks it (as
/// `ScriptInvocation::invoke_async` does, which would copy each key and argument into a
/// buffer of its own, then all of them into the command).
async fn evalsha<C: ConnectionLike>(
    connection: &mut C,
    script: &Script,
    call: &Call,
) -> RedisResult<redis::Value> {
    match call.command.query_async(connection).await {
        Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            script.load_async(connection).await?;
            call.command.query_async(connection).await
        }
        answer => answer,
    }
}

impl<W: Way> Link for Redis<W> {
    fn script(&self) -> &Script {
        &self.script
    }

    /// A call cut off by `timeout` before it could fail on its own is let run on to learn
    /// why (`cause`).
    fn eval(&self, call: Call, timeout: Duration) -> Answer<'_> {
        let Some(mut connection) = self.way.connection() else {
            // The way logs why it has none.
            return Box::pin(async { Err("no Redis server found yet".to_owned()) });
        };
        let to_check = self.to_check(&call);
        let (script, identity, seen) = (
            self.script.clone(),
            self.identity.clone(),
            self.seen.clone(),
        );
        let mut call = Box::pin(async move {
            if let Some(to_check) = to_check {
                check(&mut connection, &identity, &seen, to_check).await?;
            }
            evalsha(&mut connection, &script, &call).await
        });
        Box::pin(async move {
            match tokio::time::timeout(timeout, &mut call).await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(error)) => {
                    let cause = Cause::of(&error);
                    self.causes.failed(cause, &error.to_string());
                    self.lost(cause);
                    Err(error.to_string())
                }
                Err(_) => {
                    self.lost(Cause::Timeout);
                    if self.causes.may_follow() {
                        let causes = self.causes.clone();
                        tokio::spawn(async move { causes.followed(call).await });
                    }
                    Err(format!("no answer within {} ms", timeout.as_millis()))
                }
            }
        })
    }
}

/// How a [`Finder`] finds its server.
pub(super) trait Find: Send + Sync + 'static {
    /// The connection it makes.
    type Connection: ConnectionLike + Clone + Send + Sync + 'static;

    /// The server to call now, by address, with a new connection unless it is at `at`
    /// (where the current connection goes).
    fn find(
        &self,
        at: Option<String>,
    ) -> impl Future<Output = RedisResult<(String, Option<Self::Connection>)>> + Send;

    /// Whether a call that failed with `cause` leaves the connection unusable.
    fn broken(cause: Cause) -> bool;
}

/// A connection found on demand, one search at a time, in the background: calls fail
/// (and the fleet falls back) until it is found.
pub(super) struct Finder<F: Find>(Arc<Found<F>>);

struct Found<F: Find> {
    find: F,
    current: Mutex<Option<(String, F::Connection)>>,
    finding: AtomicBool,
    causes: Arc<Causes>,
}

impl<F: Find> Finder<F> {
    /// Finds with `find`, telling failures to `causes`; the first search starts at the
    /// first call.
    pub(super) fn new(find: F, causes: Arc<Causes>) -> Finder<F> {
        Finder(Arc::new(Found {
            find,
            current: Mutex::new(None),
            finding: AtomicBool::new(false),
            causes,
        }))
    }

    /// Starts a search unless one is under way.
    fn search(&self) {
        if self.0.finding.swap(true, Ordering::AcqRel) {
            return;
        }
        let found = self.0.clone();
        tokio::spawn(async move {
            found.search().await;
            found.finding.store(false, Ordering::Release);
        });
    }
}

impl<F: Find> Found<F> {
    fn current(&self) -> std::sync::MutexGuard<'_, Option<(String, F::Connection)>> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn search(&self) {
        let at = self.current().as_ref().map(|(at, _)| at.clone());
        match tokio::time::timeout(FIND, self.find.find(at.clone())).await {
            Ok(Ok((found, Some(connection)))) => {
                if at.as_deref() != Some(found.as_str()) {
                    info!(server = %found, "fleet: Redis server found");
                }
                *self.current() = Some((found, connection));
            }
            Ok(Ok((_, None))) => {}
            Ok(Err(error)) => self
                .causes
                .failed(Cause::of(&error), &format!("finding the server: {error}")),
            Err(_) => self.causes.failed(
                Cause::Timeout,
                &format!("no server found within {} ms", FIND.as_millis()),
            ),
        }
    }
}

impl<F: Find> Way for Finder<F> {
    type Connection = F::Connection;

    fn connection(&self) -> Option<F::Connection> {
        let current = self.0.current().as_ref().map(|(_, c)| c.clone());
        if current.is_none() {
            self.search();
        }
        current
    }

    fn lost(&self, cause: Cause) {
        if F::broken(cause) {
            *self.0.current() = None;
        }
        self.search();
    }
}

/// The primary that Redis Sentinel names.
pub(super) struct Sentinel {
    client: tokio::sync::Mutex<SentinelClient>,
    config: AsyncConnectionConfig,
}

impl Sentinel {
    /// Asks through `client`; connections to the primary made with `config`.
    pub(super) fn new(client: SentinelClient, config: AsyncConnectionConfig) -> Sentinel {
        Sentinel {
            client: tokio::sync::Mutex::new(client),
            config,
        }
    }
}

impl Find for Sentinel {
    type Connection = MultiplexedConnection;

    /// Asks the Sentinels (in order, the first that answers) for the primary; redis-rs
    /// checks that the server named calls itself primary.
    async fn find(
        &self,
        at: Option<String>,
    ) -> RedisResult<(String, Option<MultiplexedConnection>)> {
        let client = self.client.lock().await.async_get_client().await?;
        let found = client.get_connection_info().addr().to_string();
        if at.as_deref() == Some(found.as_str()) {
            return Ok((found, None));
        }
        let connection = client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        Ok((found, Some(connection)))
    }

    /// A connection that failed, or a server that is a replica now, is not called again.
    fn broken(cause: Cause) -> bool {
        matches!(cause, Cause::Refused | Cause::Dropped | Cause::Topology)
    }
}

/// A Redis Cluster.
pub(super) struct Cluster(pub(super) ClusterClient);

impl Find for Cluster {
    type Connection = ClusterConnection;

    /// Connects once; the connection follows the Cluster's changes itself.
    async fn find(&self, at: Option<String>) -> RedisResult<(String, Option<ClusterConnection>)> {
        if let Some(at) = at {
            return Ok((at, None));
        }
        let connection = self.0.get_async_connection().await?;
        Ok(("the Cluster".to_owned(), Some(connection)))
    }

    fn broken(_: Cause) -> bool {
        false
    }
}

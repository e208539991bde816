//! How the fleet reaches Redis: one small trait, and redis-rs's implementation of it.
//!
//! Every call the fleet makes (a batch of turns or guards, a heartbeat, a release, a
//! slow-down, leaving) is one run of its script (`fleet/script.lua`) with the keys and arguments the
//! fleet puts together; what a link adds is the way there, its time limit, and why a call
//! failed. The simulations in `tests.rs` reach a real `redis-server` through a second
//! implementation, at a Redis time they fix.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use redis::Script;
use redis::aio::ConnectionManager;

use super::cause::{Cause, Causes};

/// A call's answer to come: the script's reply, or why there is none.
pub(super) type Answer<'a> =
    Pin<Box<dyn Future<Output = Result<redis::Value, String>> + Send + 'a>>;

/// The fleet's way to Redis.
pub(super) trait Link: Send + Sync {
    /// Runs the script with `keys` and `args` (ARGV[1] the op; ARGV[2] empty, for the script
    /// to read Redis's own clock, or a time the link fixes instead), answered within
    /// `timeout` or failed, saying why.
    fn eval(&self, keys: Vec<String>, args: Vec<String>, timeout: Duration) -> Answer<'_>;
}

/// The real connection, run by EVALSHA; the script reads Redis's own clock.
pub(super) struct Redis {
    connection: ConnectionManager,
    script: Arc<Script>,
    /// Why calls fail, logged once per change (shared with the fleet).
    causes: Arc<Causes>,
}

impl Redis {
    /// `script` on `connection`, its failures told to `causes`.
    pub(super) fn new(connection: ConnectionManager, script: Script, causes: Arc<Causes>) -> Redis {
        Redis {
            connection,
            script: Arc::new(script),
            causes,
        }
    }
}

impl Link for Redis {
    /// A call cut off by `timeout` before it could fail on its own is let run on to learn
    /// why (`cause`).
    fn eval(&self, keys: Vec<String>, args: Vec<String>, timeout: Duration) -> Answer<'_> {
        let (script, mut connection) = (self.script.clone(), self.connection.clone());
        let mut call = Box::pin(async move {
            let mut invocation = script.prepare_invoke();
            for key in &keys {
                invocation.key(key);
            }
            for arg in &args {
                invocation.arg(arg);
            }
            invocation
                .invoke_async::<redis::Value>(&mut connection)
                .await
        });
        Box::pin(async move {
            match tokio::time::timeout(timeout, &mut call).await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(error)) => {
                    self.causes.failed(Cause::of(&error), &error.to_string());
                    Err(error.to_string())
                }
                Err(_) => {
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

//! A replica's concurrent turns (and send-time guards) go to Redis together.
//!
//! Each ask joins its kind's queue. While fewer than `OUT` calls of that kind are out, the
//! ask makes one itself, at once, taking along every ask queued meanwhile (at most `MOST` a
//! call). Otherwise it waits: for its answer, or to be handed the lead by a call that came
//! back, and then makes the next call in the same way. One call of `turns` or `guards` runs
//! its asks in order, as that many `turn` or `guard` calls would at the same Redis time
//! (`script.lua`), reading and writing each lane once. A lone request still goes alone, at
//! once and on its own task; under load a script call (its fixed cost: the clock, the
//! membership, each lane's read and write) is paid once for many requests instead of once
//! each.
//!
//! Nothing of the limit's argument changes (`limits/ARGUMENT.md` §4): a batch is a sequence
//! of the same atomic steps at one instant of Redis time. Its time in the queue counts against
//! `FRESH` (`Group::guard`).
//! The queue holds at most one ask per request in flight, which the server already bounds.
//! An ask waits at most `timeout_ms` in the queue for its answer or the lead, and a call it
//! leads at most `timeout_ms` again; past either, the replica falls back as after any slow
//! call. A request that leads a call and then leaves (its caller disconnected) drops the
//! others' answers: they ask again (a reservation or admission the dropped call may have
//! made is only ever unused capacity), and the lead passes on.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::oneshot;

use super::cause::Cause;
use super::link::Call;
use super::{Group, Reservation};

/// The most asks one script call carries: Redis runs nothing else while a script runs.
const MOST: usize = 32;
/// How many calls of one kind may be out at once: with two, a request that arrives while one
/// call is out does not wait for it.
const OUT: usize = 2;

/// Which op a batch runs.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    Turns,
    Guards,
}

impl Kind {
    fn op(self) -> &'static str {
        match self {
            Kind::Turns => "turns",
            Kind::Guards => "guards",
        }
    }
}

/// What a turn asks beside its lanes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) struct Wait {
    /// The longest wait it takes, in µs.
    pub longest: u64,
    /// Its request holds a ready connection: guard too when the turn needs no wait.
    pub guard_too: bool,
}

/// One request's ask: (turns only) its wait, and its lanes.
struct Ask {
    wait: Option<Wait>,
    lanes: Vec<super::Ask>,
}

impl Ask {
    /// Whether `other` reads alike in a batch: the same wait, lanes and specs.
    fn alike(&self, other: &Ask) -> bool {
        self.wait == other.wait
            && self.lanes.len() == other.lanes.len()
            && std::iter::zip(&self.lanes, &other.lanes)
                .all(|(a, b)| a.key == b.key && a.spec() == b.spec())
    }
}

/// What a queued ask is sent: its answer, or itself back with a call's place to lead.
enum Reply {
    Answer(Result<Vec<i64>, String>),
    Lead(Ask, Leading),
}

/// An ask in the queue, and where its reply goes.
struct Job {
    ask: Ask,
    reply: oneshot::Sender<Reply>,
}

#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Calls out (or about to be), each held by a `Leading`.
    out: usize,
}

/// The queue of one kind of ask.
#[derive(Default)]
pub(super) struct Batches {
    queue: Mutex<Queue>,
}

impl Batches {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Calls out, and asks queued.
    #[cfg(test)]
    pub(super) fn load(&self) -> (usize, usize) {
        let queue = self.lock();
        (queue.out, queue.jobs.len())
    }
}

/// A call's place. Dropped (its call came back, or whoever held it left), it passes to the
/// first queued ask still waiting, or is given up.
struct Leading {
    group: Arc<Group>,
    kind: Kind,
    armed: bool,
}

impl Drop for Leading {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        loop {
            let job = {
                let mut queue = self.group.batches(self.kind).lock();
                match queue.jobs.pop_front() {
                    Some(job) => job,
                    None => {
                        queue.out -= 1;
                        return;
                    }
                }
            };
            let lead = Leading {
                group: self.group.clone(),
                kind: self.kind,
                armed: true,
            };
            match job.reply.send(Reply::Lead(job.ask, lead)) {
                Ok(()) => return,
                // That ask gave up waiting; its copy of the place goes nowhere.
                Err(Reply::Lead(_, mut lead)) => lead.armed = false,
                Err(Reply::Answer(_)) => {}
            }
        }
    }
}

impl Group {
    fn batches(&self, kind: Kind) -> &Batches {
        match kind {
            Kind::Turns => &self.turns,
            Kind::Guards => &self.guards,
        }
    }

    /// Asks Redis about `lanes`, together with the other asks of `kind` made meanwhile: the
    /// answer a single `turn` (`wait` set; with `guard_too`, the guard's answer or -1
    /// appended) or `guard` call would give, a guard's as its one element.
    pub(super) async fn ask(
        self: &Arc<Self>,
        kind: Kind,
        wait: Option<Wait>,
        lanes: &[super::Ask],
    ) -> Result<Vec<i64>, String> {
        let timeout = self.fleet.timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ask = Ask {
                wait,
                lanes: lanes.to_vec(),
            };
            let queued = {
                let mut queue = self.batches(kind).lock();
                if queue.out < OUT {
                    queue.out += 1;
                    Err(ask)
                } else {
                    let (reply, replied) = oneshot::channel();
                    queue.jobs.push_back(Job { ask, reply });
                    Ok(replied)
                }
            };
            let replied = match queued {
                Ok(replied) => replied,
                Err(ask) => {
                    let lead = Leading {
                        group: self.clone(),
                        kind,
                        armed: true,
                    };
                    return lead.run(ask).await;
                }
            };
            match tokio::time::timeout_at(deadline, replied).await {
                Ok(Ok(Reply::Answer(answer))) => return answer,
                Ok(Ok(Reply::Lead(ask, lead))) => return lead.run(ask).await,
                // The call it was in was dropped with its leader: ask again.
                Ok(Err(_)) => continue,
                Err(_) => return Err(format!("no answer within {} ms", timeout.as_millis())),
            }
        }
    }
}

impl Leading {
    /// Makes one call in this place: `own` first, then the asks queued meanwhile. Answers
    /// them, and returns `own`'s answer; the place passes on when this returns.
    async fn run(self, own: Ask) -> Result<Vec<i64>, String> {
        let (group, kind) = (&self.group, self.kind);
        let fleet = &group.fleet;
        let jobs: Vec<Job> = {
            let mut queue = group.batches(kind).lock();
            let n = queue.jobs.len().min(MOST - 1);
            queue.jobs.drain(..n).collect()
        };
        let asks = jobs.len() + 1;
        fleet.series.batch.observe(asks as f64);
        let all: Vec<&Ask> = std::iter::once(&own)
            .chain(jobs.iter().map(|job| &job.ask))
            .collect();
        let answers = group
            .fleet
            .call::<redis::Value>(encode(group, kind, &all))
            .await
            .and_then(|packed| {
                unpack(packed)
                    .and_then(|flat| split(kind, &flat, asks))
                    .inspect_err(|why| fleet.causes.failed(Cause::Protocol, why))
            });
        let mut answers = match answers {
            Ok(answers) => {
                fleet.causes.answered();
                answers.into_iter()
            }
            Err(why) => {
                for job in jobs {
                    let _ = job.reply.send(Reply::Answer(Err(why.clone())));
                }
                return Err(why);
            }
        };
        let mine = answers.next().unwrap_or_default();
        for (job, answer) in jobs.into_iter().zip(answers) {
            if let Err(Reply::Answer(Ok(unused))) = job.reply.send(Reply::Answer(Ok(answer))) {
                give_back(group, kind, job.ask, &unused);
            }
        }
        Ok(mine)
    }
}

/// A turn's answer whose request left (or gave up waiting): its slots go back.
fn give_back(group: &Arc<Group>, kind: Kind, ask: Ask, answer: &[i64]) {
    let Kind::Turns = kind else { return };
    let Some(n) = answer.first().and_then(|&n| usize::try_from(n).ok()) else {
        return;
    };
    // A guard run with the turn leaves an admission unused: capacity lost, never the limit.
    let guarded = usize::from(ask.wait.is_some_and(|wait| wait.guard_too));
    if n > 0 && answer.len() == 2 + 2 * n + guarded && n <= ask.lanes.len() {
        drop(Reservation {
            group: group.clone(),
            keys: ask.lanes[..n].iter().map(|lane| lane.key.clone()).collect(),
            tats: answer[2..2 + 2 * n].to_vec(),
            used: false,
        });
    }
}

/// One batch call, its keys (each lane once) and arguments as `script.lua` reads them:
/// asks alike that follow each other (the same lanes, specs and wait: concurrent requests of
/// one API) are sent once, with how many they are.
fn encode(group: &Group, kind: Kind, asks: &[&Ask]) -> Call {
    // The keys are written first, so they are found before the arguments that name them.
    let mut keys: Vec<&str> = Vec::new();
    let mut named = Vec::new();
    let mut entries = 0_usize;
    for (ask, _) in runs(asks) {
        entries += 1;
        for lane in &ask.lanes {
            let at = keys.iter().position(|key| **key == *lane.key);
            named.push(at.unwrap_or_else(|| {
                keys.push(&lane.key);
                keys.len() - 1
            }));
        }
    }
    let mut call = group.prepare(kind.op(), keys.iter().copied());
    call.arg(entries);
    let mut named = named.into_iter();
    for (ask, alike) in runs(asks) {
        call.arg(alike);
        if let Some(wait) = ask.wait {
            call.arg(wait.longest).arg(wait.guard_too);
        }
        call.arg(ask.lanes.len());
        for (lane, at) in ask.lanes.iter().zip(&mut named) {
            // KEYS counts from 1, after the three common keys.
            call.arg(at + 4).arg(lane.spec());
        }
    }
    call
}

/// `asks` as runs of alike ones that follow each other: each run's first, and its length.
fn runs<'a>(asks: &'a [&'a Ask]) -> impl Iterator<Item = (&'a Ask, usize)> {
    let mut rest = asks;
    std::iter::from_fn(move || {
        let (&first, _) = rest.split_first()?;
        let alike = rest.iter().take_while(|other| first.alike(other)).count();
        rest = &rest[alike..];
        Some((first, alike))
    })
}

/// The batch's numbers out of the one string the script packs them in (8-byte little-endian
/// integers). Anything else is not the script talking.
fn unpack(packed: redis::Value) -> Result<Vec<i64>, String> {
    let redis::Value::BulkString(bytes) = packed else {
        return Err(format!(
            "a batch got {packed:?}, not the script's packed numbers"
        ));
    };
    let (numbers, rest) = bytes.as_chunks::<8>();
    if !rest.is_empty() {
        return Err(format!(
            "a batch got {} bytes, not 8-byte numbers",
            bytes.len()
        ));
    }
    Ok(numbers.iter().map(|n| i64::from_le_bytes(*n)).collect())
}

/// Each ask's answer out of the batch's, where each is preceded by its length.
/// Each answer must have the script's shape: a guard's its wait alone, a turn's at least
/// its lane count and wait. Anything else is not the script talking (a server that answers
/// every command with a number, say) and is no admission.
fn split(kind: Kind, flat: &[i64], asks: usize) -> Result<Vec<Vec<i64>>, String> {
    let mut answers = Vec::with_capacity(asks);
    let mut rest = flat;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > tail.len() {
            break;
        }
        answers.push(tail[..len].to_vec());
        rest = &tail[len..];
    }
    let shaped = |answer: &Vec<i64>| match kind {
        Kind::Guards => answer.len() == 1,
        Kind::Turns => answer.len() >= 2,
    };
    if answers.len() != asks || !rest.is_empty() || !answers.iter().all(shaped) {
        return Err(format!(
            "a batch of {asks} asks got an answer of another shape"
        ));
    }
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;
    use std::time::Duration;

    use super::super::link::{Answer, Link};
    use super::super::{Fleet, WINDOW};
    use super::*;
    use crate::Scope;
    use crate::series::FleetSeries;

    /// A link whose every call fails: `encode` is read, never run.
    struct Unreachable(redis::Script);

    impl Link for Unreachable {
        fn script(&self) -> &redis::Script {
            &self.0
        }

        fn eval(&self, _: Call, _: Duration) -> Answer<'_> {
            Box::pin(async { Err("not reached".to_owned()) })
        }
    }

    fn text<'a>(words: impl Iterator<Item = &'a [u8]>) -> Vec<String> {
        words
            .map(|word| String::from_utf8(word.to_vec()).unwrap())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_names_each_lane_once_and_sends_alike_asks_once_with_their_count() {
        let fleet = Fleet::with_link(
            Arc::new(Unreachable(redis::Script::new("return 0"))),
            Arc::default(),
            "p",
            "m",
            Duration::from_millis(50),
            NonZeroU32::MIN,
            FleetSeries::default(),
        );
        let group = fleet.group(1);
        let limit = |n| NonZeroU32::new(n).unwrap();
        let app = super::super::Ask::calls("{p}:lane:1".into(), limit(200), Scope::App);
        let api = super::super::Ask::calls("{p}:lane:1:a/b".into(), limit(100), Scope::Api);
        let quota = super::super::Ask {
            key: "{p}:lane:1:a/b:quota0".into(),
            limit: limit(10),
            scope: Scope::Api,
            period: WINDOW * 60,
            cost: limit(2),
            largest: limit(5),
        };
        let ask = |guard_too, lanes: &[&super::super::Ask]| Ask {
            wait: Some(Wait {
                longest: 1000,
                guard_too,
            }),
            lanes: lanes.iter().map(|&lane| lane.clone()).collect(),
        };
        let asks = [
            ask(true, &[&api, &app]),
            ask(true, &[&api, &app]),
            ask(false, &[&quota, &app]),
        ];
        let call = encode(&group, Kind::Turns, &asks.iter().collect::<Vec<_>>());
        let hash = redis::Script::new("return 0").get_hash().to_owned();
        assert_eq!(text(call.words().take(3)), ["EVALSHA", &hash, "6"]);
        assert_eq!(
            text(call.keys()),
            [
                "{p}:members:1",
                "{p}:claims:1",
                "{p}:epoch",
                "{p}:lane:1:a/b",
                "{p}:lane:1",
                "{p}:lane:1:a/b:quota0"
            ]
        );
        assert_eq!(
            text(call.args()),
            [
                "turns",
                "",
                "2", //
                "2",
                "1000",
                "1",
                "2",
                "4",
                "100",
                "5",
                "200", //
                "1",
                "1000",
                "0",
                "2",
                "6",
                "10/60000000/2/5",
                "5",
                "200",
            ]
        );
    }

    #[test]
    fn the_packed_numbers_are_read_back_and_anything_else_is_refused() {
        let packed: Vec<u8> = [3_i64, -1, 1_733_600_000_123_456]
            .iter()
            .flat_map(|n| n.to_le_bytes())
            .collect();
        assert_eq!(
            unpack(redis::Value::BulkString(packed.clone())).unwrap(),
            vec![3, -1, 1_733_600_000_123_456]
        );
        assert!(unpack(redis::Value::BulkString(packed[..7].to_vec())).is_err());
        assert!(unpack(redis::Value::Int(0)).is_err());
        assert!(unpack(redis::Value::Array(vec![redis::Value::Int(1)])).is_err());
        assert_eq!(
            unpack(redis::Value::BulkString(Vec::new())).unwrap(),
            Vec::<i64>::new()
        );
    }

    #[test]
    fn an_answer_not_of_the_scripts_shape_is_refused_not_read_as_an_admission() {
        // A server answering every command with `:0` gives `[0]`: one ask, of no cells.
        assert!(split(Kind::Guards, &[0], 1).is_err());
        assert!(split(Kind::Turns, &[0], 1).is_err());
        assert!(split(Kind::Guards, &[1, 0, 1, 250], 2).is_ok());
        assert!(split(Kind::Turns, &[1, 0, 2, -1, 40], 2).is_err());
        assert!(split(Kind::Turns, &[2, 1, 0, 2, -1, 40], 2).is_ok());
        assert_eq!(
            split(Kind::Turns, &[4, 1, 0, 5, 6], 1).unwrap(),
            vec![vec![1, 0, 5, 6]]
        );
    }
}

//! The fleet's metric series. The limiter updates them; the program that runs it registers
//! them under its own names (timgate: `timgate_fleet_*`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// The fleet's series (`[fleet]`): Redis up or not, the live size, fallback transitions,
/// Redis call latency. Cloned into the limiter, which updates them.
#[derive(Clone)]
pub struct FleetSeries {
    /// 1 while lanes are shared in Redis, 0 in fallback.
    pub redis_up: Gauge,
    /// Live members of the fleet, as Redis last said: of each app this replica serves,
    /// the fewest.
    pub members: Gauge,
    /// Switches from Redis to the local fallback.
    pub to_fallback: Counter,
    /// Switches back from the fallback to Redis.
    pub to_shared: Counter,
    /// Send checks answered too late to be sent on.
    pub late_checks: Counter,
    /// Heartbeats answered too late to go back to Redis.
    pub late_beats: Counter,
    /// Time of one Redis call, timeouts included.
    pub latency: Histogram,
    /// Requests' asks carried by one turn or send-check call.
    pub batch: Histogram,
}

impl Default for FleetSeries {
    fn default() -> FleetSeries {
        FleetSeries {
            redis_up: Gauge::default(),
            members: Gauge::default(),
            to_fallback: Counter::default(),
            to_shared: Counter::default(),
            late_checks: Counter::default(),
            late_beats: Counter::default(),
            latency: Histogram::new(exponential_buckets(0.0001, 2.0, 14)),
            batch: Histogram::new(exponential_buckets(1.0, 2.0, 6)),
        }
    }
}

//! Endpoint selection, one policy per file (`lb:` of a cluster).
//!
//! A [`Balancer`] is built for one endpoint set and rebuilt when the set
//! changes; the per-endpoint load it reads (in flight, latency) lives on the
//! endpoints themselves, so it survives the rebuild.
//!
//! | policy | picks | good for |
//! |---|---|---|
//! | `round_robin` | each endpoint in turn, by weight, interleaved | equal replicas, steady load |
//! | `random` | at random, by weight | many proxies in front of the same few endpoints |
//! | `least_request` | the less busy of two random endpoints | calls of uneven cost |
//! | `peak_ewma` | the cheaper of two by latency × (in flight + 1) | replicas of uneven speed |
//! | `ring_hash` | by a hash of a header, consistently | caches and sticky sessions |

mod p2c;
mod random;
mod ring_hash;
mod round_robin;

use std::sync::Arc;

use super::endpoint::Endpoint;
use crate::config::LbPolicy;
pub use random::WeightedRandom;
pub use ring_hash::{hash_key, Ring};
pub use round_robin::RoundRobin;

/// The balancer of one endpoint set.
pub enum Balancer {
    RoundRobin(RoundRobin),
    Random(WeightedRandom),
    LeastRequest(WeightedRandom),
    PeakEwma(WeightedRandom),
    RingHash(Ring, WeightedRandom),
}

impl Balancer {
    pub fn new(policy: LbPolicy, endpoints: &[Arc<Endpoint>]) -> Self {
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight()).collect();
        match policy {
            LbPolicy::RoundRobin => Balancer::RoundRobin(RoundRobin::new(&weights)),
            LbPolicy::Random => Balancer::Random(WeightedRandom::new(&weights)),
            LbPolicy::LeastRequest => Balancer::LeastRequest(WeightedRandom::new(&weights)),
            LbPolicy::PeakEwma => Balancer::PeakEwma(WeightedRandom::new(&weights)),
            LbPolicy::RingHash => {
                let keys: Vec<String> = endpoints.iter().map(|e| e.addr.to_string()).collect();
                Balancer::RingHash(Ring::new(&keys, &weights), WeightedRandom::new(&weights))
            }
        }
    }

    /// The index of the endpoint for this request; `hash` is the request's
    /// hash key (ring_hash only; without one a random endpoint is taken).
    pub fn pick(&self, endpoints: &[Arc<Endpoint>], hash: Option<u64>) -> Option<usize> {
        match self {
            Balancer::RoundRobin(rr) => rr.pick(),
            Balancer::Random(r) => r.pick(),
            Balancer::LeastRequest(r) => p2c::pick(r, endpoints, |e| e.in_flight() as f64),
            Balancer::PeakEwma(r) => {
                let now = tokio::time::Instant::now();
                p2c::pick(r, endpoints, |e| {
                    e.latency.estimate(now).max(1.0) * (e.in_flight() as f64 + 1.0)
                })
            }
            Balancer::RingHash(ring, r) => match hash {
                Some(h) => ring.pick(h),
                None => r.pick(),
            },
        }
    }
}

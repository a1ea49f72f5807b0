//! Power of two choices: draw two endpoints (by weight), take the one with
//! the lower load per unit of weight. Nearly as good as scanning every
//! endpoint for the least loaded, at a constant cost, and it avoids the herd
//! that "always the least loaded" sends to one endpoint from many proxies.

use std::sync::Arc;

use super::random::WeightedRandom;
use crate::cluster::endpoint::Endpoint;

pub fn pick(
    sampler: &WeightedRandom,
    endpoints: &[Arc<Endpoint>],
    load: impl Fn(&Endpoint) -> f64,
) -> Option<usize> {
    let n = sampler.len().min(endpoints.len());
    if n <= 1 {
        return (n == 1).then_some(0);
    }
    let a = sampler.pick()?;
    let mut b = sampler.pick()?;
    if a == b {
        // One more draw, then fall back to a neighbour: two distinct candidates.
        b = sampler.pick()?;
        if a == b {
            b = (a + 1 + fastrand::usize(..n - 1)) % n;
        }
    }
    let cost = |i: usize| {
        endpoints
            .get(i)
            .map_or(f64::INFINITY, |e| load(e) / f64::from(e.weight().max(1)))
    };
    Some(if cost(b) < cost(a) { b } else { a })
}

//! What keeps one bad replica or a slow dependency from becoming user-facing
//! errors, without turning a small outage into a retry storm: retries with a
//! budget over a replayable body, circuit-breaker caps, passive outlier
//! detection and active health checks.

pub mod breaker;
pub mod health;
pub mod median;
pub mod outlier;
pub mod policy;
pub mod replay;

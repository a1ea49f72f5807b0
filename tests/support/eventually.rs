//! Bounded polling: wait for a condition instead of sleeping a guessed time.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Call `check` until it returns `Ok`, at most for `timeout`; the last error
/// explains what never became true.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<T>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        let err = match check().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(err.context(format!("still not true after {timeout:?}")));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// The same for code outside a runtime (subprocess tests).
pub fn eventually_blocking<T>(
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let deadline = std::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(10);
    loop {
        let err = match check() {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if std::time::Instant::now() >= deadline {
            return Err(err.context(format!("still not true after {timeout:?}")));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

/// Fail if `fut` takes longer than `limit`: every await on the network in a
/// test goes through this, so a hung proxy fails the test instead of CI.
pub async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r,
        Err(_) => anyhow::bail!("{what}: no answer within {limit:?}"),
    }
}

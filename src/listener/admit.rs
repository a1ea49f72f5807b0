//! The cap on a listener's open connections (`limits.max_connections`).
//!
//! Past the cap, the connection idle the longest is asked to finish
//! gracefully (GOAWAY, `Connection: close`) to make room for the new one;
//! when every connection has a request in flight, the new one is closed at
//! once and counted (`skiff_connections_refused_total`). So a flood of idle
//! connections cannot lock out a client with work to do, and a busy
//! connection is never cut to make room.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use super::activity::Activity;

/// A listener's admitted connections.
#[derive(Default)]
pub struct Admission {
    conns: Mutex<Vec<Entry>>,
    next_id: AtomicU64,
}

struct Entry {
    id: u64,
    activity: Arc<Activity>,
    trim: Arc<Notify>,
}

/// An admitted connection's place; given back when dropped.
pub struct Slot {
    id: u64,
    pub activity: Arc<Activity>,
    trim: Arc<Notify>,
    admission: Arc<Admission>,
}

impl Slot {
    /// Resolves when the connection is asked to make room for a new one.
    pub async fn trimmed(&self) {
        self.trim.notified().await
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut conns) = self.admission.conns.lock() {
            if let Some(i) = conns.iter().position(|e| e.id == self.id) {
                conns.swap_remove(i);
            }
        }
    }
}

impl Admission {
    /// A place for a new connection under `max`, making room by asking the
    /// connection idle the longest to finish; `None` when all are busy.
    pub fn admit(self: &Arc<Self>, max: usize) -> Option<Slot> {
        let mut conns = self.conns.lock().ok()?;
        if conns.len() >= max {
            let idlest = conns
                .iter()
                .enumerate()
                .filter(|(_, e)| e.activity.is_idle())
                .max_by_key(|(_, e)| e.activity.idle_for())
                .map(|(i, _)| i)?;
            let e = conns.swap_remove(idlest);
            // Stored as a permit if the connection is not waiting yet.
            e.trim.notify_one();
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (activity, trim) = (Activity::new(), Arc::new(Notify::new()));
        conns.push(Entry {
            id,
            activity: activity.clone(),
            trim: trim.clone(),
        });
        Some(Slot {
            id,
            activity,
            trim,
            admission: self.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn past_the_cap_the_idlest_makes_room_and_busy_ones_never_do() {
        let a = Arc::new(Admission::default());
        let first = a.admit(2).unwrap();
        tokio::time::advance(std::time::Duration::from_secs(5)).await;
        let second = a.admit(2).unwrap();
        let _busy = second.activity.request();
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        // At the cap: the idle one (first) is asked to finish, not the busy one.
        let third = a.admit(2).unwrap();
        tokio::time::timeout(std::time::Duration::from_millis(1), first.trimmed())
            .await
            .expect("the idle connection was asked to make room");
        let _busy3 = third.activity.request();
        // Both left are busy: a new connection is refused.
        assert!(a.admit(2).is_none());
        drop(third);
        assert!(
            a.admit(2).is_some(),
            "a connection that ended gives its place back"
        );
    }
}

//! A background task started on first use, on the runtime of its first user.

use std::future::Future;
use std::sync::Mutex;

/// Holds what a background task needs until it is started; starts it once.
pub(crate) struct Lazy<T> {
    dormant: Mutex<Option<T>>,
}

impl<T> Lazy<T> {
    pub(crate) fn new(state: T) -> Self {
        Lazy {
            dormant: Mutex::new(Some(state)),
        }
    }

    /// Spawns `run(state)` on the current runtime, the first time this is
    /// called inside one. Later calls, and calls outside a runtime, do nothing.
    pub(crate) fn start<F, Fut>(&self, run: F)
    where
        F: FnOnce(T) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut dormant = self.dormant.lock().unwrap_or_else(|e| e.into_inner());
        if dormant.is_none() {
            return;
        }
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            if let Some(state) = dormant.take() {
                handle.spawn(run(state));
            }
        }
    }

    /// Whether the task has been started.
    pub(crate) fn started(&self) -> bool {
        self.dormant
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
    }
}

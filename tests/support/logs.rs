//! Capturing the library's `tracing` events in a test.
//!
//! ```ignore
//! let logs = Logs::capture(); // until `logs` is dropped, on this thread
//! adapter.acquire("k").await;
//! logs.assert_logged(Level::DEBUG, "lock acquired", "k");
//! ```
//!
//! A capture records the events emitted on the thread that started it, so a
//! test that captures runs on a current-thread runtime (`#[tokio::test]`'s
//! default): the library's tasks then run on the test's thread too.
//!
//! How: one process-wide subscriber, installed once, hands each event to the
//! capture of the thread it was emitted on (if any). Under `cargo test` many
//! tests share the process, and per-test scoped dispatchers
//! (`tracing::subscriber::set_default`) are not enough there: while a single
//! scoped dispatcher exists, tracing-core computes the cached interest of a
//! callsite first hit on *another* thread (a test without a capture) from
//! that thread's default, no subscriber, and caches "never", so the
//! capturing test silently misses that event. With the global router every
//! thread's default is the router, and no interest is cached as "never".

use std::cell::RefCell;
use std::fmt;
use std::sync::{Arc, Mutex, Once};

use tracing::field::{Field, Visit};
use tracing::Level;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// One event, with the fields the tests look at.
#[derive(Debug, Clone)]
pub struct Captured {
    pub level: Level,
    pub message: String,
    pub key: Option<String>,
    pub error: Option<String>,
}

/// The events captured on one thread, from [`Logs::capture`] until dropped.
pub struct Logs {
    events: Arc<Mutex<Vec<Captured>>>,
    /// The capture this one replaced on the thread (restored on drop).
    previous: Option<Arc<Mutex<Vec<Captured>>>>,
}

thread_local! {
    static SINK: RefCell<Option<Arc<Mutex<Vec<Captured>>>>> = const { RefCell::new(None) };
}

impl Logs {
    /// Captures every event emitted on this thread until the returned value
    /// is dropped.
    pub fn capture() -> Logs {
        install_router();
        let events = Arc::new(Mutex::new(Vec::new()));
        let previous = SINK.with(|sink| sink.borrow_mut().replace(Arc::clone(&events)));
        Logs { events, previous }
    }

    pub fn events(&self) -> Vec<Captured> {
        self.events.lock().unwrap().clone()
    }

    /// Events at `level` whose message starts with `message` and whose `key`
    /// field is `key`.
    pub fn find(&self, level: Level, message: &str, key: &str) -> Vec<Captured> {
        self.events()
            .into_iter()
            .filter(|e| {
                e.level == level && e.message.starts_with(message) && e.key.as_deref() == Some(key)
            })
            .collect()
    }

    pub fn count(&self, level: Level, message: &str, key: &str) -> usize {
        self.find(level, message, key).len()
    }

    pub fn assert_logged(&self, level: Level, message: &str, key: &str) {
        assert!(
            self.count(level, message, key) > 0,
            "expected a {level} event {message:?} with key={key:?}; captured: {:#?}",
            self.events()
        );
    }

    /// Events at `level` or more severe.
    pub fn at_least(&self, level: Level) -> Vec<Captured> {
        // `Level` orders by verbosity: ERROR < WARN < INFO < DEBUG < TRACE.
        self.events()
            .into_iter()
            .filter(|e| e.level <= level)
            .collect()
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        let previous = self.previous.take();
        SINK.with(|sink| *sink.borrow_mut() = previous);
    }
}

/// Installs the router as the global default subscriber, once per process.
fn install_router() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(Router))
            .expect(
                "support::logs needs the global tracing subscriber, but one was already set \
                 (use Logs::capture instead of installing a subscriber in a test)",
            );
    });
}

/// Hands each event to the capture of the thread it was emitted on.
struct Router;

impl<S: tracing::Subscriber> Layer<S> for Router {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let Some(events) = SINK.with(|sink| sink.borrow().clone()) else {
            return;
        };
        struct Fields(Captured);
        impl Visit for Fields {
            fn record_str(&mut self, field: &Field, value: &str) {
                self.record_debug(field, &format_args!("{value}"));
            }
            fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
                // `%key` (Display) and `format_args!` messages both print
                // their plain text through `Debug`.
                let value = format!("{value:?}");
                match field.name() {
                    "message" => self.0.message = value,
                    "key" => self.0.key = Some(value),
                    "error" => self.0.error = Some(value),
                    _ => {}
                }
            }
        }
        let mut fields = Fields(Captured {
            level: *event.metadata().level(),
            message: String::new(),
            key: None,
            error: None,
        });
        event.record(&mut fields);
        events.lock().unwrap().push(fields.0);
    }
}

//! A mutex's metric labels ([`Config`], set on the builder) and the labels
//! of one lock; the `error` label of an error.

use std::fmt;
use std::sync::Arc;

use ::metrics::{Label, SharedString};

use crate::policy::error::Error;

/// Maps a lock key to the value of its `key` label, or to none.
type KeyLabel = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// A mutex's metric labels (set on the builder).
#[derive(Clone, Default)]
pub(crate) struct Config {
    /// `mutex="..."`, when named.
    pub(super) mutex: Option<SharedString>,
    key_label: Option<KeyLabel>,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("mutex", &self.mutex)
            .field("key_label", &self.key_label.is_some())
            .finish()
    }
}

/// The labels of one lock: the mutex's, and the key's when opted in.
#[derive(Clone, Default)]
pub(super) struct Labels {
    pub(super) mutex: Option<SharedString>,
    pub(super) key: Option<SharedString>,
}

impl Labels {
    /// These labels and `extra`.
    pub(super) fn with(&self, extra: &[(&'static str, &'static str)]) -> Vec<Label> {
        let mut labels = Vec::with_capacity(extra.len() + 2);
        if let Some(mutex) = &self.mutex {
            labels.push(Label::new("mutex", mutex.clone()));
        }
        if let Some(key) = &self.key {
            labels.push(Label::new("key", key.clone()));
        }
        labels.extend(extra.iter().map(|&(k, v)| Label::from_static_parts(k, v)));
        labels
    }

    /// The mutex's label only (for metrics about no one lock).
    pub(super) fn mutex_only(&self) -> Labels {
        Labels {
            mutex: self.mutex.clone(),
            key: None,
        }
    }
}

impl Config {
    /// Adds the label `mutex="<name>"` (see `Builder::metrics_name`).
    pub(crate) fn set_name(&mut self, name: String) {
        self.mutex = Some(SharedString::from(name));
    }

    /// Opts in to a `key` label (see `Builder::metrics_key_label`).
    pub(crate) fn set_key_label(
        &mut self,
        label: impl Fn(&str) -> Option<String> + Send + Sync + 'static,
    ) {
        self.key_label = Some(Arc::new(label));
    }

    pub(super) fn labels(&self, key: &str) -> Labels {
        Labels {
            mutex: self.mutex.clone(),
            key: self
                .key_label
                .as_ref()
                .and_then(|f| f(key))
                .map(SharedString::from),
        }
    }
}

/// The `error` label of an error: its variant, in snake case.
pub(super) fn error_kind(error: &Error) -> &'static str {
    match error {
        Error::NotObtained { .. } => "not_obtained",
        Error::NotHeld { .. } => "not_held",
        Error::Lost { .. } => "lost",
        Error::InvalidKey { .. } => "invalid_key",
        Error::InvalidKeySet { .. } => "invalid_key_set",
        Error::InvalidTtl { .. } => "invalid_ttl",
        Error::Timeout { .. } => "timeout",
        Error::Unavailable { .. } => "unavailable",
        Error::NotReplicated { .. } => "not_replicated",
        Error::WrongType { .. } => "wrong_type",
        Error::NoPermission { .. } => "no_permission",
        Error::Redis { .. } => "redis",
        Error::Config { .. } => "config",
        Error::Shutdown { .. } => "shutdown",
    }
}

//! The builder's metric labels (cargo feature `metrics`).

use super::Builder;

/// Metric labels (cargo feature `metrics`; see the
/// [`metrics`](crate::metrics) module for the metrics themselves).
impl Builder {
    /// Adds the label `mutex="<name>"` to every metric this mutex
    /// records (default: no `mutex` label), to tell mutexes apart (one
    /// per Redis deployment, say). Give each mutex a fixed name: every
    /// distinct name is a set of series of its own.
    pub fn metrics_name(mut self, name: impl Into<String>) -> Self {
        self.settings.metrics.set_name(name.into());
        self
    }

    /// Opts in to a `key` label on the per-lock metrics: `label(key)`
    /// gives its value for a lock key (as the caller gave it, without the
    /// key prefix), `None` for no `key` label. Default: no key label, so
    /// the number of series does not grow with the number of keys.
    ///
    /// Each distinct value is a set of series in the exporter: return a
    /// bounded set of values (a key's kind or tenant tier, not the key
    /// itself, unless the program locks a few fixed keys). The function
    /// runs once per acquisition, on the caller's task; it must be cheap
    /// and return the same value for the same key.
    ///
    /// ```no_run
    /// # fn demo(client: fred::clients::Client) -> Result<(), distributed_mutex::Error> {
    /// use distributed_mutex::DistributedMutex;
    ///
    /// // "job:nightly-report" -> key="job", "tenant:42:settings" -> key="tenant".
    /// let mutex = DistributedMutex::builder(client)
    ///     .metrics_key_label(|key| key.split(':').next().map(str::to_owned))
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn metrics_key_label<F>(mut self, label: F) -> Self
    where
        F: Fn(&str) -> Option<String> + Send + Sync + 'static,
    {
        self.settings.metrics.set_key_label(label);
        self
    }
}

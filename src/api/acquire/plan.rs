//! An acquisition's settings, checked before anything is sent.

use std::time::Duration;

use crate::policy::error::Error;
use crate::policy::limits::{ttl_millis, validate_key};
use crate::policy::retry::RetryStrategy;
use crate::protocol::confirm::MinReplicas;
use crate::protocol::keys::LockKeys;

use super::Acquire;

/// An acquisition's settings, checked.
pub(super) struct Plan {
    pub(super) key: String,
    pub(super) ttl_ms: u64,
    pub(super) fencing: bool,
    pub(super) auto_renew: bool,
    pub(super) retry: RetryStrategy,
    pub(super) timeout: Option<Duration>,
    /// Replica confirmation of this lock's writes.
    pub(super) confirm: Option<MinReplicas>,
    /// The holder label its token carries.
    pub(super) holder: Option<String>,
}

impl Plan {
    /// The checked settings, and the lock's Redis names.
    pub(super) fn check(req: &Acquire) -> Result<(Plan, LockKeys), Error> {
        let settings = &req.inner.settings;
        let ttl_ms = ttl_millis(&req.key, req.options.ttl.unwrap_or(settings.ttl))?;
        validate_key(&req.key)?;
        let retry = req.options.retry.unwrap_or(settings.retry);
        retry.validate()?;
        let confirm = match req.options.min_replicas {
            Some((replicas, timeout)) => MinReplicas::check(replicas, timeout)?,
            None => settings.min_replicas,
        };
        let keys = LockKeys::new(&settings.prefix, &req.key);
        let holder = req.holder.as_ref().or(settings.holder.as_ref()).cloned();
        if let Some(label) = &holder {
            crate::protocol::holder::validate(label)?;
        }
        Ok((
            Plan {
                key: req.key.clone(),
                ttl_ms,
                fencing: req.fencing.unwrap_or(settings.fencing),
                auto_renew: req.options.auto_renew.unwrap_or(settings.auto_renew),
                retry,
                timeout: req.options.timeout,
                confirm,
                holder,
            },
            keys,
        ))
    }
}

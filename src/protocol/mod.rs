//! The Redis protocol: every name a lock uses in Redis ([`keys`]), the token
//! format ([`holder`]), the Lua scripts and how they are sent ([`scripts`]),
//! where hand-off and release messages go ([`channel`]), making and keeping
//! connections ([`connect`], [`tls`], [`background`]), replica-confirmed
//! writes ([`confirm`]) and cluster routing ([`route`]). It uses the policy
//! layer only.

pub(crate) mod background;
pub(crate) mod channel;
pub(crate) mod confirm;
pub(crate) mod connect;
pub(crate) mod holder;
pub(crate) mod keys;
pub(crate) mod route;
pub(crate) mod scripts;
#[cfg(feature = "tls")]
pub(crate) mod tls;

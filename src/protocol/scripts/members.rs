//! The scripts of places in sorted sets (semaphore permits, read and write
//! shares; see `engine/primitive/`): acquire, release and renew.

use std::sync::LazyLock;

use fred::types::scripts::Script;

use super::lua;

/// A script of `src/protocol/scripts/<name>.lua`, with `common.lua`.
macro_rules! member_script {
    ($name:literal) => {
        LazyLock::new(|| Script::from_lua(lua!($name)))
    };
}

pub(crate) static SEMAPHORE_ACQUIRE: LazyLock<Script> = member_script!("semaphore_acquire");
pub(crate) static RW_READ: LazyLock<Script> = member_script!("rw_read");
pub(crate) static RW_WRITE: LazyLock<Script> = member_script!("rw_write");
pub(crate) static RELEASE: LazyLock<Script> = member_script!("member_release");
pub(crate) static RENEW: LazyLock<Script> = member_script!("member_renew");

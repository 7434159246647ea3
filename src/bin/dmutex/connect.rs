//! The mutex behind every subcommand: connected to `--url`, with
//! `--key-prefix`.

use distributed_mutex::{Builder, DistributedMutex};

use crate::args::Global;
use crate::exit::Failure;

/// Connects to `--url` (bounded by the library's connect timeout, 2 s) and
/// builds a mutex with `--key-prefix` and whatever `configure` adds.
pub async fn connect(
    global: &Global,
    configure: impl FnOnce(Builder) -> Builder,
) -> Result<DistributedMutex, Failure> {
    let url = redacted(&global.url);
    let builder = Builder::connect(&global.url)
        .await
        .map_err(|e| Failure::from_lib(&format!("cannot connect to Redis at {url}"), &e))?;
    configure(builder.key_prefix(global.key_prefix.as_str()))
        .build()
        .map_err(|e| Failure::from_lib("invalid settings", &e))
}

/// The URL with its password (if any) replaced by `***`, for messages.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let (userinfo, host) = authority.split_at(at);
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***{host}{path}"),
        // `redis://password@host`: fred reads a lone userinfo as a password.
        None => format!("{scheme}://***{host}{path}"),
    }
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(
            redacted("redis://locker:s3cret@h:6379/2"),
            "redis://locker:***@h:6379/2"
        );
        assert_eq!(redacted("redis://:s3cret@h"), "redis://:***@h");
        assert_eq!(redacted("redis://s3cret@h"), "redis://***@h");
        assert_eq!(redacted("not a url"), "not a url");
    }
}

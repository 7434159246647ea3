//! `dmutex release KEY --token T`: an operator's release of a lock whose
//! holder cannot release it (a hung job, a lost machine), by its token.
//! Token-checked, never an unconditional delete: if the key holds another
//! token now (the lock changed hands), nothing is touched.

use distributed_mutex::{Error, LostReason};

use crate::args::{Global, ReleaseArgs};
use crate::connect::connect;
use crate::exit::{self, Failure};

pub async fn release(global: &Global, args: ReleaseArgs) -> u8 {
    let quiet = global.quiet;
    let mutex = match connect(global, |b| b).await {
        Ok(mutex) => mutex,
        Err(failure) => return failure.report(quiet),
    };
    let result = mutex.release_token(&args.key, &args.token).await;
    mutex.shutdown().await;
    let key = &args.key;
    match result {
        Ok(()) => {
            if !quiet {
                eprintln!("dmutex: released lock `{key}`");
            }
            exit::OK
        }
        Err(Error::NotHeld { reason, .. }) => {
            let why = match reason {
                LostReason::Missing => "it is not held (the key is gone)",
                _ => "it holds another token (or a value that is not a lock)",
            };
            Failure::status(
                exit::NOT_HELD,
                format!("lock `{key}` was not released: {why}; nothing was touched"),
            )
            .report(quiet)
        }
        Err(e) => Failure::from_lib(&format!("cannot release lock `{key}`"), &e).report(quiet),
    }
}

//! The async runtime every role runs on, and how a role's failure becomes an exit status.

use std::fmt::Display;
use std::future::Future;
use std::process::ExitCode;

/// Runs `main` to completion. An error is logged, printed as `kakuremichi ROLE: ...` and
/// exits 1.
pub fn block_on<F>(role: &str, main: F) -> ExitCode
where
    F: Future<Output = anyhow::Result<()>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kakuremichi {role}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("kakuremichi {role}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A configuration the role cannot start with: logged, printed, exit status 2 (as `check`).
pub fn config_error(role: &str, error: impl Display) -> ExitCode {
    tracing::error!("{error:#}");
    eprintln!("kakuremichi {role}: {error:#}");
    ExitCode::from(2)
}

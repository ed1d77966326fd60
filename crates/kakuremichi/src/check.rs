//! `kakuremichi check`: validate a file of any kind.

use std::process::ExitCode;

use crate::cli::CheckArgs;

pub fn run(args: &CheckArgs) -> ExitCode {
    match kakuremichi_config::check(&args.config) {
        Ok(kind) => {
            println!("{}: ok ({} file)", args.config.display(), kind.as_str());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

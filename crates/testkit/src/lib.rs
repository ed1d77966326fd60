//! Test harness pieces that more than one crate's tests start: real services run as
//! processes on 127.0.0.1, never mocks. Only tests depend on this crate.
#![forbid(unsafe_code)]

pub mod postgres;

//! edge library.
pub mod protocol;

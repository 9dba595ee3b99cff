//! edge library.

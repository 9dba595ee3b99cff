//! The edge's protocol module, compiled on its own for fuzzing.
//!
//! `edge::protocol` is pure and depends only on `ppp`, `serde_json` and `thiserror`; including
//! its source here keeps sanitizer builds small (the edge crate pulls tonic, axum, tokio…).
//! The code fuzzed is exactly the code the edge runs.

#[path = "../../edge/src/protocol/mod.rs"]
pub mod protocol;

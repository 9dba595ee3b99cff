//! Test support for automc's integration tests: a throwaway Postgres cluster
//! (`pg`), syncd and edge started in-process on port 0 (`stack`),
//! Minecraft-protocol backends and clients (`mc`) a fake waker (`waker`) and a fake OTLP collector (`otlp`).
//! Everything talks over real sockets on 127.0.0.1.

pub mod certs;
pub mod containers;
pub mod mc;
pub mod otlp;
pub mod pg;
pub mod procs;
pub mod stack;
pub mod waker;

//! What the running kernel looks like: tracepoint formats, struct offsets, reason names.
//! Everything here is read at start-up, so one binary serves kernels of different layouts.
pub mod btf;
pub mod layout;
pub mod reasons;
pub mod tracefs;

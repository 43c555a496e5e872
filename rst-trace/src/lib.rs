//! rst-trace: why TCP connections are reset or dropped, with the owning process and port.
pub mod advice;
pub mod agent;
pub mod attribution;
pub mod cause;
pub mod cli;
pub mod community_id;
pub mod detach;
pub mod diagnosis;
pub mod doctor;
pub mod host;
pub mod kernel;
pub mod listeners;
pub mod loader;
#[cfg(test)]
mod malformed;
pub mod netns;
pub mod output;
pub mod owner;
pub mod pipeline;
pub mod poller;
pub mod preflight;
pub mod procowners;
pub mod records;
pub mod schema;
pub mod sockdiag;
pub mod sockets;
pub mod stats;
pub mod storm;

//! The cause catalogue lives in rst-trace-common, so the agent, the tests and xtask share one
//! definition of every cause name.
pub use rst_trace_common::cause::{Cause, Direction, Origin};

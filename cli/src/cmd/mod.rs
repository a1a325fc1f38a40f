//! One module per command.

pub mod autoscale;
pub mod dev;
pub mod dlq;
pub mod github;
pub mod image;
pub mod init;
pub mod jobs;
pub mod nodes;
pub mod route;
pub mod scale;
pub mod serve;
pub mod submit;
pub mod supervise;
pub mod top;
pub mod worker;
// <<< modules of commands from functions: one line each, keep this marker >>>

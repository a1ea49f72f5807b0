//! HTTP glue shared by the listeners and the upstream side: bodies, header
//! rules and gRPC helpers.

pub mod body;
pub mod grpc;
pub mod headers;
pub mod pipe;

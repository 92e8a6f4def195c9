//! gRPC over HTTP/2, shared by the gateway and the worker front: status codes, framing and
//! deadlines (`grpc`), the accept loop with TLS and graceful shutdown (`server`), unary
//! answers (`unary`) and grpc.health.v1 `Watch` (`health`).

pub mod grpc;
pub mod health;
pub mod reflection;
pub mod server;
pub mod stream;
pub mod unary;

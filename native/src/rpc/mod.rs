//! gRPC over HTTP/2, shared by the gateway and the worker front: status codes, framing and
//! deadlines (`grpc`), the accept loop with TLS and graceful shutdown (`server`), and unary
//! answers (`unary`).

pub mod grpc;
pub mod server;
pub mod unary;

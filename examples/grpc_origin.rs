//! A small gRPC origin for the load benchmark's gRPC scenario: a tonic server over h2c (HTTP/2
//! with prior knowledge) whose one method, `bench.Echo/Unary`, answers each request with its
//! own message, with `grpc-status: 0`. Messages are taken as bytes (no protobuf code generated):
//! the client's protobuf goes back as it came.
//!
//! ```sh
//! cargo run --release --example grpc_origin -- 127.0.0.1:50051
//! ```
//!
//! One thread: the benchmark pins it to the load generator's core.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tonic::body::Body;
use tonic::codegen::Service;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

#[path = "support/grpc_raw.rs"]
mod grpc_raw;

use grpc_raw::Raw;

/// The service `bench.Echo`.
#[derive(Clone)]
struct Echo;

impl NamedService for Echo {
    const NAME: &'static str = "bench.Echo";
}

impl Service<http::Request<Body>> for Echo {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let unary = req.uri().path() == "/bench.Echo/Unary";
        Box::pin(async move {
            if !unary {
                return Ok(Status::unimplemented("no such method").into_http());
            }
            Ok(tonic::server::Grpc::new(Raw).unary(Unary, req).await)
        })
    }
}

/// `Unary`: the request's message back.
struct Unary;

impl Service<Request<Bytes>> for Unary {
    type Response = Response<Bytes>;
    type Error = Status;
    type Future = std::future::Ready<Result<Response<Bytes>, Status>>;
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Request<Bytes>) -> Self::Future {
        std::future::ready(Ok(Response::new(req.into_inner())))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen = std::env::args()
        .nth(1)
        .ok_or("usage: grpc_origin LISTEN")?
        .parse()?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(
            tonic::transport::Server::builder()
                .add_service(Echo)
                .serve(listen),
        )?;
    Ok(())
}

//! The backend every target forwards to: one port on 127.0.0.1 that serves
//! HTTP/1.1 and h2c, with the `skiff.bench.Echo` gRPC service (tonic) under
//! its path and a fixed-size plain HTTP answer everywhere else.
//!
//! The messages are declared here with prost's derive rather than generated
//! from a .proto, so the bench needs no protoc and no build script:
//!
//! ```proto
//! package skiff.bench;
//! message EchoRequest  { bytes payload = 1; uint32 count = 2; uint32 hold_ms = 3; }
//! message EchoResponse { bytes payload = 1; }
//! service Echo {
//!   rpc Unary(EchoRequest) returns (EchoResponse);            // the payload, echoed
//!   rpc ServerStream(EchoRequest) returns (stream EchoResponse); // `count` echoes, then
//!                                                             // open for `hold_ms`
//! }
//! ```

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

pub const UNARY_PATH: &str = "/skiff.bench.Echo/Unary";
pub const STREAM_PATH: &str = "/skiff.bench.Echo/ServerStream";

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(bytes = "bytes", tag = "1")]
    pub payload: Bytes,
    /// ServerStream: how many responses (0 counts as 1).
    #[prost(uint32, tag = "2")]
    pub count: u32,
    /// ServerStream: keep the stream open this long after the last response.
    #[prost(uint32, tag = "3")]
    pub hold_ms: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoResponse {
    #[prost(bytes = "bytes", tag = "1")]
    pub payload: Bytes,
}

/// A request message framed for gRPC: flag byte, length, protobuf.
pub fn grpc_frame(msg: &EchoRequest) -> Bytes {
    let body = prost::Message::encode_to_vec(msg);
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(0);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Bytes::from(out)
}

/// Serve on `listener` until the runtime ends; `http_body` is the answer
/// to every request outside the gRPC service.
pub async fn serve(listener: TcpListener, http_body: Bytes) {
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(100_000)
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(4 << 20);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let builder = builder.clone();
        let http_body = http_body.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                let http_body = http_body.clone();
                async move { Ok::<_, Infallible>(handle(req, http_body).await) }
            });
            let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
        });
    }
}

type AnyBody = Either<tonic::body::Body, Full<Bytes>>;

async fn handle(req: http::Request<Incoming>, http_body: Bytes) -> http::Response<AnyBody> {
    let codec = tonic_prost::ProstCodec::<EchoResponse, EchoRequest>::default();
    let mut grpc = tonic::server::Grpc::new(codec);
    match req.uri().path() {
        UNARY_PATH => grpc
            .unary(tower::service_fn(unary), req)
            .await
            .map(Either::Left),
        STREAM_PATH => grpc
            .server_streaming(tower::service_fn(server_stream), req)
            .await
            .map(Either::Left),
        _ => {
            // Drain the request body so HTTP/1.1 keeps the connection.
            let _ = http_body_util::BodyExt::collect(req.into_body()).await;
            let mut response = http::Response::new(Either::Right(Full::new(http_body)));
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/octet-stream"),
            );
            response
        }
    }
}

async fn unary(req: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
    Ok(Response::new(EchoResponse {
        payload: req.into_inner().payload,
    }))
}

async fn server_stream(req: Request<EchoRequest>) -> Result<Response<EchoStream>, Status> {
    let req = req.into_inner();
    Ok(Response::new(EchoStream {
        message: EchoResponse {
            payload: req.payload,
        },
        left: req.count.max(1),
        hold: (req.hold_ms > 0).then(|| {
            Box::pin(tokio::time::sleep(Duration::from_millis(
                req.hold_ms.into(),
            )))
        }),
    }))
}

/// `left` copies of one message, then open until `hold` fires.
pub struct EchoStream {
    message: EchoResponse,
    left: u32,
    hold: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Stream for EchoStream {
    type Item = Result<EchoResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.left > 0 {
            self.left -= 1;
            return Poll::Ready(Some(Ok(self.message.clone())));
        }
        match self.hold.as_mut() {
            Some(hold) => hold.as_mut().poll(cx).map(|()| None),
            None => Poll::Ready(None),
        }
    }
}

/// Bind the backend on a free loopback port and serve it on this runtime.
pub async fn start(http_body: Bytes) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(serve(listener, http_body));
    Ok(addr)
}

//! The `skiff.test.Echo` service (tests/proto/echo.proto) served by tonic on
//! 127.0.0.1:0 over h2c, remembering the request headers of every call.
//!
//! Each request message says what to do: echo, repeat, wait, fail with a
//! status, add trailing metadata. Every response carries the metadata the
//! server received in `seen_headers`, and the headers of each call are also
//! kept in [`GrpcBackend::seen`], so a test can check what the proxy forwarded
//! even for a call that failed.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::codegen::Service;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::{Code, Request, Response, Status, Streaming};

pub use super::echo_pb::echo_client::EchoClient;
use super::echo_pb::echo_server::{Echo, EchoServer};
pub use super::echo_pb::{EchoRequest, EchoResponse};
use super::AbortOnDrop;

/// Largest message either side of the tests accepts.
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;

pub struct GrpcBackend {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<HeaderMap>>>,
    _accept: AbortOnDrop,
}

impl GrpcBackend {
    pub async fn start() -> anyhow::Result<GrpcBackend> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let svc = EchoServer::new(EchoService)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE);
        let accept = AbortOnDrop::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = tcp.set_nodelay(true);
                let seen = seen2.clone();
                let svc = svc.clone();
                conns.spawn(async move {
                    let handler = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            if let Ok(mut s) = seen.lock() {
                                s.push(req.headers().clone());
                            }
                            let mut svc = svc.clone();
                            async move {
                                let resp = match svc.call(req).await {
                                    Ok(r) => r,
                                    Err(never) => match never {},
                                };
                                let extra = resp.extensions().get::<ExtraTrailers>().cloned();
                                Ok::<_, Infallible>(resp.map(|inner| TrailerBody {
                                    inner,
                                    extra,
                                    done: false,
                                }))
                            }
                        },
                    );
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), handler)
                        .await;
                });
            }
        });
        Ok(GrpcBackend {
            addr,
            seen,
            _accept: accept,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Request headers of every call so far.
    pub fn seen(&self) -> Vec<HeaderMap> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// A tonic client for `addr` (the proxy or a backend) with large messages allowed.
pub async fn echo_client(
    addr: SocketAddr,
) -> anyhow::Result<EchoClient<tonic::transport::Channel>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    Ok(EchoClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}

/// Trailing metadata a handler adds to its response after the fact (tonic
/// has no API for custom trailers on a successful call).
#[derive(Clone, Default)]
struct ExtraTrailers(Arc<Mutex<HeaderMap>>);

impl ExtraTrailers {
    fn add(&self, from: &EchoRequest) {
        if let Ok(mut t) = self.0.lock() {
            for (k, v) in &from.trailers {
                if let (Ok(k), Ok(v)) = (
                    http::HeaderName::from_str(k),
                    http::HeaderValue::from_str(v),
                ) {
                    t.insert(k, v);
                }
            }
        }
    }

    fn take(&self) -> HeaderMap {
        self.0
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default()
    }
}

/// The response body with [`ExtraTrailers`] merged into its trailers.
struct TrailerBody<B> {
    inner: B,
    extra: Option<ExtraTrailers>,
    done: bool,
}

impl<B> Body for TrailerBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_trailers() {
                Ok(mut trailers) => {
                    if let Some(extra) = &self.extra {
                        for (k, v) in extra.take() {
                            if let Some(k) = k {
                                trailers.insert(k, v);
                            }
                        }
                    }
                    Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }
}

struct EchoService;

type ResponseStream = Pin<Box<dyn Stream<Item = Result<EchoResponse, Status>> + Send>>;

fn seen_headers(md: &MetadataMap) -> std::collections::HashMap<String, String> {
    md.clone()
        .into_headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// The failure `req` asks for, if any, with its trailers as status metadata.
fn failure(req: &EchoRequest) -> Option<Status> {
    if req.fail_code == 0 {
        return None;
    }
    let mut md = MetadataMap::new();
    for (k, v) in &req.trailers {
        if let (Ok(k), Ok(v)) = (MetadataKey::from_str(k), MetadataValue::from_str(v)) {
            md.insert(k, v);
        }
    }
    Some(Status::with_metadata(
        Code::from_i32(req.fail_code),
        req.fail_message.clone(),
        md,
    ))
}

fn reply(
    req: &EchoRequest,
    payload: Vec<u8>,
    index: u32,
    seen: &std::collections::HashMap<String, String>,
) -> EchoResponse {
    let payload = if req.response_size > 0 {
        super::body::pattern(0, req.response_size as usize).to_vec()
    } else {
        payload
    };
    EchoResponse {
        payload,
        index,
        seen_headers: seen.clone(),
    }
}

async fn pause(req: &EchoRequest) {
    if req.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(u64::from(req.delay_ms))).await;
    }
}

fn with_trailers<T>(message: T, extra: ExtraTrailers) -> Response<T> {
    let mut resp = Response::new(message);
    resp.extensions_mut().insert(extra);
    resp
}

#[tonic::async_trait]
impl Echo for EchoService {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        let seen = seen_headers(request.metadata());
        let req = request.into_inner();
        pause(&req).await;
        if let Some(status) = failure(&req) {
            return Err(status);
        }
        let extra = ExtraTrailers::default();
        extra.add(&req);
        Ok(with_trailers(
            reply(&req, req.payload.clone(), 0, &seen),
            extra,
        ))
    }

    type ServerStreamStream = ResponseStream;

    async fn server_stream(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<ResponseStream>, Status> {
        let seen = seen_headers(request.metadata());
        let req = request.into_inner();
        let extra = ExtraTrailers::default();
        extra.add(&req);
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for i in 0..req.repeat.max(1) {
                pause(&req).await;
                if tx
                    .send(Ok(reply(&req, req.payload.clone(), i, &seen)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if let Some(status) = failure(&req) {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(with_trailers(
            Box::pin(ReceiverStream::new(rx)) as ResponseStream,
            extra,
        ))
    }

    async fn client_stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoResponse>, Status> {
        let seen = seen_headers(request.metadata());
        let mut stream = request.into_inner();
        let extra = ExtraTrailers::default();
        let mut payload = Vec::new();
        let mut last = EchoRequest::default();
        while let Some(req) = stream.next().await {
            let req = req?;
            pause(&req).await;
            if let Some(status) = failure(&req) {
                return Err(status);
            }
            extra.add(&req);
            payload.extend_from_slice(&req.payload);
            last = req;
        }
        Ok(with_trailers(reply(&last, payload, 0, &seen), extra))
    }

    type BidiStream = ResponseStream;

    async fn bidi(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let seen = seen_headers(request.metadata());
        let mut stream = request.into_inner();
        let extra = ExtraTrailers::default();
        let extra2 = extra.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            let mut index = 0;
            while let Some(req) = stream.next().await {
                let req = match req {
                    Ok(r) => r,
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                };
                pause(&req).await;
                if let Some(status) = failure(&req) {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
                extra2.add(&req);
                if tx
                    .send(Ok(reply(&req, req.payload.clone(), index, &seen)))
                    .await
                    .is_err()
                {
                    return;
                }
                index += 1;
            }
        });
        Ok(with_trailers(
            Box::pin(ReceiverStream::new(rx)) as ResponseStream,
            extra,
        ))
    }
}

/// Parse a `grpc-timeout` header value (`<digits><unit>`) into a duration.
pub fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The error status of a call that was expected to fail.
pub fn status_of<T: std::fmt::Debug>(result: Result<T, Status>) -> anyhow::Result<Status> {
    match result {
        Ok(v) => anyhow::bail!("the call succeeded where it should have failed: {v:?}"),
        Err(s) => Ok(s),
    }
}

/// `req` as one length-prefixed gRPC message, for raw HTTP/2 requests.
pub fn grpc_frame(req: &EchoRequest) -> Bytes {
    let msg = prost::Message::encode_to_vec(req);
    let mut out = Vec::with_capacity(5 + msg.len());
    out.push(0);
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(&msg);
    out.into()
}

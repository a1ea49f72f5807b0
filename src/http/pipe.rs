//! Copying a body onto an HTTP/2 stream: the response to a client, the
//! request body to an upstream. One frame at a time, each sent only as far
//! as the peer's flow-control window allows, so a slow reader slows the
//! body's source instead of growing a buffer.

use std::future::poll_fn;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use h2::{Reason, SendStream};
use http_body::{Body, Frame};

/// Send the body's first frame if it is already here, without waiting:
/// a small body (a unary gRPC message) then leaves in the same write as the
/// HEADERS before it. h2 holds the frame until the window opens, which costs
/// nothing more since it is in memory anyway. Returns whether more may follow.
pub fn send_ready_frame<B>(
    body: &mut B,
    tx: &mut SendStream<Bytes>,
    reason: impl Fn(&B::Error) -> Reason,
) -> bool
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match Pin::new(&mut *body).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
            Ok(data) => {
                let end = body.is_end_stream();
                tx.send_data(data, end).is_ok() && !end
            }
            Err(frame) => {
                send_last(tx, frame);
                false
            }
        },
        Poll::Ready(None) => {
            let _ = tx.send_data(Bytes::new(), true);
            false
        }
        Poll::Ready(Some(Err(e))) => {
            tx.send_reset(reason(&e));
            false
        }
        Poll::Pending => true,
    }
}

/// Copy `body` to `tx` until its end. A body error resets the stream with
/// `reason(error)`; a reset from the peer stops the copy (dropping `body`
/// tells its source).
pub async fn pipe<B>(mut body: B, mut tx: SendStream<Bytes>, reason: impl Fn(&B::Error) -> Reason)
where
    B: Body<Data = Bytes> + Unpin,
{
    loop {
        let next = poll_fn(|cx| match Pin::new(&mut body).poll_frame(cx) {
            Poll::Ready(frame) => Poll::Ready(Some(frame)),
            // Nothing to send yet: notice a reset meanwhile.
            Poll::Pending => tx.poll_reset(cx).map(|_| None),
        })
        .await;
        let frame = match next {
            None => return, // reset by the peer
            Some(None) => {
                let _ = tx.send_data(Bytes::new(), true);
                return;
            }
            Some(Some(Err(e))) => {
                tx.send_reset(reason(&e));
                return;
            }
            Some(Some(Ok(frame))) => frame,
        };
        match frame.into_data() {
            Ok(data) => {
                let end = body.is_end_stream();
                if !send_data(&mut tx, data, end).await || end {
                    return;
                }
            }
            Err(frame) => {
                send_last(&mut tx, frame);
                return;
            }
        }
    }
}

/// Send `data` as the window opens; false once the stream is gone.
async fn send_data(tx: &mut SendStream<Bytes>, mut data: Bytes, end: bool) -> bool {
    if data.is_empty() {
        return !end || tx.send_data(data, true).is_ok();
    }
    while !data.is_empty() {
        tx.reserve_capacity(data.len());
        let window = match poll_fn(|cx| tx.poll_capacity(cx)).await {
            Some(Ok(n)) if n > 0 => n,
            Some(Ok(_)) => continue,
            _ => return false, // reset or finished
        };
        let chunk = data.split_to(window.min(data.len()));
        if tx.send_data(chunk, end && data.is_empty()).is_err() {
            return false;
        }
    }
    true
}

/// A frame that is not data ends the stream: trailers, or an empty end.
fn send_last(tx: &mut SendStream<Bytes>, frame: Frame<Bytes>) {
    match frame.into_trailers() {
        Ok(trailers) => {
            let _ = tx.send_trailers(trailers);
        }
        Err(_) => {
            let _ = tx.send_data(Bytes::new(), true);
        }
    }
}

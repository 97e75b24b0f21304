//! Every request's head must arrive within `--client-request-timeout`, not only a connection's
//! first one.
//!
//! actix-http 3 times the head of a connection's first request only (its head timer is cleared
//! for good once that request is parsed, `h1/dispatcher.rs`), and its keep-alive timer stops
//! at the first byte of the next request. Without more, a client could send one request and
//! then trickle the next head a byte at a time, holding the connection indefinitely.
//!
//! [`DeadlineIo`] wraps each accepted socket, and [`track_requests`] (the outermost middleware)
//! tells it when a request reaches the app and when actix is done with its response:
//! - bytes read while no request is being served start the head clock; the request reaching
//!   the app stops it. Its body is bounded by `middleware::body_deadline`; a slow handler or
//!   a live stream is not the client's doing and is not timed here (a socket cannot tell
//!   them from a slow client, the middleware can);
//! - when the clock runs out, the wrapper writes a 408 with `connection: close` straight to
//!   the socket (no response is in progress, so it is the next thing the client reads) and
//!   fails the read, so actix drops the connection;
//! - an idle connection is actix's: it closes it after --keep-alive. That includes one whose
//!   buffer holds the start of a next request that came with the previous one, if nothing
//!   more arrives (checked in `tests/api/request_deadline.rs`): actix then either lets its
//!   keep-alive timer run out or, polled again, closes because keep-alive was cancelled.

use std::{
    cell::{Cell, RefCell},
    io,
    net::SocketAddr,
    pin::Pin,
    rc::Rc,
    task::{Context, Poll},
    time::Duration,
};

use actix_web::{
    Error,
    body::{BodySize, MessageBody},
    dev::{ServiceRequest, ServiceResponse},
    middleware::Next,
    web::Bytes,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    time::{Instant, Sleep},
};

/// The limit and the answer, shared by all connections of a server.
#[derive(Clone)]
pub struct HeadDeadline {
    limit: Duration,
    response: Bytes,
}

impl HeadDeadline {
    /// `limit`: from the first byte of a request to its complete head (--client-request-timeout).
    pub fn new(limit: Duration) -> Self {
        let body = format!(
            r#"{{"error":{{"code":"request_timeout","message":"the request head did not arrive within {limit:?}"}}}}"#
        );
        let response = format!(
            "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n\r\n{body}",
            body.len()
        );
        Self { limit, response: Bytes::from(response) }
    }
}

/// The error a read fails with at the deadline.
#[derive(Debug, thiserror::Error)]
#[error("a request head did not arrive within {0:?}")]
pub struct HeadTimedOut(Duration);

/// What one connection waits for, shared by its socket and its requests.
struct Connection {
    head: HeadDeadline,
    /// Requests that have reached the app and whose response body actix still holds.
    in_flight: Cell<usize>,
    /// When the head being received must be complete; only while `in_flight` is 0.
    deadline: Cell<Option<Instant>>,
    /// Armed for `deadline` by the socket when a read has to wait; dropped when a request
    /// starts, so that no stale wake-up polls actix (which restarts its keep-alive timer
    /// on every poll of an idle connection).
    timer: RefCell<Option<Pin<Box<Sleep>>>>,
}

impl Connection {
    fn bytes_read(&self) {
        if self.in_flight.get() == 0 && self.deadline.get().is_none() {
            self.deadline.set(Some(Instant::now() + self.head.limit));
        }
    }

    fn request_started(&self) {
        self.in_flight.set(self.in_flight.get() + 1);
        self.deadline.set(None);
        self.timer.borrow_mut().take();
    }

    fn response_done(&self) {
        self.in_flight.set(self.in_flight.get().saturating_sub(1));
    }

    /// Waits for the deadline, if any; true once it has passed.
    fn poll_expired(&self, cx: &mut Context<'_>) -> bool {
        let Some(deadline) = self.deadline.get() else {
            return false;
        };
        let mut timer = self.timer.borrow_mut();
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        timer.as_mut().poll(cx).is_ready()
    }
}

/// A connection's side of [`DeadlineIo`], handed to its requests as connection data.
#[derive(Clone)]
pub struct RequestClock(Rc<Connection>);

impl RequestClock {
    /// Stops the head clock until the returned guard is dropped with the response body.
    fn request_started(&self) -> InFlight {
        self.0.request_started();
        InFlight(self.0.clone())
    }
}

struct InFlight(Rc<Connection>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.response_done();
    }
}

/// An accepted socket with the deadline described in the module documentation.
pub struct DeadlineIo {
    socket: TcpStream,
    peer: Option<SocketAddr>,
    connection: Rc<Connection>,
    /// The last write did not go through: actix still holds part of a response, and a 408
    /// written now would land in the middle of it.
    write_blocked: bool,
}

impl DeadlineIo {
    pub fn new(socket: TcpStream, head: HeadDeadline) -> Self {
        let peer = socket.peer_addr().ok();
        let connection =
            Connection { head, in_flight: Cell::new(0), deadline: Cell::new(None), timer: RefCell::new(None) };
        Self { socket, peer, connection: Rc::new(connection), write_blocked: false }
    }

    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    pub fn clock(&self) -> RequestClock {
        RequestClock(self.connection.clone())
    }

    /// Answers 408 if the socket can take it, and returns the error that makes actix close.
    fn time_out(&mut self, cx: &mut Context<'_>) -> io::Error {
        let timed_out = HeadTimedOut(self.connection.head.limit);
        tracing::info!(peer = ?self.peer, "closing a connection: {timed_out}");
        if !self.write_blocked {
            // One attempt: a client that does not read what it is sent gets the close only.
            let response = self.connection.head.response.clone();
            let _ = Pin::new(&mut self.socket).poll_write(cx, &response);
        }
        io::Error::new(io::ErrorKind::TimedOut, timed_out)
    }
}

impl AsyncRead for DeadlineIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.socket).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    this.connection.bytes_read();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            // Only a read that would wait can time out: data already here wins.
            Poll::Pending if this.connection.poll_expired(cx) => Poll::Ready(Err(this.time_out(cx))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for DeadlineIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.socket).poll_write(cx, buf);
        this.write_blocked = polled.is_pending();
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.socket).poll_write_vectored(cx, bufs);
        this.write_blocked = polled.is_pending();
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.socket.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().socket).poll_shutdown(cx)
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request counted as in flight until actix is done with it.
    pub struct InFlightBody<B> {
        #[pin]
        body: B,
        _in_flight: Option<InFlight>,
    }
}

impl<B: MessageBody> MessageBody for InFlightBody<B> {
    type Error = B::Error;

    fn size(&self) -> BodySize {
        self.body.size()
    }

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Self::Error>>> {
        self.project().body.poll_next(cx)
    }
}

/// Tells the connection's [`RequestClock`] that a request has reached the app, and when its
/// response is done. Outermost, so that it sees every request and holds the whole response.
pub async fn track_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    // Always there when served by `crate::Application` (`on_connect_ext`).
    let in_flight = req.conn_data::<RequestClock>().map(RequestClock::request_started);
    // An error (a middleware's refusal) goes out as actix's own response just after this
    // returns, so the guard ends a moment early; the socket's `write_blocked` covers that gap.
    let response = next.call(req).await?;
    Ok(response.map_body(|_, body| InFlightBody { body, _in_flight: in_flight }))
}

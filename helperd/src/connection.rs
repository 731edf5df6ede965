//! One accepted connection, served over HTTP/2 with limits that fit the helper's API: a few
//! streams, small windows and buffers. An admitted connection lives until its peer closes it or
//! it sits idle (no call in progress, and an open session counts as one) for the idle timeout;
//! a refused one gets one answer, then it is closed.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http2;
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tokio::sync::watch;
use tonic::Status;
use tonic::codegen::Service;
use tonic::codegen::http::{Request, Response};
use tracing::{Instrument, Span, debug};

use crate::policy::Peer;

/// Streams one admitted connection may have open at once: a session and a few calls.
const MAX_STREAMS: u32 = 8;
/// What a client may send on one stream before the helper reads it. Every request fits in a
/// few hundred bytes; the connection as a whole keeps HTTP/2's initial 64 KiB.
const STREAM_WINDOW: u32 = 16 * 1024;
/// The most header bytes one request may carry.
const MAX_HEADER_LIST: u32 = 8 * 1024;
/// The most response bytes buffered per stream while the client reads slowly.
const MAX_SEND_BUFFER: usize = 64 * 1024;
/// How long a closing connection may take to finish the answers it is sending.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// A service that answers a connection's calls: the helper's, or a [`Refuse`]. Every one is
/// cloned per call and runs in its own task.
pub trait CallService:
    Service<
        Request<Incoming>,
        Response = Response<tonic::body::Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + 'static
{
}

impl<S> CallService for S where
    S: Service<
            Request<Incoming>,
            Response = Response<tonic::body::Body>,
            Error = Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static
{
}

/// How long a connection is served.
#[derive(Debug, Clone, Copy)]
pub enum Lane {
    /// Until its peer closes it, or it has been idle for this long.
    Admitted {
        /// The idle timeout.
        idle: Duration,
    },
    /// Until its first call is answered, or this long if no call comes.
    AnswerOnce {
        /// How long to wait for the call.
        within: Duration,
    },
}

/// A service that answers every call with the same status, for connections refused before
/// they reach the helper's own service.
#[derive(Debug, Clone)]
pub struct Refuse(pub Status);

impl<B> Service<Request<B>> for Refuse {
    type Response = Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: Request<B>) -> Self::Future {
        std::future::ready(Ok(self.0.clone().into_http()))
    }
}

/// Serves `stream` from `peer` with `service` on `lane`, inside the current span.
pub async fn serve(stream: UnixStream, peer: Peer, lane: Lane, service: impl CallService) {
    let calls = Calls::default();
    let mut builder = http2::Builder::new(InSpan(Span::current()));
    builder
        .max_concurrent_streams(match lane {
            Lane::Admitted { .. } => MAX_STREAMS,
            Lane::AnswerOnce { .. } => 1,
        })
        .initial_stream_window_size(STREAM_WINDOW)
        .max_header_list_size(MAX_HEADER_LIST)
        .max_send_buf_size(MAX_SEND_BUFFER);
    let tracked = Tracked {
        service,
        peer,
        calls: calls.clone(),
    };
    let connection = builder.serve_connection(TokioIo::new(stream), tracked);
    tokio::pin!(connection);
    let done = async {
        match lane {
            Lane::Admitted { idle } => calls.idle_for(idle).await,
            Lane::AnswerOnce { within } => {
                let _ = tokio::time::timeout(within, calls.answered()).await;
            }
        }
    };
    tokio::select! {
        result = connection.as_mut() => {
            if let Err(e) = result {
                debug!(error = %e, "connection ended with an error");
            }
            return;
        }
        () = done => {}
    }
    debug!("closing the connection");
    connection.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(CLOSE_GRACE, connection).await;
}

/// What the connection's calls are doing, for the lane's watch.
#[derive(Debug, Default, Clone, Copy)]
struct CallCount {
    in_progress: usize,
    answered: usize,
}

#[derive(Debug, Clone, Default)]
struct Calls(Arc<watch::Sender<CallCount>>);

impl Calls {
    fn begin(&self) -> Call {
        self.0.send_modify(|c| c.in_progress += 1);
        Call(self.clone())
    }

    /// Completes once no call has been in progress for `idle`.
    async fn idle_for(&self, idle: Duration) {
        let mut calls = self.0.subscribe();
        loop {
            if calls.wait_for(|c| c.in_progress == 0).await.is_err() {
                return;
            }
            match tokio::time::timeout(idle, calls.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return,
            }
        }
    }

    /// Completes once a call has been answered and none is in progress.
    async fn answered(&self) {
        let mut calls = self.0.subscribe();
        let _ = calls
            .wait_for(|c| c.answered > 0 && c.in_progress == 0)
            .await;
    }
}

/// A call in progress: from its request until its response's body is done or dropped (for
/// OpenSession, as long as the session lives).
#[derive(Debug)]
struct Call(Calls);

impl Drop for Call {
    fn drop(&mut self) {
        self.0.0.send_modify(|c| {
            c.in_progress -= 1;
            c.answered += 1;
        });
    }
}

/// The service with the peer put into each request and each call counted.
struct Tracked<S> {
    service: S,
    peer: Peer,
    calls: Calls,
}

impl<S: CallService> hyper::service::Service<Request<Incoming>> for Tracked<S> {
    type Response = Response<CallBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<CallBody>, Infallible>> + Send>>;

    fn call(&self, mut request: Request<Incoming>) -> Self::Future {
        let call = self.calls.begin();
        request.extensions_mut().insert(self.peer.clone());
        let mut service = self.service.clone();
        Box::pin(async move {
            std::future::poll_fn(|cx| service.poll_ready(cx)).await?;
            let response = service.call(request).await?;
            Ok(response.map(|body| CallBody { body, _call: call }))
        })
    }
}

/// A response body that ends its call when it is done.
struct CallBody {
    body: tonic::body::Body,
    _call: Call,
}

impl Body for CallBody {
    type Data = <tonic::body::Body as Body>::Data;
    type Error = <tonic::body::Body as Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Runs the connection's streams as tasks inside its span, so every event of every call carries
/// the connection's fields.
#[derive(Clone)]
struct InSpan(Span);

impl<F> hyper::rt::Executor<F> for InSpan
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(future.instrument(self.0.clone()));
    }
}

//! The connection layer: HTTP/1.1 and h2c (prior knowledge) on hyper, with keep-alive,
//! header size limits, a header read timeout for a new connection's first request that
//! answers `408`, a longer idle timeout between requests on a kept-alive connection (hyper has
//! one timer for both, so the first is ours), a whole-request timeout, and graceful shutdown (stop accepting, let in-flight requests finish within the grace
//! period, then close what is left).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::config::Limits;
use crate::error::error_body;
use crate::state::PeerAddr;

/// Serves `router` on `listener` until `shutdown` turns true, then drains.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    conns.spawn(connection(stream, peer, router.clone(), limits.clone(), shutdown.clone()));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let grace = Duration::from_millis(limits.shutdown_grace_ms);
    tracing::info!(open = conns.len(), grace_ms = limits.shutdown_grace_ms, "stopped accepting; draining");
    if tokio::time::timeout(grace, async { while conns.join_next().await.is_some() {} }).await.is_err() {
        tracing::warn!(open = conns.len(), "grace period over; closing the remaining connections");
        conns.abort_all();
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    // A second handle on the socket, to answer 408 if hyper gives up on slow headers before
    // the first request. It is dropped as soon as a request arrives, so a long-lived
    // connection (an SSE stream) holds one file descriptor, not two; an idle keep-alive
    // connection that times out later is simply closed.
    let Ok(std) = stream.into_std() else { return };
    let spare = std.try_clone().ok().and_then(|s| TcpStream::from_std(s).ok());
    let spare = Arc::new(Mutex::new(spare));
    let Ok(stream) = TcpStream::from_std(std) else { return };

    let request_timeout = Duration::from_millis(limits.request_timeout_ms);
    let spare_in_svc = spare.clone();
    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let router = router.clone();
        drop(spare_in_svc.lock().unwrap_or_else(|e| e.into_inner()).take());
        req.extensions_mut().insert(PeerAddr(peer));
        async move { Ok::<_, Infallible>(dispatch(router, req.map(Body::new), request_timeout).await) }
    });

    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // hyper's header timer runs whenever it waits for a request head, idle or not: it is
        // the keep-alive idle limit; the first request's (shorter) limit is the select below.
        .header_read_timeout(Duration::from_millis(limits.keep_alive_idle_ms))
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32)
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
    tokio::pin!(conn);
    let first_request = tokio::time::sleep(Duration::from_millis(limits.header_read_timeout_ms));
    tokio::pin!(first_request);
    let mut waiting_first = true;
    let result = loop {
        tokio::select! {
            r = conn.as_mut() => break r,
            _ = &mut first_request, if waiting_first => {
                waiting_first = false;
                // The service takes the spare handle when a request arrives.
                let spare = spare.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(spare) = spare {
                    request_timeout_answer(spare).await;
                    return;
                }
            }
            _ = shutdown.changed() => {
                conn.as_mut().graceful_shutdown();
                break conn.as_mut().await;
            }
        }
    };
    if let Err(e) = result {
        let timed_out = e.downcast_ref::<hyper::Error>().is_some_and(|h| h.is_timeout());
        let spare = spare.lock().unwrap_or_else(|e| e.into_inner()).take();
        if timed_out && let Some(spare) = spare {
            request_timeout_answer(spare).await;
        } else {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

/// Answers `408` on a connection whose first request's headers did not arrive in time.
async fn request_timeout_answer(mut spare: TcpStream) {
    let body =
        br#"{"error":{"code":"request_timeout","message":"the request headers did not arrive in time"}}"#;
    let head = format!(
        "HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        spare.write_all(head.as_bytes()).await?;
        spare.write_all(body).await?;
        spare.shutdown().await
    })
    .await;
}

/// Runs one request through the router, bounded by the request timeout (streams excepted).
async fn dispatch(router: Router, req: Request<Body>, timeout: Duration) -> Response {
    let streaming = req.uri().path().ends_with("/events");
    let fut = router.oneshot(req);
    if streaming {
        return match fut.await {
            Ok(r) => r,
            Err(never) => match never {},
        };
    }
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(r)) => r,
        Ok(Err(never)) => match never {},
        Err(_) => error_body(StatusCode::REQUEST_TIMEOUT, "request_timeout", "the request took too long"),
    }
}

//! The admin listener, apart from the proxy port: `/healthz`, `/readyz` and `/metrics`.
//!
//! `/healthz` answers 200 while the process serves at all; `/readyz` answers 503 from the
//! moment a drain starts, so the orchestrator stops sending traffic; `/metrics` renders the
//! gateway's registry. The admin listener outlives the proxy's drain and stops after it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::metrics;
use crate::proxy::Gateway;

/// What the admin endpoints report on.
pub struct Admin {
    gateway: Arc<Gateway>,
    draining: AtomicBool,
}

impl Admin {
    /// Admin endpoints for `gateway`, ready until `drain` is called.
    pub fn new(gateway: Arc<Gateway>) -> Admin {
        Admin {
            gateway,
            draining: AtomicBool::new(false),
        }
    }

    /// From now on `/readyz` fails.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
        self.gateway.metrics().draining();
    }
}

/// Answers one admin request.
pub async fn handle(admin: Arc<Admin>, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
    }
    match request.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if admin.draining.load(Ordering::SeqCst) => {
            text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
        }
        "/readyz" => text(StatusCode::OK, "ready\n"),
        "/metrics" => {
            let body = admin.gateway.metrics().render(admin.gateway.waiting());
            let mut response = text(StatusCode::OK, body);
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            response
        }
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /healthz, /readyz or /metrics\n",
        ),
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

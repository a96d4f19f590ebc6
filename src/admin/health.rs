//! Liveness and readiness.

use http::Response;
use tokio_util::sync::CancellationToken;

use super::text;

/// The process is up and serving this request.
pub fn live() -> Response<Vec<u8>> {
    text(200, "live")
}

/// Ready for new clients until a drain starts, so the orchestrator stops routing here first.
pub fn ready(shutdown: &CancellationToken) -> Response<Vec<u8>> {
    if shutdown.is_cancelled() {
        text(503, "draining")
    } else {
        text(200, "ready")
    }
}

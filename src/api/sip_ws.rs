//! `GET /sip`: SIP over WebSocket (RFC 7118) for agents' browser phones. The upgrade must
//! offer the `sip` subprotocol; the connection is then the SIP stack's.

use std::net::SocketAddr;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::sip::msg::MAX_MESSAGE_SIZE;
use crate::sip::transport::ws::WsAcceptor;

/// Read buffer of a connection (a message larger than it is read in several parts).
const READ_BUFFER: usize = 4096;
/// Most octets queued toward a phone that is not reading.
const MAX_WRITE_BUFFER: usize = 4 * MAX_MESSAGE_SIZE;

/// The route, handing upgraded connections to `acceptor`.
pub(crate) fn router(acceptor: WsAcceptor) -> Router {
    Router::new()
        .route("/sip", get(upgrade))
        .with_state(acceptor)
}

async fn upgrade(
    State(acceptor): State<WsAcceptor>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let offers_sip = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("sip"));
    if !offers_sip {
        return (
            StatusCode::BAD_REQUEST,
            "SIP over WebSocket needs the subprotocol \"sip\" (Sec-WebSocket-Protocol: sip, RFC 7118)",
        )
            .into_response();
    }
    // SIP messages are small and most phones idle: small buffers (the library's defaults
    // hold 128 KiB per connection), writes go out at once, and a phone that stops reading
    // cannot make the switch buffer without end.
    ws.protocols(["sip"])
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(MAX_MESSAGE_SIZE)
        .max_frame_size(MAX_MESSAGE_SIZE)
        .on_upgrade(move |socket| acceptor.serve_connection(socket, peer))
}

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
    ws.protocols(["sip"])
        .max_message_size(MAX_MESSAGE_SIZE)
        .max_frame_size(MAX_MESSAGE_SIZE)
        .on_upgrade(move |socket| acceptor.serve_connection(socket, peer))
}

//! The one TCP option every request/response socket of the CA sets.

/// Turns Nagle's algorithm off: requests and replies here are small and end one side's turn, so holding the last
/// segment until the peer's delayed ACK only adds latency (it halved the stack's throughput). For servers, pass it
/// to `axum::serve::ListenerExt::tap_io`.
pub fn no_delay(stream: &mut tokio::net::TcpStream) {
    if let Err(err) = stream.set_nodelay(true) {
        tracing::debug!(%err, "cannot set TCP_NODELAY");
    }
}

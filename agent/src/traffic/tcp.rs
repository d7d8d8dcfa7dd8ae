//! Plain TCP mode, for apps that do not speak HTTP: each connection goes
//! to a release picked by weight when it arrives and stays there, bytes
//! copied both ways until either side closes.

use super::proxy::RouteState;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) async fn serve(
    mut client: tokio::net::TcpStream,
    peer: SocketAddr,
    route: Arc<RouteState>,
) {
    let Some(backend) = route.pick() else {
        tracing::debug!(route = %route.name, peer = %peer, "no release takes traffic: connection closed");
        return;
    };
    let _pinned = backend.pin();
    let _tunnel = route.tunnels.open();
    let connect = tokio::net::TcpStream::connect(backend.addr);
    let mut release = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::warn!(route = %route.name, release = %backend.release, addr = %backend.addr, error = %e,
                "cannot reach the release");
            return;
        }
        Err(_) => {
            tracing::warn!(route = %route.name, release = %backend.release, addr = %backend.addr,
                "the release did not accept within {} s", CONNECT_TIMEOUT.as_secs());
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = release.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut release).await;
}

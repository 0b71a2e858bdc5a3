//! The built-in VNC engine behind the tunnel: the gateway connects to the VNC
//! server and `daas-vnc-engine` turns RFB into Guacamole drawing.

use futures_util::{Sink, Stream};
use tokio_util::sync::CancellationToken;

use crate::tunnel::{Tunnel, TunnelEnd};
use crate::{DisplayParams, Target, TunnelError, WsMessage};

pub(crate) async fn run<K, St, E>(
    _tunnel: &mut Tunnel<'_>,
    _target: Target,
    _password: Option<String>,
    _params: DisplayParams,
    _out: &mut crate::tunnel::ToBrowser<'_, K>,
    _stream: &mut St,
    _shutdown: &CancellationToken,
) -> Result<TunnelEnd, TunnelError>
where
    K: Sink<WsMessage> + Unpin + Send,
    St: Stream<Item = Result<WsMessage, E>> + Unpin + Send,
    E: std::error::Error,
{
    Err(TunnelError::Unsupported(
        "the built-in VNC engine is not available yet",
    ))
}

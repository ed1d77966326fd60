//! One stream from a gateway: read the header, dial the upstream (allow list, timeout),
//! report the outcome to the gateway, then splice bytes both ways until both sides are
//! done (half-closes pass through).

use std::sync::Arc;

use kakuremichi_tunnel::{IncomingStream, RefuseReason, StreamHeader};
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::dial::dial;
use crate::stats::{Gauge, add, inc};

const COPY_BUFFER: usize = 64 * 1024;

pub(crate) async fn serve_stream(
    mut stream: IncomingStream,
    shared: Arc<Shared>,
    gateway: Arc<str>,
    stop: CancellationToken,
) {
    let counters = &shared.stats.0;
    inc(&counters.streams_total);
    let header = match stream.read_header().await {
        Ok(h) => h,
        Err(e) => {
            inc(&counters.streams_refused);
            tracing::warn!(%gateway, "bad stream header from the gateway: {e}");
            stream.refuse(RefuseReason::BadHeader, &e.to_string()).await;
            return;
        }
    };
    let StreamHeader { upstream, client } = header;
    let mut upstream_conn = match dial(
        &upstream,
        &shared.settings.allow,
        shared.settings.connect_timeout,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            inc(&counters.streams_refused);
            tracing::warn!(%gateway, %upstream, %client, "refused a stream: {e}");
            stream.refuse(e.reason(), &e.to_string()).await;
            return;
        }
    };
    if let Err(e) = stream.connected().await {
        tracing::debug!(%gateway, %upstream, "the gateway went away before the splice: {e}");
        return;
    }
    let _open = Gauge::hold(&counters.streams_open);
    tracing::debug!(%gateway, %upstream, %client, "stream connected");
    let splice = tokio::io::copy_bidirectional_with_sizes(
        &mut stream,
        &mut upstream_conn,
        COPY_BUFFER,
        COPY_BUFFER,
    );
    tokio::select! {
        result = splice => match result {
            Ok((to_upstream, from_upstream)) => {
                add(&counters.bytes_to_upstreams, to_upstream);
                add(&counters.bytes_from_upstreams, from_upstream);
                tracing::debug!(%gateway, %upstream, %client, to_upstream, from_upstream, "stream closed");
            }
            Err(e) => tracing::debug!(%gateway, %upstream, %client, "stream ended: {e}"),
        },
        _ = stop.cancelled() => {}
    }
}

//! What the transport reports for metrics, as a trait: the transport knows no metric names
//! and does not import `api::metrics`; the API layer implements the trait
//! (`api::metrics::TransportMetrics`). A leaf: it imports nothing of the crate, only quinn's
//! connection type.

use std::future::Future;
use std::pin::Pin;

use quinn::Connection;

/// What the transport reports for metrics. The transport knows no metric names: the server
/// passes the API's recorder (`api::metrics::TransportMetrics`); tools and tests may pass
/// [`NoMetrics`].
pub trait Recorder: Send + Sync + 'static {
    /// A peer connection was refused: its certificate is not a node's.
    fn peer_refused_not_a_node(&self);
    /// A QUIC client connection was refused before the client API saw it; `reason` is the
    /// admission's label (`per_address`, `full`).
    fn client_connection_refused(&self, reason: &'static str);
    /// Starts metering a peer connection (opened either way); dropping the result stops it.
    fn meter_peer(&self, conn: &Connection) -> Box<dyn Metering>;
}

/// One connection's metering.
pub trait Metering: Send {
    /// Records the connection's traffic every few seconds until it closes (dropping the
    /// metering records the rest).
    fn until_closed(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// A [`Recorder`] that records nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoMetrics;

impl Recorder for NoMetrics {
    fn peer_refused_not_a_node(&self) {}
    fn client_connection_refused(&self, _reason: &'static str) {}
    fn meter_peer(&self, _conn: &Connection) -> Box<dyn Metering> {
        Box::new(NoMetrics)
    }
}

impl Metering for NoMetrics {
    fn until_closed(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::pending())
    }
}

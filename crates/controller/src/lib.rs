//! The Isthmus controller: the Neutron v2.0 API over the service layer, on any store.

pub mod api;
pub mod auth;
pub mod informer;
pub mod keys;
pub mod metrics;
pub mod service;
pub mod staged;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;

use isthmus_store::SharedStore;

pub use auth::{Auth, Keystone, KeystoneConfig};
pub use service::{Config, Endpoint, Kind, Listed, Registry, Service, TagOp};

/// Errors starting or running the controller.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The HTTP server failed.
    #[error("HTTP server failed: {0}")]
    Serve(std::io::Error),
}

/// Builds the API router for a store, serving Neutron's resources.
pub fn app(store: SharedStore, config: Config) -> axum::Router {
    app_with(store, config, Registry::neutron())
}

/// Builds the API router for a store, serving the collections of `registry` (noauth).
pub fn app_with(store: SharedStore, config: Config, registry: Registry) -> axum::Router {
    app_full(store, config, registry, Auth::NoAuth)
}

/// Builds the API router for a store, serving the collections of `registry` to callers
/// identified by `auth`.
pub fn app_full(
    store: SharedStore,
    config: Config,
    registry: Registry,
    auth: Auth,
) -> axum::Router {
    router_for(Service::new(store, config).shared(), registry, auth)
}

/// How often the controller looks for L3 service ports whose router is gone.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Deletes leftover router service ports now and then (see
/// [`Service::sweep_router_ports`]); several controllers may all do it.
async fn sweep(service: Arc<Service>) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        match service.sweep_router_ports(now, SWEEP_EVERY.as_secs()).await {
            Ok(0) => {}
            Ok(n) => eprintln!("isthmus controller: deleted {n} router ports whose router is gone"),
            Err(e) => eprintln!("isthmus controller: router port sweep failed: {e}"),
        }
    }
}

fn router_for(service: Arc<Service>, registry: Registry, auth: Auth) -> axum::Router {
    let state = Arc::new(api::AppState {
        informer: service.informer().clone(),
        service,
        metrics: metrics::Metrics::default(),
        registry,
        auth,
    });
    api::router(state)
}

/// Serves the Neutron API on `listener`, identifying callers with `auth`, until `shutdown`
/// resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: SharedStore,
    config: Config,
    auth: Auth,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ControllerError> {
    let service = Service::new(store, config).shared();
    tokio::spawn(sweep(service.clone()));
    axum::serve(listener, router_for(service, Registry::neutron(), auth))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ControllerError::Serve)
}

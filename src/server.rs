//! Start-up: open the core (database, key), start the room registry and the HTTP listeners.

use std::sync::Arc;
use std::time::Duration;

use actix_web::{App, HttpServer, middleware, web};

use crate::client_api;
use crate::client_api::misc::Presence;
use crate::config::Config;
use crate::core::{Core, StartError};
use crate::error;
use crate::federation;
use crate::http::{self, body::BodyLimit};
use crate::services::Services;

/// Installs the process-wide rustls crypto provider (ring).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Runs the server until it is stopped.
pub async fn serve(config: Config) -> Result<(), StartError> {
    install_crypto_provider();
    let core = Core::open(config)?;
    let services = Services::new(Arc::clone(&core));
    tracing::info!(
        server_name = core.server_name(),
        key_id = core.key.key_id(),
        database = ?core.db.backend(),
        "weft starting"
    );

    // Expire typing notifications every second and wake the rooms' members.
    {
        let services = Arc::clone(&services);
        actix_rt::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let wake = services.typing.sweep();
                if !wake.is_empty() {
                    services.core.notifier.wake(wake);
                }
            }
        });
    }

    let data = web::Data::from(Arc::clone(&services));
    let presence = web::Data::new(Presence::default());
    let limit = BodyLimit(core.config.limits.max_body_bytes);
    let client_addr = core.config.listeners.client.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(presence.clone())
            .app_data(limit)
            .app_data(
                web::QueryConfig::default().error_handler(|e, _| error::query_error(e).into()),
            )
            .app_data(web::PathConfig::default().error_handler(|e, _| error::path_error(e).into()))
            .wrap(http::matrix_errors())
            .wrap_fn(http::cors::cors)
            .wrap(middleware::Logger::new("%a \"%r\" %s %b %Dms").log_target("weft::http"))
            .configure(client_api::configure)
            .route(
                "/_matrix/key/v2/server",
                web::get().to(federation::keys::server_keys),
            )
            .default_service(web::to(http::unrecognized))
    })
    .bind(&client_addr)
    .map_err(|e| StartError::Key {
        path: client_addr.clone(),
        message: format!("cannot listen: {e}"),
    })?
    .shutdown_timeout(5)
    .run();
    tracing::info!(client = %client_addr, "listening");
    server.await.map_err(|e| StartError::Key {
        path: client_addr,
        message: e.to_string(),
    })
}

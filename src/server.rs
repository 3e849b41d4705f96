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

    // Federation: outbound client, key ring, per-destination senders.
    let federation_on =
        core.config.federation.enabled && !core.config.listeners.federation.is_empty();
    if federation_on {
        let fed = crate::federation::Federation::new(&core)?;
        let _ = core.federation.set(Arc::clone(&fed));
        actix_rt::spawn(async move { fed.sender.resume_all().await });
        // Remote device lists that missed an update before we stopped.
        let s2 = Arc::clone(&services);
        actix_rt::spawn(async move {
            if let Ok(users) = crate::e2ee::federation::stale_device_lists(&s2.core).await {
                for u in users {
                    crate::federation::inbound::e2ee::resync_device_list(&s2, &u).await;
                }
            }
        });
        // Linearized Matrix: PDUs staged by a join that was in progress when we stopped.
        actix_rt::spawn(federation::linearized::resume_staged(Arc::clone(&services)));
        // Linearized Matrix: our hubs may be backing off from us; tell them we are up.
        actix_rt::spawn(federation::linearized::participant::announce_return(
            Arc::clone(&services),
        ));
    }

    let data = web::Data::from(Arc::clone(&services));
    let presence = web::Data::new(Presence::default());
    let limit = BodyLimit(core.config.limits.max_body_bytes);
    let client_addr = core.config.listeners.client.clone();
    let listen_err = |addr: &str, e: std::io::Error| StartError::Key {
        path: addr.to_owned(),
        message: format!("cannot listen: {e}"),
    };
    let client_data = data.clone();
    let client_server = HttpServer::new(move || {
        App::new()
            .app_data(client_data.clone())
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
    .map_err(|e| listen_err(&client_addr, e))?
    .shutdown_timeout(5)
    .run();
    tracing::info!(client = %client_addr, "client API listening");

    let fed_server = if federation_on {
        let fed_addr = core.config.listeners.federation.clone();
        let fed_data = data.clone();
        let builder = HttpServer::new(move || {
            App::new()
                .app_data(fed_data.clone())
                .app_data(limit)
                .app_data(
                    web::QueryConfig::default().error_handler(|e, _| error::query_error(e).into()),
                )
                .app_data(
                    web::PathConfig::default().error_handler(|e, _| error::path_error(e).into()),
                )
                .wrap(http::matrix_errors())
                .wrap(
                    middleware::Logger::new("%a \"%r\" %s %b %Dms").log_target("weft::federation"),
                )
                .configure(federation::inbound::configure)
                .default_service(web::to(http::unrecognized))
        })
        .shutdown_timeout(5);
        let bound = if core.config.federation.plain_http {
            tracing::warn!(federation = %fed_addr, "federation listener speaks plain HTTP (federation.plain_http)");
            builder.bind(&fed_addr)
        } else {
            let tls =
                federation::tls::server_config(&core.config).map_err(|e| StartError::Key {
                    path: fed_addr.clone(),
                    message: e.to_string(),
                })?;
            builder.bind_rustls_0_23(&fed_addr, tls)
        };
        let srv = bound.map_err(|e| listen_err(&fed_addr, e))?.run();
        tracing::info!(federation = %fed_addr, "federation API listening");
        Some(srv)
    } else {
        None
    };

    let result = match fed_server {
        Some(f) => futures_util::future::try_join(client_server, f)
            .await
            .map(|_| ()),
        None => client_server.await,
    };
    result.map_err(|e| StartError::Key {
        path: client_addr,
        message: e.to_string(),
    })
}

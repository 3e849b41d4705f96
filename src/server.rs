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

/// One retention sweep (see `storage::retention`).
pub async fn run_retention(core: &Core) {
    let r = &core.config.retention;
    let ms = |secs: u64| (secs.saturating_mul(1000)).min(i64::MAX as u64) as i64;
    let ages = crate::storage::retention::Ages {
        inbound_txn_ms: ms(r.inbound_txn_secs),
        event_txn_ms: ms(r.event_txn_secs),
        to_device_dedup_ms: ms(r.to_device_dedup_secs),
        device_list_changes_ms: ms(r.device_list_changes_secs),
    };
    let now = crate::storage::now_ms();
    match core
        .db
        .write("retention", move |c| {
            crate::storage::retention::prune(c, now, ages)
        })
        .await
    {
        Ok(p) if p.total() > 0 => tracing::info!(pruned = ?p, "retention sweep"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "retention sweep failed"),
    }
}

/// Cluster mode: joins the cluster and wires it to the room registry (routing), the typing
/// tracker (replication) and the forwarded-request handler.
async fn start_cluster(
    services: &Arc<Services>,
) -> Result<Arc<crate::cluster::Cluster>, StartError> {
    use crate::cluster::{Cluster, TypingChange};
    let cluster = Cluster::start(Arc::clone(&services.core))
        .await
        .map_err(StartError::Cluster)?;
    services.rooms.attach_cluster(Arc::clone(&cluster));
    {
        let c = Arc::downgrade(&cluster);
        let node = cluster.node_id.clone();
        services.typing.set_replicator(Box::new(
            move |room_id, user_id, typing, timeout, audience| {
                if let Some(c) = c.upgrade() {
                    c.publish_typing(TypingChange {
                        node: node.clone(),
                        room_id: room_id.to_owned(),
                        user_id: user_id.to_owned(),
                        typing,
                        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                        audience: audience.to_vec(),
                    });
                }
            },
        ));
    }
    {
        let s = Arc::downgrade(services);
        cluster.on_typing(Arc::new(move |t: TypingChange| {
            if let Some(s) = s.upgrade() {
                let timeout = Duration::from_millis(t.timeout_ms.min(10 * 60 * 1000));
                s.typing.apply_remote(
                    &t.room_id,
                    &t.user_id,
                    t.typing,
                    timeout,
                    t.audience.clone(),
                );
                s.core.notifier.wake_local(t.audience);
            }
        }));
    }
    let s = Arc::clone(services);
    cluster
        .serve_rooms(Arc::new(move |bytes: Vec<u8>| {
            let s = Arc::clone(&s);
            Box::pin(async move { crate::rooms::remote::handle(&s.rooms, &bytes).await })
        }))
        .await
        .map_err(StartError::Cluster)?;
    Ok(cluster)
}

/// Runs the server until it is stopped.
pub async fn serve(config: Config) -> Result<(), StartError> {
    install_crypto_provider();
    let core = Core::open(config)?;
    let services = Services::new(Arc::clone(&core));
    let remote = Arc::new(federation::FederationRemote::default());
    let _ = services
        .remote
        .set(Arc::clone(&remote) as Arc<dyn crate::services::Remote>);
    tracing::info!(
        server_name = core.server_name(),
        key_id = core.key.key_id(),
        database = ?core.db.backend(),
        "weft starting"
    );

    if core.config.metrics.enabled {
        crate::observe::metrics::install();
    }
    let cluster = if core.config.cluster.enabled {
        Some(start_cluster(&services).await?)
    } else {
        None
    };
    // Exporter housekeeping; deactivated users leave their rooms (also those deactivated
    // from the command line, while the server was running or stopped).
    {
        let services = Arc::clone(&services);
        actix_rt::spawn(async move {
            let mut tick = tokio::time::interval(crate::admin::SWEEP_INTERVAL);
            loop {
                tick.tick().await;
                crate::observe::metrics::upkeep();
                crate::admin::sweep_deactivated(&services).await;
            }
        });
    }

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

    // Write the devices' last-seen times and addresses in batches.
    {
        let services = Arc::clone(&services);
        let every = Duration::from_millis(core.config.devices.last_seen_flush_ms.max(10));
        actix_rt::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                if let Err(e) = services.last_seen.flush(&services.core).await {
                    tracing::warn!(error = %e, "could not write devices' last-seen times");
                }
            }
        });
    }

    // Rate-limit buckets that are full again are forgotten (bounded maps).
    {
        let services = Arc::clone(&services);
        actix_rt::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tick.tick().await;
                services.limits.sweep();
            }
        });
    }

    // Push: evaluation behind the frontier, delivery to push gateways.
    crate::push::start(&services);
    // Search: the full-text index, behind the frontier.
    crate::search::indexer::start(Arc::clone(&core), Arc::clone(&services.search));

    // Retention: prune transaction-ID, de-duplication and change-log tables.
    let sweep_secs = core.config.retention.sweep_interval_secs;
    if sweep_secs > 0 {
        let core = Arc::clone(&core);
        actix_rt::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(sweep_secs));
            loop {
                tick.tick().await;
                run_retention(&core).await;
            }
        });
    }

    // Federation: outbound client, key ring, per-destination senders.
    let federation_on =
        core.config.federation.enabled && !core.config.listeners.federation.is_empty();
    if federation_on {
        let fed = crate::federation::Federation::new(&core)?;
        core.delivery.register(
            fed.sender.waker(),
            Arc::clone(&fed) as Arc<dyn crate::delivery::HubLink>,
        );
        remote.start(Arc::clone(&fed));
        if let Some(c) = &cluster {
            fed.sender
                .attach_cluster(Arc::clone(c))
                .await
                .map_err(StartError::Cluster)?;
        }
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
        // Partial-state joins whose members were still being fetched when we stopped.
        actix_rt::spawn(federation::membership::resume_partial_state(Arc::clone(
            &services,
        )));
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
    let metrics_cfg = core.config.metrics.clone();
    let metrics_here =
        (metrics_cfg.enabled && metrics_cfg.listener.is_empty()).then(|| metrics_cfg.path.clone());
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
            // Innermost, so that it runs last before routing.
            .wrap_fn(|mut req, srv| {
                client_api::r0_as_v3(&mut req);
                actix_web::dev::Service::call(srv, req)
            })
            .wrap(http::matrix_errors())
            .wrap_fn(http::cors::cors)
            .wrap(middleware::from_fn(crate::observe::request::client))
            .configure(http::well_known::configure)
            .configure(client_api::configure)
            .configure(|cfg| crate::admin_api::configure(cfg, metrics_here.as_deref()))
            .route(
                "/_matrix/key/v2/server",
                web::get().to(federation::keys::server_keys),
            )
            .default_service(web::to(http::unrecognized))
    })
    .disable_signals()
    .bind(&client_addr)
    .map_err(|e| listen_err(&client_addr, e))?
    .shutdown_timeout(5)
    .run();
    tracing::info!(client = %client_addr, "client API listening");
    let mut listeners = vec![client_server.handle()];

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
                .wrap(middleware::from_fn(crate::observe::request::federation))
                .configure(http::well_known::configure)
                .configure(federation::inbound::configure)
                .default_service(web::to(http::unrecognized))
        })
        .disable_signals()
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
        listeners.push(srv.handle());
        Some(srv)
    } else {
        None
    };

    // A separate metrics listener (`metrics.listener`), when configured.
    if metrics_cfg.enabled && !metrics_cfg.listener.is_empty() {
        let (addr, path, mdata) = (
            metrics_cfg.listener.clone(),
            metrics_cfg.path.clone(),
            data.clone(),
        );
        let srv = HttpServer::new(move || {
            let path = path.clone();
            App::new()
                .app_data(mdata.clone())
                .wrap(http::matrix_errors())
                .configure(move |cfg| crate::admin_api::configure_metrics_only(cfg, &path))
                .default_service(web::to(http::unrecognized))
        })
        .workers(1)
        .disable_signals()
        .bind(&addr)
        .map_err(|e| listen_err(&addr, e))?
        .shutdown_timeout(1)
        .run();
        tracing::info!(metrics = %addr, "metrics listening");
        listeners.push(srv.handle());
        actix_rt::spawn(srv);
    }

    // One handler stops every listener. Each actix server watching the signals itself let
    // a SIGTERM that came right after start stop one listener and not the other, and the
    // process never exited.
    actix_rt::spawn(async move {
        stop_signal().await;
        tracing::info!("stop signal received; stopping every listener gracefully");
        for listener in listeners {
            listener.stop(true).await;
        }
    });

    let result = match fed_server {
        Some(f) => futures_util::future::try_join(client_server, f)
            .await
            .map(|_| ()),
        None => client_server.await,
    };
    if let Some(c) = cluster {
        c.leave().await;
    }
    result.map_err(|e| StartError::Key {
        path: client_addr,
        message: e.to_string(),
    })
}

/// Resolves at the first SIGTERM or SIGINT (Ctrl-C).
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(error = %e, "cannot watch for SIGTERM; only Ctrl-C stops the server");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

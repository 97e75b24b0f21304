pub mod devices;
pub mod openapi;
pub mod pages;
pub mod readings;
pub mod sessions;
pub mod stream;
pub mod users;

use actix_web::{Route, guard, web};

/// GET and HEAD share a handler: actix sends the headers of the GET response without its body.
pub fn get_or_head() -> Route {
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()))
}

/// Methods of the HTML pages (not in the OpenAPI document), for the `Allow` header of a 405;
/// `configure` below routes exactly these.
pub fn page_methods(pattern: &str) -> Option<&'static str> {
    match pattern {
        "/" | "/devices/{device_id}" => Some("GET, HEAD"),
        "/login" | "/devices" => Some("GET, HEAD, POST"),
        "/users" | "/logout" => Some("POST"),
        _ => None,
    }
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/api/v1/users").route(web::post().to(users::create)))
        .service(web::resource("/api/v1/sessions").route(web::post().to(sessions::create)))
        .service(
            web::resource("/api/v1/sessions/current")
                .route(get_or_head().to(sessions::current))
                .route(web::delete().to(sessions::delete_current)),
        )
        .service(
            web::resource("/api/v1/devices")
                .route(get_or_head().to(devices::list))
                .route(web::post().to(devices::create)),
        )
        .service(
            web::resource("/api/v1/devices/{device_id}")
                .route(get_or_head().to(devices::get))
                .route(web::put().to(devices::replace))
                .route(web::patch().to(devices::patch))
                .route(web::delete().to(devices::delete)),
        )
        .service(
            web::resource("/api/v1/devices/{device_id}/credentials").route(web::post().to(devices::rotate_credentials)),
        )
        .service(
            web::resource("/api/v1/devices/{device_id}/readings")
                .route(get_or_head().to(readings::query))
                .route(web::delete().to(readings::delete)),
        )
        .service(web::resource("/api/v1/devices/{device_id}/readings/latest").route(get_or_head().to(readings::latest)))
        .service(
            web::resource("/api/v1/devices/{device_id}/readings/aggregate").route(get_or_head().to(readings::aggregate)),
        )
        .service(web::resource("/api/v1/devices/{device_id}/stream").route(web::get().to(stream::stream)))
        .service(web::resource("/openapi.json").route(get_or_head().to(openapi::document)))
        .service(web::resource("/").route(get_or_head().to(pages::index)))
        .service(
            web::resource("/login")
                .route(get_or_head().to(pages::login_form))
                .route(web::post().to(pages::login_submit)),
        )
        .service(web::resource("/users").route(web::post().to(pages::user_create)))
        .service(web::resource("/logout").route(web::post().to(pages::logout)))
        .service(
            web::resource("/devices")
                .route(get_or_head().to(pages::device_list))
                .route(web::post().to(pages::device_create)),
        )
        .service(web::resource("/devices/{device_id}").route(get_or_head().to(pages::device_page)));
}

//! The OpenAPI 3.1 document and the docs UI, served from the binary.
//!
//! The document is assembled from the `#[utoipa::path]` annotations of the
//! handlers, so a documented route cannot drift from its handler's shape.

use crate::http::{admin, async_admin, async_predict, predict};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};

struct ApiKeyAuth;

impl Modify for ApiKeyAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "Authorization",
                "`Api-Key wdr_…` (or `Bearer wdr_…`)",
            ))),
        );
    }
}

/// The whole public API.
#[derive(OpenApi)]
#[openapi(
    info(title = "warder", description = "Gateway for ML model APIs: predict routes and admin API. \
        Errors are `{\"error\": {\"code\", \"message\", \"request_id\"}}`; every response carries `X-Request-Id`."),
    modifiers(&ApiKeyAuth),
    paths(
        predict::model_predict, predict::env_predict, predict::version_predict,
        predict::model_predict_internal, predict::version_predict_internal,
        predict::model_version_predict_internal,
        admin::create_user, admin::list_users, admin::get_user,
        admin::create_key, admin::list_keys, admin::revoke_key,
        admin::create_model, admin::list_models, admin::get_model,
        admin::create_version, admin::list_versions, admin::get_version, admin::update_version,
        admin::list_environments, admin::promote,
        admin::create_policy, admin::list_policies, admin::get_policy,
        admin::create_grant, admin::list_grants, admin::get_grant, admin::delete_grant,
        admin::usage, admin::whoami,
        async_predict::model_async, async_predict::env_async, async_predict::version_async,
        async_predict::status, async_predict::cancel, async_predict::queue_status,
        async_admin::list, async_admin::read, async_admin::deliveries, async_admin::redeliver,
        async_admin::rotate_secret,
        super::routes_listing,
    ),
    tags((name = "predict", description = "Sync inference"),
        (name = "async", description = "Async inference: queue, status, cancel, signed webhooks"), (name = "admin", description = "Control plane (admin scope)"))
)]
pub struct ApiDoc;

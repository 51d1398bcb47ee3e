//! The OpenAPI 3.1 document, generated from the handlers' annotations and the types they
//! take and answer, served at `/openapi.json`.

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::analytics::{Dim, Granularity, ReportName, Table};
use crate::error::{ErrorBody, FieldError};
use crate::ingest::{PurchaseIn, PurchasesIn, Receipt};

/// The API's document.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "lakeshop",
        description = "Purchase ingest into Kafka and shop analytics from ClickHouse. Writes need a bearer write token; reads are open unless the server requires a token. Money is an exact decimal string in answers.",
        license(name = "Apache-2.0", identifier = "Apache-2.0")
    ),
    paths(
        crate::ingest::post_purchases,
        crate::analytics::report,
        crate::analytics::series,
    ),
    components(schemas(
        PurchaseIn,
        PurchasesIn,
        Receipt,
        ErrorBody,
        FieldError,
        Table,
        Granularity,
        Dim,
        ReportName
    )),
    modifiers(&Bearer),
    tags(
        (name = "ingest", description = "Data into the pipeline"),
        (name = "analytics", description = "Reports and live series"),
    )
)]
pub struct ApiDoc;

/// Adds the bearer security scheme the operations name.
#[derive(Debug)]
struct Bearer;

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
        }
    }
}

/// `GET /openapi.json`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

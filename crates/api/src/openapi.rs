//! The OpenAPI 3.1 document, generated from the handlers' annotations and the types they
//! take and answer, served at `/openapi.json`.

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::analytics::{Dim, Granularity, ReportName, Table};
use crate::dimensions::{ClientIn, ProductIn, SellerIn, WriteReceipt};
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
        crate::dimensions::post_sellers,
        crate::dimensions::put_seller,
        crate::dimensions::post_clients,
        crate::dimensions::put_client,
        crate::dimensions::post_products,
        crate::dimensions::put_product,
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
        ReportName,
        SellerIn,
        ClientIn,
        ProductIn,
        WriteReceipt
    )),
    modifiers(&Bearer, &RateLimited),
    tags(
        (name = "ingest", description = "Data into the pipeline"),
        (name = "analytics", description = "Reports and live series"),
        (name = "dimensions", description = "Sellers and clients into PostgreSQL, products into the source Delta table"),
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

/// Adds the 429 answer of the rate limit to every operation under `/api/`.
#[derive(Debug)]
struct RateLimited;

impl Modify for RateLimited {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let response = ResponseBuilder::new()
            .description("Over the client's request rate (`api.rate_limit`); see Retry-After")
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build();
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/api/") {
                continue;
            }
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                op.responses
                    .responses
                    .insert("429".into(), response.clone().into());
            }
        }
    }
}

/// `GET /openapi.json`.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

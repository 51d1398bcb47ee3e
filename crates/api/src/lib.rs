//! The REST API: ingest of purchases, products, sellers and clients, analytics reports,
//! Prometheus metrics and the OpenAPI document.

//! The streaming loader: Kafka purchases, enriched from a dimension cache, into event-time
//! window aggregates upserted into ClickHouse exactly once, with alerts.

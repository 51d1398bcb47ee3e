//! Clients and sellers into PostgreSQL with binary COPY.

use futures::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::NoTls;

use crate::data::World;
use crate::{Error, Result, Targets};

const CLIENTS_DDL: &str = include_str!("../../../schemas/postgres/clients.sql");
const SELLERS_DDL: &str = include_str!("../../../schemas/postgres/sellers.sql");

fn pg_err(table: &str) -> impl Fn(tokio_postgres::Error) -> Error + '_ {
    move |source| Error::Postgres {
        table: table.to_string(),
        source,
    }
}

/// Creates the tables (schemas/postgres) if needed and loads the world's clients and
/// sellers; replaces what was there unless `append`.
pub async fn write(world: &World, targets: &Targets, append: bool) -> Result<()> {
    let (mut client, connection) = tokio_postgres::connect(&targets.postgres_url, NoTls)
        .await
        .map_err(pg_err("connect"))?;
    let conn = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "PostgreSQL connection ended");
        }
    });
    // The DDL names the default tables; other names get the same shape.
    let clients_ddl = CLIENTS_DDL.replace("clients", &targets.clients_table);
    let sellers_ddl = SELLERS_DDL.replace("sellers", &targets.sellers_table);
    client
        .batch_execute(&clients_ddl)
        .await
        .map_err(pg_err(&targets.clients_table))?;
    client
        .batch_execute(&sellers_ddl)
        .await
        .map_err(pg_err(&targets.sellers_table))?;

    let tx = client.transaction().await.map_err(pg_err("begin"))?;
    if !append {
        tx.batch_execute(&format!(
            "TRUNCATE {}, {}",
            targets.clients_table, targets.sellers_table
        ))
        .await
        .map_err(pg_err(&targets.clients_table))?;
    }
    {
        let table = &targets.sellers_table;
        let sink = tx
            .copy_in(&format!(
                "COPY {table} (seller_id, name, region, created_at, updated_at) FROM STDIN BINARY"
            ))
            .await
            .map_err(pg_err(table))?;
        let writer = BinaryCopyInWriter::new(
            sink,
            &[
                Type::UUID,
                Type::VARCHAR,
                Type::VARCHAR,
                Type::TIMESTAMPTZ,
                Type::TIMESTAMPTZ,
            ],
        );
        pin_mut!(writer);
        for s in &world.sellers {
            writer
                .as_mut()
                .write(&[
                    &s.seller_id,
                    &s.name,
                    &s.region,
                    &s.created_at,
                    &s.updated_at,
                ])
                .await
                .map_err(pg_err(table))?;
        }
        writer.finish().await.map_err(pg_err(table))?;
    }
    {
        let table = &targets.clients_table;
        let sink = tx
            .copy_in(&format!(
                "COPY {table} (client_id, first_name, last_name, email, address, registration_date, updated_at) FROM STDIN BINARY"
            ))
            .await
            .map_err(pg_err(table))?;
        let writer = BinaryCopyInWriter::new(
            sink,
            &[
                Type::UUID,
                Type::VARCHAR,
                Type::VARCHAR,
                Type::VARCHAR,
                Type::VARCHAR,
                Type::TIMESTAMPTZ,
                Type::TIMESTAMPTZ,
            ],
        );
        pin_mut!(writer);
        for c in &world.clients {
            writer
                .as_mut()
                .write(&[
                    &c.client_id,
                    &c.first_name,
                    &c.last_name,
                    &c.email,
                    &c.address,
                    &c.registration_date,
                    &c.updated_at,
                ])
                .await
                .map_err(pg_err(table))?;
        }
        writer.finish().await.map_err(pg_err(table))?;
    }
    tx.commit().await.map_err(pg_err("commit"))?;
    drop(client);
    let _ = conn.await;
    Ok(())
}

//! Forwarding of rejected records to the dead-letters topic: the raw payload, with the reason
//! and the record's source position in headers (`reason`, `source_topic`, `source_partition`,
//! `source_offset`), keyed by the source position.
//!
//! At least once: a flush waits until the broker acknowledged every forwarded record before
//! the checkpoint is written, and a record the broker refused fails the flush for good (the
//! loader stops, and a restart forwards the records after the checkpoint again). So a dead
//! letter is never lost, and after a crash the topic may hold one twice, with the same key.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::message::{DeliveryResult, Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer as _, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext};

use crate::{Error, Result};

/// How long a flush waits for the broker to acknowledge forwarded records.
const ACK_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Deliveries {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

struct Context(Arc<Deliveries>);

impl ClientContext for Context {}

impl ProducerContext for Context {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        if let Err((e, _)) = result {
            self.0.failed.fetch_add(1, Ordering::Relaxed);
            let mut first = self.0.first_error.lock().unwrap_or_else(|p| p.into_inner());
            first.get_or_insert_with(|| e.to_string());
        }
    }
}

/// A producer of dead letters.
pub struct DeadLetters {
    topic: String,
    producer: ThreadedProducer<Context>,
    deliveries: Arc<Deliveries>,
    /// Records forwarded since the last acknowledged flush.
    pending: u64,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("topic", &self.topic)
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl DeadLetters {
    /// A producer to `topic` with the loader's client settings (brokers, security).
    pub fn new(client: &ClientConfig, topic: &str) -> Result<Self> {
        let deliveries = Arc::new(Deliveries::default());
        let producer = client
            .clone()
            .set("message.max.bytes", "8388608")
            .set("linger.ms", "5")
            .create_with_context(Context(deliveries.clone()))
            .map_err(|source| Error::Kafka {
                topic: topic.to_string(),
                source,
            })?;
        Ok(Self {
            topic: topic.to_string(),
            producer,
            deliveries,
            pending: 0,
        })
    }

    /// Queues one rejected record; waits while the producer's queue is full.
    pub fn forward(
        &mut self,
        source_topic: &str,
        partition: i32,
        offset: i64,
        payload: &[u8],
        reason: &str,
    ) -> Result<()> {
        let key = format!("{source_topic}/{partition}/{offset}");
        let partition_text = partition.to_string();
        let offset_text = offset.to_string();
        let headers = OwnedHeaders::new_with_capacity(4)
            .insert(Header {
                key: "reason",
                value: Some(reason),
            })
            .insert(Header {
                key: "source_topic",
                value: Some(source_topic),
            })
            .insert(Header {
                key: "source_partition",
                value: Some(&partition_text),
            })
            .insert(Header {
                key: "source_offset",
                value: Some(&offset_text),
            });
        let mut record = BaseRecord::to(&self.topic)
            .key(&key)
            .payload(payload)
            .headers(headers);
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    r,
                )) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((source, _)) => {
                    return Err(Error::Kafka {
                        topic: self.topic.clone(),
                        source,
                    })
                }
            }
        }
        self.pending += 1;
        Ok(())
    }

    /// Waits until the broker acknowledged every forwarded record; fails if one was refused.
    pub fn acknowledge(&mut self) -> Result<()> {
        if self.pending > 0 {
            self.producer
                .flush(ACK_TIMEOUT)
                .map_err(|source| Error::Kafka {
                    topic: self.topic.clone(),
                    source,
                })?;
        }
        if self.deliveries.failed.load(Ordering::Relaxed) > 0 {
            let first = self
                .deliveries
                .first_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_default();
            return Err(Error::DeadLetters(format!(
                "the broker refused a dead letter for {}: {first}",
                self.topic
            )));
        }
        self.pending = 0;
        Ok(())
    }
}

//! The shared Kafka consumer against the local broker: each partition is handed over from
//! its owner's position on (what the rewind reads before it is skipped), exactly once and in
//! order; a seek hands a partition over again from a new position; positions that cannot be
//! read are retried and, once the consumer is stopped, end in a typed error.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use lakeshop_sources::kafka::{
    ConsumerError, ConsumerOptions, KafkaConsumer, Polled, Resume, Resumed,
};

/// Positions held in memory; `failures` answers fail before the first success.
struct Positions {
    next: Mutex<BTreeMap<i32, Option<i64>>>,
    failures: AtomicUsize,
    calls: AtomicUsize,
}

impl Resume for Positions {
    type State = &'static str;
    const FROM: &'static str = "the test's positions";

    fn resume(&self, partitions: &[i32]) -> Result<Vec<Resumed<&'static str>>, String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |f| f.checked_sub(1))
            .is_ok()
        {
            return Err("store not answering".into());
        }
        let next = self.next.lock().map_err(|e| e.to_string())?;
        Ok(partitions
            .iter()
            .map(|p| Resumed {
                partition: *p,
                next: next.get(p).copied().flatten(),
                state: "restored",
            })
            .collect())
    }
}

fn options(topic: &str, stop: Arc<AtomicBool>) -> ConsumerOptions {
    let mut client = rdkafka::ClientConfig::new();
    client.set("bootstrap.servers", lakeshop_testkit::kafka_brokers());
    ConsumerOptions {
        client,
        topic: topic.to_string(),
        group_id: lakeshop_testkit::unique("consumer_test"),
        group: false,
        fetch_wait: Some(Duration::from_millis(20)),
        stop,
        lag: Arc::new(|_, _| {}),
    }
}

/// (partition, offset, payload) of a record handed over.
type Got = (i32, i64, String);
/// The records handed over, and the partitions assigned with their states.
type Drained = (Vec<Got>, Vec<(i32, &'static str)>);

/// Polls until caught up: the records in the order handed over, and the partitions assigned
/// with their states.
fn drain(consumer: &mut KafkaConsumer<Positions>) -> Result<Drained> {
    let mut records = Vec::new();
    let mut assigned = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !consumer.caught_up(Duration::from_millis(700)) {
        anyhow::ensure!(Instant::now() < deadline, "not caught up after 60 s");
        let Polled {
            revoked,
            assigned: a,
            record,
        } = consumer.poll(Duration::from_millis(50))?;
        anyhow::ensure!(revoked.is_empty(), "revoked {revoked:?} without a group");
        assigned.extend(a.into_iter().map(|r| (r.partition, r.state)));
        if let Some(r) = record {
            records.push((
                r.partition(),
                r.offset(),
                String::from_utf8_lossy(r.payload()).into_owned(),
            ));
        }
    }
    Ok((records, assigned))
}

fn expected(partition: i32, offsets: std::ops::Range<i64>) -> Vec<Got> {
    offsets
        .map(|o| (partition, o, format!("p{partition}-{o}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn partitions_are_handed_over_from_their_positions_once_and_in_order() -> Result<()> {
    let topic = lakeshop_testkit::unique("consumer");
    lakeshop_testkit::create_topic(&topic, 2).await?;
    let mut records = Vec::new();
    for (p, n) in [(0, 30), (1, 20)] {
        for o in 0..n {
            records.push((p, format!("p{p}-{o}").into_bytes(), 1_700_000_000_000 + o));
        }
    }
    lakeshop_testkit::produce(&topic, &records).await?;
    let positions = Positions {
        next: Mutex::new(BTreeMap::from([(0, Some(12)), (1, None)])),
        failures: AtomicUsize::new(2),
        calls: AtomicUsize::new(0),
    };
    let opts = options(&topic, Arc::new(AtomicBool::new(false)));
    tokio::task::spawn_blocking(move || -> Result<()> {
        let mut consumer = KafkaConsumer::start(&opts, positions)?;
        assert_eq!(
            consumer.resumer().calls.load(Ordering::SeqCst),
            3,
            "two failed position reads, then one that worked"
        );
        let (got, assigned) = drain(&mut consumer)?;
        let mut assigned_sorted = assigned.clone();
        assigned_sorted.sort();
        assert_eq!(assigned_sorted, vec![(0, "restored"), (1, "restored")]);
        let by_partition =
            |p: i32| -> Vec<Got> { got.iter().filter(|r| r.0 == p).cloned().collect() };
        assert_eq!(by_partition(0), expected(0, 12..30), "partition 0 from 12");
        assert_eq!(
            by_partition(1),
            expected(1, 0..20),
            "partition 1 from the start"
        );
        // Handed over again from a new position after a seek, and nothing else.
        consumer.seek(0, Some(25))?;
        let (again, assigned) = drain(&mut consumer)?;
        assert!(assigned.is_empty());
        assert_eq!(again, expected(0, 25..30), "partition 0 again from 25");
        Ok(())
    })
    .await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn positions_that_cannot_be_read_end_in_a_typed_error_once_stopped() -> Result<()> {
    let topic = lakeshop_testkit::unique("consumer");
    lakeshop_testkit::create_topic(&topic, 1).await?;
    let positions = Positions {
        next: Mutex::new(BTreeMap::new()),
        failures: AtomicUsize::new(usize::MAX),
        calls: AtomicUsize::new(0),
    };
    // Stopped before it starts: the first failure is the last try.
    let opts = options(&topic, Arc::new(AtomicBool::new(true)));
    tokio::task::spawn_blocking(move || -> Result<()> {
        let mut consumer = KafkaConsumer::start(&opts, positions)?;
        match consumer.poll(Duration::from_millis(50)) {
            Err(ConsumerError::Resume {
                partitions, from, ..
            }) => {
                assert_eq!(partitions, vec![0]);
                assert_eq!(from, "the test's positions");
            }
            Err(other) => anyhow::bail!("unexpected error: {other}"),
            Ok(p) => anyhow::bail!("polled without positions: {:?}", p.record.is_some()),
        }
        Ok(())
    })
    .await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_topic_without_partitions_is_a_clear_error() -> Result<()> {
    let topic = lakeshop_testkit::unique("missing");
    let positions = Positions {
        next: Mutex::new(BTreeMap::new()),
        failures: AtomicUsize::new(0),
        calls: AtomicUsize::new(0),
    };
    let mut opts = options(&topic, Arc::new(AtomicBool::new(false)));
    // The local broker may create a topic on a metadata request; ask it not to.
    opts.client.set("allow.auto.create.topics", "false");
    let err =
        tokio::task::spawn_blocking(move || KafkaConsumer::start(&opts, positions).err()).await?;
    match err {
        Some(ConsumerError::NoPartitions { topic: t }) => assert_eq!(t, topic),
        // A broker that reports the missing topic as an error in the metadata.
        Some(ConsumerError::Kafka { .. }) => {}
        other => anyhow::bail!("expected an error for a missing topic, got {other:?}"),
    }
    Ok(())
}

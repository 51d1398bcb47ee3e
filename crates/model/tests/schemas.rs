//! The files under `schemas/` and the code describe the same records.
//!
//! - The Kafka JSON Schemas accept and reject exactly what `parse_purchase` and
//!   `parse_interaction` do, over a corpus of valid and invalid records of every reason;
//!   the only differences are the rules each schema lists in `x-lakeshop-rules`, and each of
//!   those is shown to be one (the code rejects with the named reason, the schema accepts).
//! - The stage table files equal the Arrow schemas of `lakeshop_model::arrow_schema`.
//! - The Avro product schema equals `arrow_schema::product()`.
//! - Every file under `schemas/` is parsed by a test.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use deltalake::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use lakeshop_model::{
    arrow_schema, parse_interaction, parse_purchase, Reason, Rejection, MAX_PAYLOAD_BYTES,
    SCHEMA_VERSION,
};
use serde_json::Value;

fn schemas_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schemas")
}

fn read(rel: &str) -> String {
    let path = schemas_dir().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn read_json(rel: &str) -> Value {
    serde_json::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not JSON: {e}"))
}

/// The clock every corpus record is judged against.
fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2025-04-07T00:00:00Z")
        .expect("valid instant")
        .with_timezone(&Utc)
}

// ---------------------------------------------------------------------------------------
// Kafka events: code and JSON Schema agree.
// ---------------------------------------------------------------------------------------

/// A JSON Schema, compiled twice: with `format` asserted, and as an annotation only (what
/// many validators do). Both must give the same verdicts, so the patterns carry the rules.
struct JsonSchema {
    doc: Value,
    with_formats: jsonschema::Validator,
    without_formats: jsonschema::Validator,
}

impl JsonSchema {
    fn load(rel: &str) -> Self {
        let doc = read_json(rel);
        jsonschema::meta::validate(&doc)
            .unwrap_or_else(|e| panic!("{rel} is not a valid JSON Schema: {e}"));
        let build = |formats: bool| {
            jsonschema::options()
                .should_validate_formats(formats)
                .build(&doc)
                .unwrap_or_else(|e| panic!("{rel} does not compile: {e}"))
        };
        Self {
            with_formats: build(true),
            without_formats: build(false),
            doc,
        }
    }

    /// The schema's verdict on raw bytes: a payload that is not JSON is not valid.
    fn accepts(&self, bytes: &[u8]) -> (bool, bool) {
        match serde_json::from_slice::<Value>(bytes) {
            Ok(v) => (
                self.with_formats.is_valid(&v),
                self.without_formats.is_valid(&v),
            ),
            Err(_) => (false, false),
        }
    }

    /// The reasons listed in `x-lakeshop-rules`.
    fn rule_reasons(&self) -> BTreeSet<Reason> {
        self.doc["x-lakeshop-rules"]
            .as_array()
            .expect("x-lakeshop-rules is an array")
            .iter()
            .map(|rule| {
                assert!(
                    rule["rule"].as_str().is_some_and(|s| !s.is_empty()),
                    "{rule} explains itself"
                );
                serde_json::from_value(rule["reason"].clone())
                    .unwrap_or_else(|e| panic!("{rule}: not a Reason name: {e}"))
            })
            .collect()
    }
}

/// One corpus record. `rule` is set for the records JSON Schema cannot judge: the code must
/// reject them with that reason and the schema accept them.
struct Case {
    name: String,
    bytes: Vec<u8>,
    rule: Option<Reason>,
}

#[derive(Default)]
struct Corpus(Vec<Case>);

impl Corpus {
    fn add(&mut self, name: impl Into<String>, text: impl Into<Vec<u8>>) {
        self.0.push(Case {
            name: name.into(),
            bytes: text.into(),
            rule: None,
        });
    }

    fn rule(&mut self, name: impl Into<String>, text: impl Into<Vec<u8>>, reason: Reason) {
        self.0.push(Case {
            name: name.into(),
            bytes: text.into(),
            rule: Some(reason),
        });
    }
}

/// A JSON object from `(name, raw JSON value)` pairs, with `changes` applied: `Some` replaces
/// a member's value (or appends the member), `None` removes it. Values are JSON text, so a
/// number literal reaches the parsers exactly as written.
fn object(base: &[(&str, &str)], changes: &[(&str, Option<&str>)]) -> String {
    let mut members: Vec<(String, String)> = base
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    for (name, value) in changes {
        let at = members.iter().position(|(k, _)| k == name);
        match (at, value) {
            (Some(i), Some(v)) => members[i].1 = (*v).to_owned(),
            (Some(i), None) => {
                members.remove(i);
            }
            (None, Some(v)) => members.push(((*name).to_owned(), (*v).to_owned())),
            (None, None) => {}
        }
    }
    let body: Vec<String> = members
        .iter()
        .map(|(k, v)| format!("\"{k}\":{v}"))
        .collect();
    format!("{{{}}}", body.join(","))
}

fn quoted(s: &str) -> String {
    format!("\"{s}\"")
}

const PURCHASE: &[(&str, &str)] = &[
    ("purchase_id", r#""123e4567-e89b-12d3-a456-426614174000""#),
    ("client_id", r#""987e6543-e21b-45d3-b123-526714174000""#),
    ("product_id", r#""543e2198-e89b-12d3-a456-426614174000""#),
    ("quantity", "2"),
    ("price", "49.99"),
    ("timestamp", r#""2025-04-06T12:00:00Z""#),
];

const INTERACTION: &[(&str, &str)] = &[
    ("event_id", r#""0b6f1c1e-3b7a-4c55-9a51-3f0a1d2e4b6c""#),
    ("client_id", r#""987e6543-e21b-45d3-b123-526714174000""#),
    ("product_id", r#""543e2198-e89b-12d3-a456-426614174000""#),
    ("kind", r#""view""#),
    ("timestamp", r#""2025-04-06T12:00:00Z""#),
];

/// Id values, well-formed or not.
const IDS: &[&str] = &[
    r#""123E4567-E89B-12D3-A456-426614174000""#,
    r#""\u0031\u0032\u0033e4567-e89b-12d3-a456-426614174000""#,
    r#""abc""#,
    r#""""#,
    r#""123e4567e89b12d3a456426614174000""#,
    r#""{123e4567-e89b-12d3-a456-426614174000}""#,
    r#""urn:uuid:123e4567-e89b-12d3-a456-426614174000""#,
    r#""123e4567-e89b-12d3-a456-42661417400g""#,
    r#""123e4567-e89b-12d3-a456-4266141740001""#,
    r#""123e4567-e89b-12d3-a4564-26614174000""#,
    "123",
];

/// Timestamp values, shared by both event kinds; judged against [`now`].
const TIMESTAMPS: &[&str] = &[
    "2025-04-06T12:00:00+03:00",
    "2025-04-06T12:00:00-00:00",
    "2025-04-06T12:00:00.123456789123Z",
    "2025-04-06t12:00:00z",
    "2024-02-29T00:00:00Z",
    "2000-02-29T00:00:00Z",
    "2000-01-01T00:00:00Z",
    "1999-12-31T23:30:00-01:00",
    "2025-04-08T00:00:00Z",
    "2025-04-07T23:59:59+23:59",
    "yesterday",
    "2025-04-06",
    "2025-04-06T12:00:00",
    "2025-04-06 12:00:00Z",
    "2025-04-06T12:00Z",
    "2025-04-06T12:00:00.Z",
    "2025-04-06T12:00:00+0300",
    "2025-04-06T12:00:00+03",
    "2025-04-06T12:00:00+24:00",
    "2025-04-06T12:00:00\u{2212}03:00",
    "2025-02-29T12:00:00Z",
    "2100-02-29T12:00:00Z",
    "2025-04-31T12:00:00Z",
    "2025-13-01T12:00:00Z",
    "2025-04-06T24:00:00Z",
    "2025-04-06T12:60:00Z",
    "2025-04-06T12:00:60Z",
    "2016-12-31T23:59:60Z",
    "2025-04-06T12:00:00Z ",
    "\u{0662}025-04-06T12:00:00Z",
    "+2025-04-06T12:00:00Z",
];

fn purchase_corpus() -> Corpus {
    let p = |changes: &[(&str, Option<&str>)]| object(PURCHASE, changes);
    let mut c = Corpus::default();

    c.add("the reference example", p(&[]));
    c.add(
        "with a seller",
        p(&[(
            "seller_id",
            Some(r#""5a1f2b3c-4d5e-4f60-8a9b-0c1d2e3f4a5b""#),
        )]),
    );
    c.add("seller null", p(&[("seller_id", Some("null"))]));
    c.add(
        "seller not a uuid",
        p(&[("seller_id", Some(r#""shop-1""#))]),
    );
    c.add("seller a number", p(&[("seller_id", Some("5"))]));
    c.add(
        "an unknown property",
        p(&[("note", Some(r#"{"a":[1,2]}"#))]),
    );
    c.add(
        "pretty-printed",
        serde_json::to_string_pretty(&serde_json::from_str::<Value>(&p(&[])).expect("json"))
            .expect("json"),
    );
    c.add("surrounded by whitespace", format!(" \n\t{}\n ", p(&[])));
    for (i, id) in IDS.iter().enumerate() {
        c.add(
            format!("purchase_id #{i} {id}"),
            p(&[("purchase_id", Some(id))]),
        );
    }
    c.add(
        "client_id not a uuid",
        p(&[("client_id", Some(r#""987e6543""#))]),
    );
    c.add(
        "product_id not a uuid",
        p(&[("product_id", Some(r#""x""#))]),
    );

    for q in [
        "1",
        "1000000",
        "0",
        "-1",
        "1000001",
        "2.0",
        "1e3",
        "1E6",
        "1e7",
        "2.5",
        "1e-400",
        "-0",
        "99999999999999999999",
        "\"2\"",
        "true",
        "[2]",
        "null",
    ] {
        c.add(format!("quantity {q}"), p(&[("quantity", Some(q))]));
    }
    for price in [
        "0",
        "-0",
        "0.07",
        "19.99",
        "1234567.89",
        "0.1",
        "1.990",
        "1.5e1",
        "5e-2",
        "1e12",
        "1000000000000",
        "999999999999.99",
        "1000000000000.00",
        "0.001",
        "0.005",
        "1.999",
        "19.991",
        "1e-3",
        "-0.01",
        "-1",
        "1000000000000.01",
        "1e13",
        "1e400",
        "19.990000000000001",
        "0.0000000000000000001",
        "1.0000000000000000000000000000000000",
        "0.00000000000000000000000000000000",
        "12345678901234567890123456789012345",
        "\"49.99\"",
        "null",
        "false",
    ] {
        c.add(format!("price {price}"), p(&[("price", Some(price))]));
    }
    for ts in TIMESTAMPS {
        let value = serde_json::to_string(ts).expect("json string");
        c.add(
            format!("timestamp {ts:?}"),
            p(&[("timestamp", Some(&value))]),
        );
    }
    c.add(
        "timestamp a number",
        p(&[("timestamp", Some("1743940800"))]),
    );

    for field in [
        "purchase_id",
        "client_id",
        "product_id",
        "quantity",
        "price",
        "timestamp",
    ] {
        c.add(format!("{field} missing"), p(&[(field, None)]));
        c.add(format!("{field} null"), p(&[(field, Some("null"))]));
    }

    for (name, text) in [
        ("empty", ""),
        ("unterminated", "{"),
        ("trailing comma", r#"{"quantity":2,}"#),
        ("trailing garbage", "{} x"),
        ("a bare word", "nul"),
        ("single quotes", "{'quantity':2}"),
    ] {
        c.add(format!("malformed: {name}"), text);
    }
    c.add("not UTF-8", {
        let mut b = p(&[]).into_bytes();
        b.insert(1, 0xff);
        b
    });
    c.add("invalid UTF-8 in a string", {
        let text = p(&[("note", Some(r#""XX""#))]);
        let mut b = text.clone().into_bytes();
        let at = text.find("XX").expect("marker");
        b[at] = 0xc3;
        b[at + 1] = 0x28;
        b
    });
    for (name, text) in [
        ("an array", "[1]"),
        ("a number", "42"),
        ("a string", "\"s\""),
        ("null", "null"),
    ] {
        c.add(format!("not an object: {name}"), text);
    }

    // At the payload limit, and one byte over it.
    let unpadded = p(&[("pad", Some("\"\""))]).len();
    let pad = |n: usize| p(&[("pad", Some(&quoted(&"x".repeat(n))))]);
    c.add("exactly 1 MiB", pad(MAX_PAYLOAD_BYTES - unpadded));

    // What JSON Schema cannot express (x-lakeshop-rules).
    c.rule(
        "1 MiB + 1 byte",
        pad(MAX_PAYLOAD_BYTES - unpadded + 1),
        Reason::PayloadTooLarge,
    );
    for ts in [
        "1999-12-31T23:59:59Z",
        "2000-01-01T00:30:00+01:00",
        "0000-01-01T00:00:00Z",
    ] {
        c.rule(
            format!("timestamp {ts}"),
            p(&[("timestamp", Some(&quoted(ts)))]),
            Reason::TimestampTooOld,
        );
    }
    for ts in [
        "2025-04-08T00:00:00.000001Z",
        "2025-04-07T23:00:00-01:01",
        "9999-12-31T23:59:59Z",
    ] {
        c.rule(
            format!("timestamp {ts}"),
            p(&[("timestamp", Some(&quoted(ts)))]),
            Reason::TimestampInFuture,
        );
    }
    c.rule(
        "repeated quantity",
        p(&[]).replacen('{', r#"{"quantity":3,"#, 1),
        Reason::MalformedJson,
    );
    c.rule(
        "repeated, equal purchase_id",
        {
            let first = PURCHASE[0];
            p(&[]).replacen('{', &format!("{{\"{}\":{},", first.0, first.1), 1)
        },
        Reason::MalformedJson,
    );
    for price in ["0.070000000000000001", "1.0000000000000001", "1e-400"] {
        c.rule(
            format!("price {price}"),
            p(&[("price", Some(price))]),
            Reason::PriceScale,
        );
    }
    c.rule(
        "price 1000000000000.0000001",
        p(&[("price", Some("1000000000000.0000001"))]),
        Reason::PriceOutOfRange,
    );
    c.rule(
        "quantity 1.0000000000000001",
        p(&[("quantity", Some("1.0000000000000001"))]),
        Reason::WrongType,
    );
    c
}

fn interaction_corpus() -> Corpus {
    let i = |changes: &[(&str, Option<&str>)]| object(INTERACTION, changes);
    let mut c = Corpus::default();
    c.add("a view", i(&[]));
    for kind in ["cart_add", "click", "VIEW", "View", "purchase", "", "view "] {
        c.add(
            format!("kind {kind:?}"),
            i(&[("kind", Some(&quoted(kind)))]),
        );
    }
    c.add("kind escaped", i(&[("kind", Some(r#""c\u006cick""#))]));
    c.add("kind a number", i(&[("kind", Some("1"))]));
    c.add("kind an array", i(&[("kind", Some(r#"["view"]"#))]));
    c.add("an unknown property", i(&[("session", Some(r#""s-1""#))]));
    c.add(
        "a seller_id is just another property",
        i(&[("seller_id", Some("17"))]),
    );
    for (n, id) in IDS.iter().enumerate() {
        c.add(format!("event_id #{n} {id}"), i(&[("event_id", Some(id))]));
    }
    for ts in TIMESTAMPS {
        let value = serde_json::to_string(ts).expect("json string");
        c.add(
            format!("timestamp {ts:?}"),
            i(&[("timestamp", Some(&value))]),
        );
    }
    for field in ["event_id", "client_id", "product_id", "kind", "timestamp"] {
        c.add(format!("{field} missing"), i(&[(field, None)]));
        c.add(format!("{field} null"), i(&[(field, Some("null"))]));
    }
    c.add("malformed", "{\"kind\":");
    c.add("not an object", "[]");

    let unpadded = i(&[("pad", Some("\"\""))]).len();
    let pad = |n: usize| i(&[("pad", Some(&quoted(&"x".repeat(n))))]);
    c.add("exactly 1 MiB", pad(MAX_PAYLOAD_BYTES - unpadded));

    c.rule(
        "1 MiB + 1 byte",
        pad(MAX_PAYLOAD_BYTES - unpadded + 1),
        Reason::PayloadTooLarge,
    );
    c.rule(
        "timestamp too old",
        i(&[("timestamp", Some(r#""1999-12-31T23:59:59Z""#))]),
        Reason::TimestampTooOld,
    );
    c.rule(
        "timestamp in the future",
        i(&[("timestamp", Some(r#""2025-04-08T00:00:01Z""#))]),
        Reason::TimestampInFuture,
    );
    c.rule(
        "repeated kind",
        i(&[]).replacen('{', r#"{"kind":"click","#, 1),
        Reason::MalformedJson,
    );
    c
}

/// Judges every record with the code and the schema, and checks they agree, that the
/// listed rules are exactly the disagreements, and that the corpus covers `reasons`.
/// `parse` returns the canonical JSON of an accepted record, which must be valid too.
fn check_corpus(
    label: &str,
    schema: &JsonSchema,
    corpus: &Corpus,
    parse: impl Fn(&[u8]) -> Result<String, Rejection>,
    reasons: &[Reason],
    min_records: usize,
) {
    assert!(
        corpus.0.len() >= min_records,
        "{label}: {} records < {min_records}",
        corpus.0.len()
    );
    let mut failures = String::new();
    let mut rejected = BTreeSet::new();
    let mut ruled = BTreeSet::new();
    let mut accepted = 0;
    for case in &corpus.0 {
        let code = parse(&case.bytes);
        let (with_formats, without_formats) = schema.accepts(&case.bytes);
        match &code {
            Err(r) => {
                rejected.insert(r.reason);
            }
            Ok(canonical) => {
                accepted += 1;
                if schema.accepts(canonical.as_bytes()) != (true, true) {
                    let _ = writeln!(
                        failures,
                        "  {}: canonical {canonical} is invalid",
                        case.name
                    );
                }
            }
        }
        let verdict = format!(
            "code {}, schema {with_formats} (formats asserted) / {without_formats} (not)",
            match &code {
                Ok(_) => "accepts".to_owned(),
                Err(r) => format!("rejects: {r}"),
            }
        );
        let agree = match case.rule {
            None => code.is_ok() == with_formats && code.is_ok() == without_formats,
            Some(reason) => {
                ruled.insert(reason);
                code.as_ref().err().map(|r| r.reason) == Some(reason)
                    && with_formats
                    && without_formats
            }
        };
        if !agree {
            let _ = writeln!(
                failures,
                "  {} (rule {:?}): {verdict}",
                case.name,
                case.rule.map(Reason::as_str)
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{label}: code and schema disagree on:\n{failures}"
    );
    assert!(accepted >= 10, "{label}: only {accepted} valid records");
    for reason in reasons {
        assert!(
            rejected.contains(reason),
            "{label}: no record rejected as {reason}"
        );
    }
    // Every listed rule is shown by a record; every record the schema cannot judge is listed.
    let mut listed = schema.rule_reasons();
    listed.remove(&Reason::ConflictingDuplicate);
    assert_eq!(
        ruled, listed,
        "{label}: x-lakeshop-rules vs the records that need them"
    );
    eprintln!(
        "{label}: {} records, {accepted} valid, rejected as {rejected:?}",
        corpus.0.len()
    );
}

#[test]
fn purchase_schema_and_code_agree() {
    let schema = JsonSchema::load("kafka/purchase.schema.json");
    let corpus = purchase_corpus();
    let reasons: Vec<Reason> = Reason::ALL
        .into_iter()
        .filter(|r| {
            !matches!(
                r,
                Reason::BadKind
                    | Reason::ConflictingDuplicate
                    | Reason::TooLong
                    | Reason::OutOfRange
            )
        })
        .collect();
    check_corpus(
        "purchase",
        &schema,
        &corpus,
        |b| {
            parse_purchase(b, now()).map(|p| {
                let canonical = p.to_json();
                let again = parse_purchase(canonical.as_bytes(), now());
                assert_eq!(again.as_ref(), Ok(&p), "{canonical} reads back");
                canonical
            })
        },
        &reasons,
        40,
    );
    assert!(schema
        .rule_reasons()
        .contains(&Reason::ConflictingDuplicate));
}

#[test]
fn interaction_schema_and_code_agree() {
    let schema = JsonSchema::load("kafka/interaction.schema.json");
    let corpus = interaction_corpus();
    let reasons = [
        Reason::MalformedJson,
        Reason::NotAnObject,
        Reason::MissingField,
        Reason::WrongType,
        Reason::BadUuid,
        Reason::BadTimestamp,
        Reason::BadKind,
        Reason::TimestampTooOld,
        Reason::TimestampInFuture,
        Reason::PayloadTooLarge,
    ];
    check_corpus(
        "interaction",
        &schema,
        &corpus,
        |b| {
            parse_interaction(b, now()).map(|i| {
                let canonical = i.to_json();
                let again = parse_interaction(canonical.as_bytes(), now());
                assert_eq!(again.as_ref(), Ok(&i), "{canonical} reads back");
                canonical
            })
        },
        &reasons,
        15,
    );
    assert!(!schema
        .rule_reasons()
        .contains(&Reason::ConflictingDuplicate));
}

/// `conflicting_duplicate` is a rule between records: each one alone is valid to the code
/// and to the schema.
#[test]
fn conflicting_duplicates_are_each_valid() {
    let schema = JsonSchema::load("kafka/purchase.schema.json");
    let first = object(PURCHASE, &[]);
    let second = object(PURCHASE, &[("quantity", Some("3"))]);
    let a = parse_purchase(first.as_bytes(), now()).expect("valid");
    let b = parse_purchase(second.as_bytes(), now()).expect("valid");
    assert_eq!(a.purchase_id, b.purchase_id);
    assert_ne!(a, b);
    assert_eq!(schema.accepts(first.as_bytes()), (true, true));
    assert_eq!(schema.accepts(second.as_bytes()), (true, true));
}

/// `multipleOf: 0.01` is exact in the `jsonschema` crate: it divides in decimal. Every cent
/// up to 1000.00 and a spread of large values up to 1e12 are multiples; the same values
/// with a third decimal are not. The code agrees on each.
#[test]
fn price_multiple_of_a_cent_is_exact() {
    let schema = JsonSchema::load("kafka/purchase.schema.json");
    let price = &schema.doc["properties"]["price"];
    assert_eq!(price["multipleOf"], serde_json::json!(0.01));
    let validator = jsonschema::validator_for(price).expect("price schema compiles");
    let judge = |text: &str| {
        let value: Value = serde_json::from_str(text).expect("a JSON number");
        let record = object(PURCHASE, &[("price", Some(text))]);
        (
            validator.is_valid(&value),
            parse_purchase(record.as_bytes(), now()).is_ok(),
        )
    };
    for named in ["0.07", "19.99", "1234567.89"] {
        assert_eq!(judge(named), (true, true), "{named}");
    }
    let mut cents: Vec<u64> = (0..=100_000).collect();
    // A spread of large amounts: a linear congruential walk over 0..=1e14 cents.
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..20_000 {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        cents.push((x >> 11) % 100_000_000_000_001);
    }
    cents.push(100_000_000_000_000);
    cents.push(99_999_999_999_999);
    let mut failures = Vec::new();
    for c in cents {
        let text = format!("{}.{:02}", c / 100, c % 100);
        if judge(&text) != (true, true) {
            failures.push(text.clone());
        }
        if c < 100_000_000_000_000 {
            for mill in ["1", "5", "9"] {
                let text = format!("{text}{mill}");
                if judge(&text) != (false, false) {
                    failures.push(text);
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "multipleOf 0.01 misjudges: {:?}",
        &failures[..failures.len().min(20)]
    );
}

#[test]
fn kafka_schemas_describe_every_property() {
    for rel in [
        "kafka/purchase.schema.json",
        "kafka/interaction.schema.json",
    ] {
        let doc = read_json(rel);
        assert_eq!(
            doc["$schema"], "https://json-schema.org/draft/2020-12/schema",
            "{rel}"
        );
        assert!(
            doc["$id"].as_str().is_some_and(|id| id.ends_with(rel)),
            "{rel}: $id"
        );
        assert_eq!(doc["x-lakeshop-schema-version"], SCHEMA_VERSION, "{rel}");
        assert_ne!(
            doc["additionalProperties"], false,
            "{rel} must stay forward compatible"
        );
        let properties = doc["properties"].as_object().expect("properties");
        for (name, property) in properties {
            assert!(
                property["description"]
                    .as_str()
                    .is_some_and(|d| !d.is_empty()),
                "{rel}: {name}"
            );
        }
        for required in doc["required"].as_array().expect("required") {
            assert!(
                properties.contains_key(required.as_str().expect("a name")),
                "{rel}: {required}"
            );
        }
        for (name, def) in doc["$defs"].as_object().expect("$defs") {
            assert!(
                def["pattern"].is_string() && def["format"].is_string(),
                "{rel}: $defs/{name}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Stage tables: files equal the Arrow schemas.
// ---------------------------------------------------------------------------------------

/// The Arrow type as written in `schemas/stage/*.json`.
fn type_name(t: &DataType) -> String {
    match t {
        DataType::Utf8 => "utf8".into(),
        DataType::Int32 => "int32".into(),
        DataType::Int64 => "int64".into(),
        DataType::Boolean => "bool".into(),
        DataType::Binary => "binary".into(),
        DataType::Date32 => "date32".into(),
        DataType::Decimal128(p, s) => format!("decimal({p},{s})"),
        DataType::Timestamp(TimeUnit::Microsecond, Some(tz)) => format!("timestamp(us, {tz})"),
        other => panic!("no stage type name for {other:?}"),
    }
}

fn stage_tables() -> Vec<(&'static str, SchemaRef)> {
    vec![
        ("purchases", arrow_schema::stage_purchase()),
        ("interactions", arrow_schema::stage_interaction()),
        ("clients", arrow_schema::stage_client()),
        ("sellers", arrow_schema::stage_seller()),
        ("products", arrow_schema::stage_product()),
        ("dead_letters", arrow_schema::stage_dead_letter()),
        ("sales", arrow_schema::stage_sale()),
    ]
}

#[test]
fn stage_files_equal_the_arrow_schemas() {
    let tables = stage_tables();
    let files: BTreeSet<String> = std::fs::read_dir(schemas_dir().join("stage"))
        .expect("schemas/stage")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let expected: BTreeSet<String> = tables.iter().map(|(t, _)| format!("{t}.json")).collect();
    assert_eq!(files, expected, "one file per stage table");

    for (table, arrow) in tables {
        let doc = read_json(&format!("stage/{table}.json"));
        assert_eq!(doc["table"], table);
        assert_eq!(doc["version"], SCHEMA_VERSION, "{table}");
        assert!(
            doc["doc"].as_str().is_some_and(|d| !d.is_empty()),
            "{table}: doc"
        );
        let fields = doc["fields"].as_array().expect("fields");
        let from_file: Vec<(String, String, bool)> = fields
            .iter()
            .map(|f| {
                assert!(
                    f["doc"].as_str().is_some_and(|d| !d.is_empty()),
                    "{table}: {f}"
                );
                (
                    f["name"].as_str().expect("name").to_owned(),
                    f["type"].as_str().expect("type").to_owned(),
                    f["nullable"].as_bool().expect("nullable"),
                )
            })
            .collect();
        let from_code: Vec<(String, String, bool)> = arrow
            .fields()
            .iter()
            .map(|f| (f.name().clone(), type_name(f.data_type()), f.is_nullable()))
            .collect();
        assert_eq!(
            from_file, from_code,
            "schemas/stage/{table}.json vs arrow_schema"
        );
        for list in ["partition_by", "key"] {
            for column in doc[list].as_array().expect(list) {
                let column = column.as_str().expect("a column name");
                let field = arrow
                    .field_with_name(column)
                    .unwrap_or_else(|_| panic!("{table}.{list}: {column}"));
                assert!(!field.is_nullable(), "{table}.{list}: {column} is nullable");
            }
        }
    }
}

#[test]
fn stage_products_are_the_product_catalogue() {
    assert_eq!(arrow_schema::stage_product(), arrow_schema::product());
}

// ---------------------------------------------------------------------------------------
// Avro product schema.
// ---------------------------------------------------------------------------------------

#[test]
fn product_avro_equals_the_arrow_schema() {
    let avro = read_json("delta/product.avsc");
    assert_eq!(avro["type"], "record");
    assert_eq!(avro["name"], "Product");
    assert_eq!(avro["namespace"], "lakeshop");
    assert_eq!(avro["lakeshop.schema.version"], SCHEMA_VERSION);
    let fields = avro["fields"].as_array().expect("fields");
    let arrow = arrow_schema::product();
    let names: Vec<&str> = fields
        .iter()
        .map(|f| f["name"].as_str().expect("name"))
        .collect();
    let arrow_names: Vec<&str> = arrow.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, arrow_names);
    for (field, arrow_field) in fields.iter().zip(arrow.fields()) {
        assert!(
            field["doc"].as_str().is_some_and(|d| !d.is_empty()),
            "{field}"
        );
        // Avro types without a union are never null.
        let t = &field["type"];
        let as_arrow = match (t.as_str(), t["type"].as_str(), t["logicalType"].as_str()) {
            (Some("string"), _, _) | (None, Some("string"), Some("uuid")) => DataType::Utf8,
            (Some("int"), _, _) => DataType::Int32,
            (Some("long"), _, _) => DataType::Int64,
            (None, Some("bytes"), Some("decimal")) => DataType::Decimal128(
                t["precision"]
                    .as_u64()
                    .and_then(|p| u8::try_from(p).ok())
                    .expect("precision"),
                t["scale"]
                    .as_i64()
                    .and_then(|s| i8::try_from(s).ok())
                    .expect("scale"),
            ),
            (None, Some("long"), Some("timestamp-micros")) => {
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
            }
            _ => panic!("unexpected Avro type {t}"),
        };
        assert_eq!(&as_arrow, arrow_field.data_type(), "{}", arrow_field.name());
        assert!(!arrow_field.is_nullable(), "{}", arrow_field.name());
    }
    let price = &fields[3];
    assert_eq!(price["name"], "price");
    assert_eq!(price["type"]["precision"], 18);
    assert_eq!(price["type"]["scale"], 2);
}

// ---------------------------------------------------------------------------------------
// Every file under schemas/.
// ---------------------------------------------------------------------------------------

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}

/// Strips `--` comments (the files put none inside string literals).
fn sql_code(sql: &str) -> String {
    sql.lines()
        .map(|l| l.split("--").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Column names of `CREATE TABLE IF NOT EXISTS <table> (...)`, one column per line.
fn sql_columns(sql: &str, table: &str) -> Vec<String> {
    let code = sql_code(sql);
    let head = format!("CREATE TABLE IF NOT EXISTS {table}");
    let start = code
        .find(&format!("{head}\n"))
        .or_else(|| code.find(&format!("{head} ")));
    let body = &code[start.unwrap_or_else(|| panic!("no table {table}")) + head.len()..];
    let open = body.find('(').expect("(");
    let mut columns = Vec::new();
    for line in body[open + 1..].lines() {
        let line = line.trim();
        if line.starts_with(')') {
            break;
        }
        if line.is_empty() {
            continue;
        }
        columns.push(line.split_whitespace().next().expect("a column").to_owned());
    }
    columns
}

fn names(schema: &SchemaRef) -> Vec<String> {
    schema.fields().iter().map(|f| f.name().clone()).collect()
}

#[test]
fn every_schema_file_parses() {
    let mut files = Vec::new();
    walk(&schemas_dir(), &mut files);
    files.sort();
    let mut seen = 0;
    for path in &files {
        let rel = path
            .strip_prefix(schemas_dir())
            .expect("under schemas/")
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert!(!text.trim().is_empty(), "{rel} is empty");
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") | Some("avsc") => {
                let doc: Value =
                    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"));
                let version = [
                    "x-lakeshop-schema-version",
                    "version",
                    "lakeshop.schema.version",
                ]
                .iter()
                .find_map(|k| doc[*k].as_u64());
                assert_eq!(
                    version,
                    Some(u64::from(SCHEMA_VERSION)),
                    "{rel}: schema version"
                );
            }
            Some("sql") => {
                let header = text.lines().next().unwrap_or("");
                let version: u32 = header
                    .strip_prefix("-- lakeshop schema version ")
                    .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{rel}: no `-- lakeshop schema version N` header"));
                assert!(
                    (1..=SCHEMA_VERSION).contains(&version),
                    "{rel}: version {version}"
                );
                if rel.starts_with("clickhouse") {
                    let lower = text.to_ascii_lowercase();
                    for banned in ["lowcardinality", "datetime64"] {
                        assert!(
                            !lower.contains(banned),
                            "{rel}: {banned} does not run on 18.16"
                        );
                    }
                    let code = sql_code(&text);
                    let creates = code.matches("CREATE TABLE").count();
                    assert_eq!(
                        creates,
                        code.matches("CREATE TABLE IF NOT EXISTS").count(),
                        "{rel}"
                    );
                    assert!(
                        !code.contains("lakeshop."),
                        "{rel}: names are not database-qualified"
                    );
                    // The runner sends statements one at a time, split at a `;` that ends a
                    // line: every piece holds a statement, not only comments. Statements create
                    // (if not there), drop a view to create it anew (18.16 drops views with
                    // DROP TABLE), or copy rows into a new layout (INSERT ... SELECT); a table
                    // that holds data is never dropped, altered or emptied.
                    for piece in text.split(";\n").filter(|p| !p.trim().is_empty()) {
                        let statement = sql_code(piece);
                        let statement = statement.trim();
                        let drops_view = statement
                            .strip_prefix("DROP TABLE IF EXISTS ")
                            .is_some_and(|name| name.trim_end_matches(';').ends_with("_v"));
                        let copies_rows = statement.starts_with("INSERT INTO ")
                            && statement.contains("\nSELECT ");
                        assert!(
                            statement.starts_with("CREATE ") || drops_view || copies_rows,
                            "{rel}: a piece without a create statement or a view drop: {piece}"
                        );
                    }
                }
            }
            Some("md") => {}
            _ => panic!("{rel}: no test parses this kind of file"),
        }
        seen += 1;
    }
    assert!(seen >= 14, "only {seen} files under schemas/");
}

#[test]
fn sql_tables_match_the_stage_tables() {
    let ch = read("clickhouse/0001_batch_tables.sql");
    assert_eq!(
        sql_columns(&ch, "sales"),
        names(&arrow_schema::stage_sale())
    );
    for table in ["daily_seller", "daily_category", "daily_product"] {
        let columns = sql_columns(&ch, table);
        assert_eq!(columns[0], "event_date", "{table}");
        assert_eq!(
            columns[2..],
            ["revenue", "purchases", "items", "distinct_clients"],
            "{table}"
        );
    }
    assert_eq!(
        sql_columns(&read("postgres/clients.sql"), "clients"),
        names(&arrow_schema::stage_client())
    );
    assert_eq!(
        sql_columns(&read("postgres/sellers.sql"), "sellers"),
        names(&arrow_schema::stage_seller())
    );
}

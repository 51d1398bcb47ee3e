//! Window boundaries in the business time zone: the minute, hour and day a UTC instant falls
//! in, as UTC seconds, with the business date of each window.
//!
//! Minutes are UTC minutes (every zone's offset is a whole number of minutes). Hours and days
//! follow the zone, daylight saving included (a day may last 23 or 25 hours). The last hour
//! and day looked up are cached: events arrive nearly in time order.

use chrono::{Datelike, NaiveDate, TimeZone, Timelike};
use chrono_tz::Tz;

/// Minute, hour or day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Granularity {
    Minute,
    Hour,
    Day,
}

impl Granularity {
    /// Every granularity.
    pub const ALL: [Granularity; 3] = [Granularity::Minute, Granularity::Hour, Granularity::Day];

    /// The name stored in ClickHouse.
    pub fn as_str(self) -> &'static str {
        match self {
            Granularity::Minute => "minute",
            Granularity::Hour => "hour",
            Granularity::Day => "day",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.as_str() == s)
    }
}

/// A window: `[start, end)` in UTC seconds and the business date it belongs to (days since
/// 1970-01-01).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: i64,
    pub end: i64,
    pub date: i32,
}

/// Days since 1970-01-01 of a date.
pub fn epoch_days(d: NaiveDate) -> i32 {
    d.num_days_from_ce() - 719_163
}

/// Window lookups in one time zone.
#[derive(Debug, Clone)]
pub struct Calendar {
    tz: Tz,
    hour: Option<Span>,
    day: Option<Span>,
}

impl Calendar {
    /// A calendar of `tz`.
    pub fn new(tz: Tz) -> Self {
        Self {
            tz,
            hour: None,
            day: None,
        }
    }

    /// The window of `granularity` that holds `ts` (UTC seconds).
    pub fn span(&mut self, granularity: Granularity, ts: i64) -> Span {
        match granularity {
            Granularity::Minute => {
                let start = ts.div_euclid(60) * 60;
                let date = self.span(Granularity::Day, ts).date;
                Span {
                    start,
                    end: start + 60,
                    date,
                }
            }
            Granularity::Hour => match self.hour {
                Some(s) if s.start <= ts && ts < s.end => s,
                _ => {
                    let local = self.tz.timestamp_opt(ts, 0).earliest();
                    let past = local.map_or(0, |l| i64::from(l.minute() * 60 + l.second()));
                    let start = ts - past;
                    let date = self.span(Granularity::Day, start).date;
                    let s = Span {
                        start,
                        end: start + 3600,
                        date,
                    };
                    self.hour = Some(s);
                    s
                }
            },
            Granularity::Day => match self.day {
                Some(s) if s.start <= ts && ts < s.end => s,
                _ => {
                    let s = self.day_of(ts);
                    self.day = Some(s);
                    s
                }
            },
        }
    }

    fn day_of(&self, ts: i64) -> Span {
        let date = self
            .tz
            .timestamp_opt(ts, 0)
            .earliest()
            .map(|l| l.date_naive())
            .unwrap_or_default();
        let midnight = |d: NaiveDate| -> i64 {
            let naive = d.and_hms_opt(0, 0, 0).unwrap_or_default();
            match self.tz.from_local_datetime(&naive).earliest() {
                Some(t) => t.timestamp(),
                // Midnight skipped by a clock change: the day starts at the first instant
                // after it, an hour later.
                None => self
                    .tz
                    .from_local_datetime(&(naive + chrono::TimeDelta::hours(1)))
                    .earliest()
                    .map_or(naive.and_utc().timestamp(), |t| t.timestamp()),
            }
        };
        let start = midnight(date);
        let end = date.succ_opt().map_or(start + 86_400, midnight);
        Span {
            start,
            end,
            date: epoch_days(date),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(s)
            .expect("timestamp")
            .timestamp()
    }

    #[test]
    fn utc_windows() {
        let mut c = Calendar::new(chrono_tz::UTC);
        let t = ts("2026-11-25T10:17:42Z");
        assert_eq!(
            c.span(Granularity::Minute, t).start,
            ts("2026-11-25T10:17:00Z")
        );
        assert_eq!(
            c.span(Granularity::Hour, t).start,
            ts("2026-11-25T10:00:00Z")
        );
        let day = c.span(Granularity::Day, t);
        assert_eq!(
            (day.start, day.end),
            (ts("2026-11-25T00:00:00Z"), ts("2026-11-26T00:00:00Z"))
        );
        let d = NaiveDate::from_ymd_opt(2026, 11, 25).expect("date");
        assert_eq!(day.date, epoch_days(d));
        assert_eq!(
            epoch_days(NaiveDate::from_ymd_opt(1970, 1, 2).expect("date")),
            1
        );
    }

    #[test]
    fn zone_with_half_hour_offset_and_dst() {
        // India: +05:30, so hours start at :30 UTC.
        let mut c = Calendar::new(chrono_tz::Asia::Kolkata);
        let t = ts("2026-11-25T10:17:42Z");
        assert_eq!(
            c.span(Granularity::Hour, t).start,
            ts("2026-11-25T09:30:00Z")
        );
        assert_eq!(
            c.span(Granularity::Day, t).start,
            ts("2026-11-24T18:30:00Z")
        );
        // Berlin's 2026-03-29 lasts 23 hours.
        let mut b = Calendar::new(chrono_tz::Europe::Berlin);
        let d = b.span(Granularity::Day, ts("2026-03-29T12:00:00Z"));
        assert_eq!(d.end - d.start, 23 * 3600);
        // An event just after local midnight belongs to the new day, by the zone.
        let late = b.span(Granularity::Day, ts("2026-11-24T23:30:00Z"));
        assert_eq!(
            late.date,
            epoch_days(NaiveDate::from_ymd_opt(2026, 11, 25).expect("date"))
        );
        // The cache never answers for an instant outside its window.
        let next = b.span(Granularity::Day, ts("2026-11-25T23:30:00Z"));
        assert_eq!(next.date, late.date + 1);
    }
}

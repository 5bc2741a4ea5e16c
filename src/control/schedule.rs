//! Business hours: whether a schedule is open at a moment, sans-IO (the moment is an input).
//!
//! A schedule has the shape of Meta's `call_hours`, so the same schedule can be pushed to
//! Meta as a number's calling hours: an IANA time zone, weekly intervals (`"HHMM"` open and
//! close times, several per day) and holidays (a date, closed from a start to an end
//! time). Hours are read on the local wall clock, so a daylight-saving change moves them
//! with the clock: 09:00 is 09:00 on both sides of it. An interval is open from its open
//! time up to, not including, its close time; `"2359"` as a close time closes at midnight.

use std::fmt;

use jiff::civil::{Date, Weekday};
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// Days of the week as Meta spells them, Monday first.
pub const DAYS: [&str; 7] = [
    "MONDAY",
    "TUESDAY",
    "WEDNESDAY",
    "THURSDAY",
    "FRIDAY",
    "SATURDAY",
    "SUNDAY",
];

/// Minutes since local midnight, `[open, close)`.
type Interval = (u16, u16);

/// A holiday: closed on `date` from `start` to `end` (minutes since local midnight).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holiday {
    /// The local date.
    pub date: Date,
    /// Closed from (minutes since midnight).
    pub start: u16,
    /// Closed until, inclusive of its minute (`2359`: the whole day).
    pub end: u16,
}

/// A validated schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    zone_name: String,
    zone: TimeZone,
    /// Open intervals per weekday, Monday first, sorted.
    weekly: [Vec<Interval>; 7],
    holidays: Vec<Holiday>,
}

/// Why a schedule is not valid, naming the entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScheduleError {
    /// The time zone is not an IANA name the switch knows.
    TimeZone(String),
    /// A day that is not MONDAY..SUNDAY.
    Day(String),
    /// A time that is not `"HHMM"` between 0000 and 2359.
    Time(String),
    /// A date that is not `YYYY-MM-DD`.
    Date(String),
    /// Open at or after close.
    Empty {
        /// The day.
        day: String,
        /// Open time.
        open: String,
        /// Close time.
        close: String,
    },
    /// Two intervals of one day overlap.
    Overlap {
        /// The day.
        day: String,
        /// The two intervals, as `HHMM-HHMM`.
        first: String,
        /// The second.
        second: String,
    },
}

impl fmt::Display for ScheduleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScheduleError::TimeZone(z) => write!(
                f,
                "unknown time zone {z:?}; use an IANA name such as \"Europe/Berlin\""
            ),
            ScheduleError::Day(d) => write!(f, "unknown day {d:?}; use MONDAY..SUNDAY"),
            ScheduleError::Time(t) => {
                write!(f, "bad time {t:?}; use \"HHMM\" from \"0000\" to \"2359\"")
            }
            ScheduleError::Date(d) => write!(f, "bad date {d:?}; use \"YYYY-MM-DD\""),
            ScheduleError::Empty { day, open, close } => {
                write!(
                    f,
                    "{day}: opens at {open} but closes at {close}; open must come before close"
                )
            }
            ScheduleError::Overlap { day, first, second } => {
                write!(
                    f,
                    "{day}: intervals {first} and {second} overlap; merge them"
                )
            }
        }
    }
}

impl std::error::Error for ScheduleError {}

/// Minutes since midnight of an `"HHMM"` time (`"HH:MM"` is taken too).
pub fn parse_time(text: &str) -> Result<u16, ScheduleError> {
    let digits: String = text.chars().filter(|c| *c != ':').collect();
    let bad = || ScheduleError::Time(text.to_string());
    if digits.len() != 4 || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad());
    }
    let h: u16 = digits[..2].parse().map_err(|_| bad())?;
    let m: u16 = digits[2..].parse().map_err(|_| bad())?;
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

fn hhmm(minutes: u16) -> String {
    format!("{:02}{:02}", minutes / 60, minutes % 60)
}

/// Close time in minutes: `"2359"` closes at midnight (Meta's way to say "to the end of the
/// day").
fn close_minutes(text: &str) -> Result<u16, ScheduleError> {
    let m = parse_time(text)?;
    Ok(if m == 23 * 60 + 59 { 24 * 60 } else { m })
}

impl Schedule {
    /// A schedule in `zone` from weekly `(day, open, close)` entries and holidays
    /// `(date, start, end)`, all as Meta spells them. Every mistake is refused here.
    pub fn new(
        zone: &str,
        weekly: &[(&str, &str, &str)],
        holidays: &[(&str, &str, &str)],
    ) -> Result<Schedule, ScheduleError> {
        let tz = TimeZone::get(zone).map_err(|_| ScheduleError::TimeZone(zone.to_string()))?;
        let mut days: [Vec<Interval>; 7] = Default::default();
        for (day, open, close) in weekly {
            let index = DAYS
                .iter()
                .position(|d| d.eq_ignore_ascii_case(day))
                .ok_or_else(|| ScheduleError::Day(day.to_string()))?;
            let o = parse_time(open)?;
            let c = close_minutes(close)?;
            if o >= c {
                return Err(ScheduleError::Empty {
                    day: DAYS[index].to_string(),
                    open: open.to_string(),
                    close: close.to_string(),
                });
            }
            days[index].push((o, c));
        }
        for (index, intervals) in days.iter_mut().enumerate() {
            intervals.sort_unstable();
            for pair in intervals.windows(2) {
                let (a, b) = (pair[0], pair[1]);
                if b.0 < a.1 {
                    return Err(ScheduleError::Overlap {
                        day: DAYS[index].to_string(),
                        first: format!("{}-{}", hhmm(a.0), hhmm(a.1)),
                        second: format!("{}-{}", hhmm(b.0), hhmm(b.1)),
                    });
                }
            }
        }
        let mut hs = Vec::new();
        for (date, start, end) in holidays {
            let d: Date = date
                .parse()
                .map_err(|_| ScheduleError::Date(date.to_string()))?;
            let start = parse_time(start)?;
            let end = parse_time(end)?;
            if start > end {
                return Err(ScheduleError::Empty {
                    day: date.to_string(),
                    open: hhmm(start),
                    close: hhmm(end),
                });
            }
            hs.push(Holiday {
                date: d,
                start,
                end,
            });
        }
        Ok(Schedule {
            zone_name: zone.to_string(),
            zone: tz,
            weekly: days,
            holidays: hs,
        })
    }

    /// The time zone's name.
    pub fn zone(&self) -> &str {
        &self.zone_name
    }

    /// The schedule as Meta's `call_hours` (a number's calling hours): the same zone,
    /// intervals and holidays, enabled.
    pub fn call_hours(&self) -> serde_json::Value {
        let close = |m: u16| {
            if m >= 24 * 60 {
                "2359".to_string()
            } else {
                hhmm(m)
            }
        };
        let weekly: Vec<serde_json::Value> = self
            .weekly
            .iter()
            .enumerate()
            .flat_map(|(day, intervals)| {
                intervals.iter().map(move |(open, shut)| {
                    serde_json::json!({
                        "day_of_week": DAYS[day],
                        "open_time": hhmm(*open),
                        "close_time": close(*shut),
                    })
                })
            })
            .collect();
        let holidays: Vec<serde_json::Value> = self
            .holidays
            .iter()
            .map(|h| {
                serde_json::json!({
                    "date": h.date.to_string(),
                    "start_time": hhmm(h.start),
                    "end_time": hhmm(h.end),
                })
            })
            .collect();
        serde_json::json!({
            "status": "ENABLED",
            "timezone_id": self.zone_name,
            "weekly_operating_hours": weekly,
            "holiday_schedule": holidays,
        })
    }

    /// Whether the schedule is open at `at` (Unix milliseconds).
    pub fn is_open_at_ms(&self, at_ms: i64) -> bool {
        Timestamp::from_millisecond(at_ms).is_ok_and(|t| self.is_open(t))
    }

    /// Whether the schedule is open at `at`.
    pub fn is_open(&self, at: Timestamp) -> bool {
        let local = self.zone.to_datetime(at);
        let minute = local.hour() as u16 * 60 + local.minute() as u16;
        let date = local.date();
        if self
            .holidays
            .iter()
            .any(|h| h.date == date && (h.start..=h.end).contains(&minute))
        {
            return false;
        }
        let day = weekday_index(local.weekday());
        self.weekly[day]
            .iter()
            .any(|(open, close)| (*open..*close).contains(&minute))
    }
}

fn weekday_index(day: Weekday) -> usize {
    day.to_monday_zero_offset() as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schedule_becomes_metas_call_hours() {
        let s = Schedule::new(
            "America/Manaus",
            &[
                ("MONDAY", "1400", "1800"),
                ("MONDAY", "0900", "1200"),
                ("SATURDAY", "1000", "2359"),
            ],
            &[("2026-12-25", "0000", "2359")],
        )
        .expect("valid");
        let hours = s.call_hours();
        assert_eq!(
            hours,
            serde_json::json!({
                "status": "ENABLED",
                "timezone_id": "America/Manaus",
                "weekly_operating_hours": [
                    {"day_of_week": "MONDAY", "open_time": "0900", "close_time": "1200"},
                    {"day_of_week": "MONDAY", "open_time": "1400", "close_time": "1800"},
                    {"day_of_week": "SATURDAY", "open_time": "1000", "close_time": "2359"},
                ],
                "holiday_schedule": [
                    {"date": "2026-12-25", "start_time": "0000", "end_time": "2359"},
                ],
            })
        );
    }

    fn at(text: &str) -> Timestamp {
        text.parse().expect("timestamp")
    }

    fn office() -> Schedule {
        let mut weekly = Vec::new();
        for day in &DAYS[..5] {
            weekly.push((*day, "0900", "1200"));
            weekly.push((*day, "1300", "1700"));
        }
        Schedule::new(
            "America/New_York",
            &weekly,
            &[
                ("2026-12-25", "0000", "2359"),
                ("2026-12-24", "1300", "2359"),
            ],
        )
        .expect("valid")
    }

    #[test]
    fn hours_follow_the_local_clock_across_daylight_saving() {
        let s = office();
        // 2026-03-06 (Friday) is EST (UTC-5): 13:30 UTC is 08:30, closed; 14:30 is 09:30.
        assert!(!s.is_open(at("2026-03-06T13:30:00Z")));
        assert!(s.is_open(at("2026-03-06T14:30:00Z")));
        // 2026-03-09 (Monday), after the change on Sunday the 8th, is EDT (UTC-4): 13:30
        // UTC is now 09:30, open.
        assert!(s.is_open(at("2026-03-09T13:30:00Z")));
        // In the autumn it goes back: 2026-11-02 (Monday) is EST again.
        assert!(!s.is_open(at("2026-11-02T13:30:00Z")));
        assert!(s.is_open(at("2026-11-02T14:00:00Z")));
    }

    #[test]
    fn open_until_close_not_at_it_and_closed_over_lunch_and_weekends() {
        let s = office();
        // Tuesday 2026-06-02, EDT.
        assert!(s.is_open(at("2026-06-02T15:59:00Z"))); // 11:59
        assert!(!s.is_open(at("2026-06-02T16:00:00Z"))); // 12:00
        assert!(s.is_open(at("2026-06-02T17:00:00Z"))); // 13:00
        assert!(!s.is_open(at("2026-06-02T21:00:00Z"))); // 17:00
        assert!(!s.is_open(at("2026-06-06T15:00:00Z"))); // Saturday 11:00
    }

    #[test]
    fn holidays_close_a_day_or_part_of_one() {
        let s = office();
        // Friday 2026-12-25, EST: a working day by the week, closed all day.
        assert!(!s.is_open(at("2026-12-25T15:00:00Z")));
        // Christmas Eve closes at 13:00: open in the morning, closed in the afternoon.
        assert!(s.is_open(at("2026-12-24T15:00:00Z")));
        assert!(!s.is_open(at("2026-12-24T19:00:00Z")));
        // The week after is ordinary.
        assert!(s.is_open(at("2026-12-28T15:00:00Z")));
    }

    #[test]
    fn a_close_of_2359_runs_to_midnight() {
        let s =
            Schedule::new("Europe/Berlin", &[("SATURDAY", "2000", "2359")], &[]).expect("valid");
        // 2026-06-06 is a Saturday; Berlin is UTC+2 in summer.
        assert!(s.is_open(at("2026-06-06T21:59:30Z"))); // 23:59:30
        assert!(!s.is_open(at("2026-06-06T22:00:00Z"))); // Sunday 00:00
    }

    #[test]
    fn mistakes_are_refused_naming_the_entry() {
        assert_eq!(
            Schedule::new("Mars/Olympus", &[], &[]).map(|_| ()),
            Err(ScheduleError::TimeZone("Mars/Olympus".into()))
        );
        assert_eq!(
            Schedule::new("UTC", &[("FUNDAY", "0900", "1000")], &[]).map(|_| ()),
            Err(ScheduleError::Day("FUNDAY".into()))
        );
        assert_eq!(
            Schedule::new("UTC", &[("MONDAY", "0960", "1000")], &[]).map(|_| ()),
            Err(ScheduleError::Time("0960".into()))
        );
        assert!(matches!(
            Schedule::new("UTC", &[("MONDAY", "1000", "0900")], &[]),
            Err(ScheduleError::Empty { .. })
        ));
        let overlap = Schedule::new(
            "UTC",
            &[("MONDAY", "0900", "1200"), ("MONDAY", "1130", "1500")],
            &[],
        );
        assert_eq!(
            overlap.map(|_| ()),
            Err(ScheduleError::Overlap {
                day: "MONDAY".into(),
                first: "0900-1200".into(),
                second: "1130-1500".into()
            })
        );
        // Touching intervals are fine.
        assert!(Schedule::new(
            "UTC",
            &[("MONDAY", "0900", "1200"), ("MONDAY", "1200", "1500")],
            &[]
        )
        .is_ok());
        assert_eq!(
            Schedule::new("UTC", &[], &[("2026-02-30", "0000", "2359")]).map(|_| ()),
            Err(ScheduleError::Date("2026-02-30".into()))
        );
        // The messages say how to fix it.
        let e = ScheduleError::Overlap {
            day: "MONDAY".into(),
            first: "0900-1200".into(),
            second: "1130-1500".into(),
        };
        assert!(e.to_string().contains("merge"), "{e}");
    }
}

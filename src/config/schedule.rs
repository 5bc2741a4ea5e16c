//! `[[schedule]]`: business hours in Meta's `call_hours` shape (an IANA time zone, weekly
//! `HHMM` intervals, holidays), named so that IVR branches can test them.

use std::collections::HashSet;

use super::{file, Validator};
use crate::control::schedule::{Schedule, ScheduleError, DAYS};

/// A named schedule.
#[derive(Debug, Clone)]
pub struct ScheduleConfig {
    /// The name IVR branches use (`schedule = "office"`).
    pub name: String,
    /// The hours.
    pub schedule: Schedule,
}

const TIME_FIX: &str = "write the time as \"HHMM\" from \"0000\" to \"2359\", e.g. \"0900\"";

impl Validator {
    pub(super) fn schedules(&mut self, raw: &[file::ScheduleSection]) -> Vec<ScheduleConfig> {
        let mut names = HashSet::new();
        let mut out = Vec::new();
        for (i, s) in raw.iter().enumerate() {
            let key = |field: &str| format!("schedule[{i}].{field}");
            let before = self.problems.len();
            let name = s.name.trim();
            if name.is_empty() {
                self.problem(
                    &key("name"),
                    "is empty",
                    "give every schedule a unique name",
                );
            } else if !names.insert(name.to_string()) {
                self.problem(
                    &key("name"),
                    format!("{name:?} is already used by another schedule"),
                    "give every schedule a unique name",
                );
            }
            let zone = s.timezone.trim();
            if let Err(ScheduleError::TimeZone(_)) = Schedule::new(zone, &[], &[]) {
                self.problem(
                    &key("timezone"),
                    format!("{:?} is not a time zone the switch knows", s.timezone),
                    "use an IANA time zone name such as \"America/New_York\", \"Europe/Berlin\" or \"UTC\"",
                );
            }
            if s.hours.is_empty() {
                self.problem(
                    &key("hours"),
                    "is empty: the schedule is never open",
                    "list the open intervals, e.g. hours = [{ day = \"MONDAY\", open = \"0900\", close = \"1700\" }]",
                );
            }
            // Each entry on its own first, so that a mistake names the entry.
            for (j, h) in s.hours.iter().enumerate() {
                let hkey = |field: &str| format!("schedule[{i}].hours[{j}].{field}");
                match Schedule::new("UTC", &[(&h.day, &h.open, &h.close)], &[]) {
                    Ok(_) => {}
                    Err(ScheduleError::Day(d)) => self.problem(
                        &hkey("day"),
                        format!("{d:?} is not a day of the week"),
                        format!("use one of {}", DAYS.join(", ")),
                    ),
                    Err(ScheduleError::Time(t)) => self.problem(
                        &hkey(if t == h.open { "open" } else { "close" }),
                        format!("{t:?} is not a time"),
                        TIME_FIX,
                    ),
                    Err(ScheduleError::Empty { open, close, .. }) => self.problem(
                        &hkey("close"),
                        format!("opens at {open} but closes at {close}"),
                        "the close time must come after the open time (\"2359\" closes at midnight); \
                         an interval over midnight is two: one to \"2359\", one from \"0000\" the next day",
                    ),
                    Err(e) => self.problem(
                        &format!("schedule[{i}].hours[{j}]"),
                        e.to_string(),
                        "correct the entry",
                    ),
                }
            }
            for (j, h) in s.holidays.iter().enumerate() {
                let hkey = |field: &str| format!("schedule[{i}].holidays[{j}].{field}");
                match Schedule::new("UTC", &[], &[(&h.date, &h.start, &h.end)]) {
                    Ok(_) => {}
                    Err(ScheduleError::Date(d)) => self.problem(
                        &hkey("date"),
                        format!("{d:?} is not a date"),
                        "write the date as \"YYYY-MM-DD\", e.g. \"2026-12-25\"",
                    ),
                    Err(ScheduleError::Time(t)) => self.problem(
                        &hkey(if t == h.start { "start" } else { "end" }),
                        format!("{t:?} is not a time"),
                        TIME_FIX,
                    ),
                    Err(ScheduleError::Empty { open, close, .. }) => self.problem(
                        &hkey("end"),
                        format!("closes from {open} but ends at {close}, before it starts"),
                        "the end must not come before the start; \"0000\" to \"2359\" closes the whole day",
                    ),
                    Err(e) => self.problem(
                        &format!("schedule[{i}].holidays[{j}]"),
                        e.to_string(),
                        "correct the entry",
                    ),
                }
            }
            if self.problems.len() != before {
                continue;
            }
            let weekly: Vec<(&str, &str, &str)> = s
                .hours
                .iter()
                .map(|h| (h.day.as_str(), h.open.as_str(), h.close.as_str()))
                .collect();
            let holidays: Vec<(&str, &str, &str)> = s
                .holidays
                .iter()
                .map(|h| (h.date.as_str(), h.start.as_str(), h.end.as_str()))
                .collect();
            match Schedule::new(zone, &weekly, &holidays) {
                Ok(schedule) => out.push(ScheduleConfig {
                    name: name.to_string(),
                    schedule,
                }),
                Err(ScheduleError::Overlap { day, first, second }) => self.problem(
                    &key("hours"),
                    format!("{day}: the intervals {first} and {second} overlap"),
                    "merge them into one interval, or move one so that it starts when the other closes",
                ),
                Err(e) => self.problem(&format!("schedule[{i}]"), e.to_string(), "correct it"),
            }
        }
        out
    }
}

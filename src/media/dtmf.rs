//! DTMF as RFC 4733 telephone-events, sans-IO: read and write event payloads, and turn the
//! packet stream of one source into digits, each reported once.
//!
//! An event is one RTP timestamp: its packets repeat that timestamp with a growing
//! duration, the last ones carry the E (end) bit and are usually sent three times. A digit
//! is reported when its first end packet arrives; if the end packets are all lost, it is
//! reported when the next event starts.

/// One telephone-event payload (RFC 4733 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPayload {
    /// Event code (0–9, 10 `*`, 11 `#`, 12–15 `A`–`D`, ...).
    pub event: u8,
    /// End of the event.
    pub end: bool,
    /// Power level, 0 to −63 dBm0 (as a positive number).
    pub volume: u8,
    /// Duration so far, in timestamp units.
    pub duration: u16,
}

impl EventPayload {
    /// Reads the first 4 octets of a payload (more may follow with redundancy; ignored).
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let p = payload.get(..4)?;
        Some(Self {
            event: p[0],
            end: p[1] & 0x80 != 0,
            volume: p[1] & 0x3f,
            duration: u16::from_be_bytes([p[2], p[3]]),
        })
    }

    /// The 4 payload octets.
    pub fn to_bytes(self) -> [u8; 4] {
        let d = self.duration.to_be_bytes();
        [
            self.event,
            (self.volume & 0x3f) | if self.end { 0x80 } else { 0 },
            d[0],
            d[1],
        ]
    }
}

/// The character of a DTMF event code.
pub fn digit_of(event: u8) -> Option<char> {
    match event {
        0..=9 => Some(char::from(b'0' + event)),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + event - 12)),
        _ => None,
    }
}

/// The event code of a DTMF character.
pub fn event_of(digit: char) -> Option<u8> {
    match digit {
        '0'..='9' => Some(digit as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => Some(digit as u8 - b'A' + 12),
        'a'..='d' => Some(digit as u8 - b'a' + 12),
        _ => None,
    }
}

/// Rewrites the duration of the telephone-event `payload` (counted on clock `from`) for an
/// event clock `to`; payloads too short to be events are left alone.
pub fn rescale_duration(payload: &mut [u8], from: u32, to: u32) {
    if payload.len() < 4 || from == 0 {
        return;
    }
    let d = u64::from(u16::from_be_bytes([payload[2], payload[3]]));
    let scaled = (d * u64::from(to) / u64::from(from)).min(u64::from(u16::MAX)) as u16;
    payload[2..4].copy_from_slice(&scaled.to_be_bytes());
}

/// A digit received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digit {
    /// The key.
    pub digit: char,
    /// How long it was pressed, in timestamp units.
    pub duration: u32,
    /// The end was seen (false: the end packets were lost and the next event closed it).
    pub ended: bool,
}

/// Turns the telephone-event packets of one source into digits.
#[derive(Debug, Clone, Copy, Default)]
pub struct DtmfReceiver {
    /// Timestamp and latest payload of the event in progress.
    current: Option<(u32, EventPayload)>,
    /// Timestamp of the last event reported (its retransmitted end packets are ignored).
    reported: Option<u32>,
}

impl DtmfReceiver {
    /// A telephone-event packet with RTP `timestamp` and `payload`; a digit when one is
    /// complete.
    pub fn on_packet(&mut self, timestamp: u32, payload: &[u8]) -> Option<Digit> {
        let p = EventPayload::parse(payload)?;
        if self.reported == Some(timestamp) {
            return None;
        }
        let mut out = None;
        if let Some((ts, prev)) = self.current {
            if ts != timestamp {
                // A new event while the previous one never ended.
                out = digit_of(prev.event).map(|digit| Digit {
                    digit,
                    duration: u32::from(prev.duration),
                    ended: false,
                });
                self.reported = Some(ts);
            }
        }
        if p.end {
            self.current = None;
            self.reported = Some(timestamp);
            let digit = digit_of(p.event).map(|digit| Digit {
                digit,
                duration: u32::from(p.duration),
                ended: true,
            });
            // At most one digit per packet: a lost end followed at once by a complete
            // event reports the earlier one now and this one never (rare enough).
            return out.or(digit);
        }
        self.current = Some((timestamp, p));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: u8, end: bool, duration: u16) -> [u8; 4] {
        EventPayload {
            event,
            end,
            volume: 10,
            duration,
        }
        .to_bytes()
    }

    #[test]
    fn a_digit_is_reported_once_on_its_first_end_packet() {
        let mut r = DtmfReceiver::default();
        assert_eq!(r.on_packet(1000, &ev(5, false, 160)), None);
        assert_eq!(r.on_packet(1000, &ev(5, false, 320)), None);
        let d = r.on_packet(1000, &ev(5, true, 800));
        assert_eq!(
            d,
            Some(Digit {
                digit: '5',
                duration: 800,
                ended: true
            })
        );
        // The two retransmitted end packets are absorbed.
        assert_eq!(r.on_packet(1000, &ev(5, true, 800)), None);
        assert_eq!(r.on_packet(1000, &ev(5, true, 800)), None);
        // The next key.
        r.on_packet(3000, &ev(11, false, 160));
        assert_eq!(
            r.on_packet(3000, &ev(11, true, 640)).map(|d| d.digit),
            Some('#')
        );
    }

    #[test]
    fn an_event_whose_end_was_lost_is_closed_by_the_next() {
        let mut r = DtmfReceiver::default();
        r.on_packet(1000, &ev(1, false, 160));
        r.on_packet(1000, &ev(1, false, 480));
        let d = r.on_packet(5000, &ev(2, false, 160));
        assert_eq!(
            d,
            Some(Digit {
                digit: '1',
                duration: 480,
                ended: false
            })
        );
        assert_eq!(
            r.on_packet(5000, &ev(2, true, 400)).map(|d| d.digit),
            Some('2')
        );
    }

    #[test]
    fn codes_and_characters_map_both_ways() {
        for e in 0..16u8 {
            let c = digit_of(e).unwrap();
            assert_eq!(event_of(c), Some(e));
        }
        assert_eq!(digit_of(16), None);
        assert_eq!(event_of('x'), None);
        let p = EventPayload::parse(&ev(9, true, 1234)).unwrap();
        assert_eq!((p.event, p.end, p.volume, p.duration), (9, true, 10, 1234));
        assert_eq!(EventPayload::parse(&[1, 2, 3]), None);
    }

    #[test]
    fn durations_are_rescaled_between_event_clocks_and_saturate() {
        let mut p = ev(5, true, 800);
        rescale_duration(&mut p, 8000, 48_000);
        assert_eq!(
            EventPayload::parse(&p).map(|e| (e.event, e.end, e.duration)),
            Some((5, true, 4800))
        );
        rescale_duration(&mut p, 48_000, 8000);
        assert_eq!(EventPayload::parse(&p).map(|e| e.duration), Some(800));
        let mut long = ev(1, false, 20_000);
        rescale_duration(&mut long, 8000, 48_000);
        assert_eq!(
            EventPayload::parse(&long).map(|e| e.duration),
            Some(u16::MAX)
        );
        let mut short = [1u8, 2];
        rescale_duration(&mut short, 8000, 48_000);
        assert_eq!(short, [1, 2]);
    }
}

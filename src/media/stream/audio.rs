//! Resampling between 8 and 16 kHz for streams whose rate differs from the customer's
//! codec (a G.711 customer on a 16 kHz stream): a 2× half-band low-pass filter, windowed
//! sinc, state kept between frames so 20 ms frames join without a click. Fixed-size state,
//! no allocation.

/// Filter length (odd: the half-band's centre tap is 0.5).
const TAPS: usize = 23;

fn half_band() -> [f32; TAPS] {
    let mut h = [0f32; TAPS];
    let mid = (TAPS / 2) as f32;
    let mut sum = 0.0;
    for (n, tap) in h.iter_mut().enumerate() {
        let x = n as f32 - mid;
        let sinc = if x == 0.0 {
            0.5
        } else {
            (std::f32::consts::PI * x / 2.0).sin() / (std::f32::consts::PI * x)
        };
        // Blackman window.
        let w = 0.42 - 0.5 * (2.0 * std::f32::consts::PI * n as f32 / (TAPS - 1) as f32).cos()
            + 0.08 * (4.0 * std::f32::consts::PI * n as f32 / (TAPS - 1) as f32).cos();
        *tap = sinc * w;
        sum += *tap;
    }
    for tap in &mut h {
        *tap /= sum;
    }
    h
}

fn clamp(x: f32) -> i16 {
    x.round().clamp(f32::from(i16::MIN), f32::from(i16::MAX)) as i16
}

/// 16 kHz → 8 kHz.
#[derive(Debug, Clone)]
pub struct Down2 {
    h: [f32; TAPS],
    hist: [f32; TAPS],
    pos: usize,
}

impl Default for Down2 {
    fn default() -> Self {
        Down2 {
            h: half_band(),
            hist: [0.0; TAPS],
            pos: 0,
        }
    }
}

impl Down2 {
    fn push(&mut self, x: i16) {
        self.hist[self.pos] = f32::from(x);
        self.pos = (self.pos + 1) % TAPS;
    }

    fn filtered(&self) -> f32 {
        let mut acc = 0.0;
        for (k, h) in self.h.iter().enumerate() {
            acc += h * self.hist[(self.pos + k) % TAPS];
        }
        acc
    }

    /// Resamples `input` (16 kHz) into `out` (8 kHz, half as long); samples written.
    pub fn process(&mut self, input: &[i16], out: &mut [i16]) -> usize {
        let mut n = 0;
        for pair in input.chunks(2) {
            for &x in pair {
                self.push(x);
            }
            if n < out.len() {
                out[n] = clamp(self.filtered());
                n += 1;
            }
        }
        n
    }
}

/// 8 kHz → 16 kHz.
#[derive(Debug, Clone, Default)]
pub struct Up2 {
    inner: Down2,
}

impl Up2 {
    /// Resamples `input` (8 kHz) into `out` (16 kHz, twice as long); samples written.
    pub fn process(&mut self, input: &[i16], out: &mut [i16]) -> usize {
        let mut n = 0;
        for &x in input {
            // Zero-stuffed, filtered, gain 2.
            for s in [x, 0] {
                self.inner.push(s);
                if n < out.len() {
                    out[n] = clamp(2.0 * self.inner.filtered());
                    n += 1;
                }
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(hz: f32, rate: f32, n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| (8000.0 * (2.0 * std::f32::consts::PI * hz * i as f32 / rate).sin()) as i16)
            .collect()
    }

    fn level_at(samples: &[i16], hz: f32, rate: f32) -> f32 {
        let (mut re, mut im) = (0.0f32, 0.0f32);
        for (i, &s) in samples.iter().enumerate() {
            let p = 2.0 * std::f32::consts::PI * hz * i as f32 / rate;
            re += f32::from(s) * p.cos();
            im += f32::from(s) * p.sin();
        }
        2.0 * (re * re + im * im).sqrt() / samples.len() as f32
    }

    #[test]
    fn a_tone_survives_both_ways_in_20_ms_frames_and_what_8_khz_cannot_carry_does_not() {
        let input = tone(1000.0, 16_000.0, 16_000);
        let mut down = Down2::default();
        let mut narrow = Vec::new();
        for frame in input.chunks(320) {
            let mut out = [0i16; 160];
            let n = down.process(frame, &mut out);
            narrow.extend_from_slice(&out[..n]);
        }
        assert_eq!(narrow.len(), 8000);
        let kept = level_at(&narrow[400..], 1000.0, 8000.0);
        assert!((7000.0..9000.0).contains(&kept), "1 kHz kept at {kept}");

        let mut up = Up2::default();
        let mut wide = Vec::new();
        for frame in narrow.chunks(160) {
            let mut out = [0i16; 320];
            let n = up.process(frame, &mut out);
            wide.extend_from_slice(&out[..n]);
        }
        assert_eq!(wide.len(), 16_000);
        let back = level_at(&wide[800..], 1000.0, 16_000.0);
        assert!((7000.0..9000.0).contains(&back), "1 kHz back at {back}");
        // Its image at 7 kHz is filtered out.
        let image = level_at(&wide[800..], 7000.0, 16_000.0);
        assert!(image < 400.0, "image at {image}");

        // 6 kHz at 16 kHz would alias to 2 kHz at 8 kHz: the filter removes it.
        let high = tone(6000.0, 16_000.0, 16_000);
        let mut down = Down2::default();
        let mut out = vec![0i16; 8000];
        let n = down.process(&high, &mut out);
        let alias = level_at(&out[400..n], 2000.0, 8000.0);
        assert!(alias < 400.0, "alias at {alias}");
    }
}

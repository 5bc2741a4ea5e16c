//! G.711 µ-law (PCMU) and A-law (PCMA), ITU-T G.711.
//!
//! Decoding is a 256-entry table per law, built at compile time from the segment/step
//! description of the standard; encoding finds the segment from the position of the
//! highest set bit. The tests check every code and every 16-bit sample against the
//! reconstruction and decision values of G.711 written independently.

/// µ-law bias (33 in 14-bit units, 132 in 16-bit).
const ULAW_BIAS: i32 = 0x84;
/// Largest magnitude µ-law encodes without clipping (16-bit).
const ULAW_CLIP: i32 = 32_635;

const fn ulaw_decode_formula(code: u8) -> i16 {
    let c = !code;
    let exponent = ((c >> 4) & 0x07) as i32;
    let mantissa = (c & 0x0f) as i32;
    let magnitude = (((mantissa << 3) + ULAW_BIAS) << exponent) - ULAW_BIAS;
    if c & 0x80 != 0 {
        -magnitude as i16
    } else {
        magnitude as i16
    }
}

const fn alaw_decode_formula(code: u8) -> i16 {
    let c = code ^ 0x55;
    let segment = ((c >> 4) & 0x07) as i32;
    let step = ((c & 0x0f) as i32) << 4;
    let magnitude = match segment {
        0 => step + 8,
        s => (step + 0x108) << (s - 1),
    };
    if c & 0x80 != 0 {
        magnitude as i16
    } else {
        -magnitude as i16
    }
}

macro_rules! decode_table {
    ($decode:ident) => {{
        let mut t = [0i16; 256];
        let mut i = 0;
        while i < 256 {
            t[i] = $decode(i as u8);
            i += 1;
        }
        t
    }};
}

/// µ-law code → 16-bit linear sample.
pub static ULAW_TO_LINEAR: [i16; 256] = decode_table!(ulaw_decode_formula);
/// A-law code → 16-bit linear sample.
pub static ALAW_TO_LINEAR: [i16; 256] = decode_table!(alaw_decode_formula);

/// Decodes one µ-law octet.
#[inline]
pub fn ulaw_decode(code: u8) -> i16 {
    ULAW_TO_LINEAR[usize::from(code)]
}

/// Decodes one A-law octet.
#[inline]
pub fn alaw_decode(code: u8) -> i16 {
    ALAW_TO_LINEAR[usize::from(code)]
}

/// Encodes one 16-bit sample as µ-law.
#[inline]
pub fn ulaw_encode(sample: i16) -> u8 {
    let s = i32::from(sample);
    let (sign, magnitude) = if s < 0 { (0x80u8, -s) } else { (0, s) };
    let biased = magnitude.min(ULAW_CLIP) + ULAW_BIAS;
    // biased is in 132..=32767: its highest set bit is bit 7..=14 → exponent 0..=7.
    let exponent = (31 - biased.leading_zeros() as i32 - 7).clamp(0, 7);
    let mantissa = ((biased >> (exponent + 3)) & 0x0f) as u8;
    !(sign | ((exponent as u8) << 4) | mantissa)
}

/// Encodes one 16-bit sample as A-law.
#[inline]
pub fn alaw_encode(sample: i16) -> u8 {
    // 13-bit magnitude, with negative values shifted by one (G.711 A-law is symmetric
    // around -0.5 in these units).
    let s = i32::from(sample) >> 3;
    let (mask, magnitude) = if s >= 0 {
        (0xd5u8, s)
    } else {
        (0x55u8, -s - 1)
    };
    let code = if magnitude >= 0x1000 {
        0x7f
    } else if magnitude < 0x20 {
        (magnitude >> 1) as u8
    } else {
        // Highest set bit 5..=11 → segment 1..=7.
        let segment = 31 - magnitude.leading_zeros() as i32 - 4;
        ((segment as u8) << 4) | ((magnitude >> segment) & 0x0f) as u8
    };
    code ^ mask
}

/// Decodes µ-law octets into `out` (same length; extra output is left alone).
pub fn ulaw_to_linear(codes: &[u8], out: &mut [i16]) {
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = ulaw_decode(c);
    }
}

/// Decodes A-law octets into `out`.
pub fn alaw_to_linear(codes: &[u8], out: &mut [i16]) {
    for (o, &c) in out.iter_mut().zip(codes) {
        *o = alaw_decode(c);
    }
}

/// Encodes samples as µ-law into `out`.
pub fn linear_to_ulaw(samples: &[i16], out: &mut [u8]) {
    for (o, &s) in out.iter_mut().zip(samples) {
        *o = ulaw_encode(s);
    }
}

/// Encodes samples as A-law into `out`.
pub fn linear_to_alaw(samples: &[i16], out: &mut [u8]) {
    for (o, &s) in out.iter_mut().zip(samples) {
        *o = alaw_encode(s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// G.711 µ-law, Table 2a: segment `e` (0–7), step `q` (0–15); reconstruction value in
    /// 14-bit units is (2q + 33)·2^e − 33, scaled to 16 bits by 4; code bits are inverted.
    fn ulaw_reference(code: u8) -> i32 {
        let c = !code;
        let (e, q) = (i32::from((c >> 4) & 7), i32::from(c & 15));
        let y = ((2 * q + 33) * (1 << e) - 33) * 4;
        if c & 0x80 != 0 {
            -y
        } else {
            y
        }
    }

    /// G.711 A-law, Table 1a: segment 0 reconstructs at 2q + 1, segment s ≥ 1 at
    /// (2q + 33)·2^(s−1), in 13-bit units (×8 for 16 bits); even bits inverted (0x55).
    fn alaw_reference(code: u8) -> i32 {
        let c = code ^ 0x55;
        let (s, q) = (i32::from((c >> 4) & 7), i32::from(c & 15));
        let y = if s == 0 {
            2 * q + 1
        } else {
            (2 * q + 33) * (1 << (s - 1))
        } * 8;
        if c & 0x80 != 0 {
            y
        } else {
            -y
        }
    }

    #[test]
    fn every_code_decodes_to_its_reconstruction_value() {
        for code in 0..=255u8 {
            assert_eq!(
                i32::from(ulaw_decode(code)),
                ulaw_reference(code),
                "µ {code:#04x}"
            );
            assert_eq!(
                i32::from(alaw_decode(code)),
                alaw_reference(code),
                "A {code:#04x}"
            );
        }
        // Known anchors: µ-law 0xff and 0x7f are ±0, 0x00 is the most negative value.
        assert_eq!(ulaw_decode(0xff), 0);
        assert_eq!(ulaw_decode(0x00), -32_124);
        assert_eq!(alaw_decode(0xd5), 8);
        assert_eq!(alaw_decode(0xaa), 32_256);
    }

    #[test]
    fn every_code_survives_decode_then_encode() {
        for code in 0..=255u8 {
            // µ-law has two zeros (0x7f = −0, 0xff = +0); −0 encodes as +0.
            let want = if code == 0x7f { 0xff } else { code };
            assert_eq!(ulaw_encode(ulaw_decode(code)), want, "µ {code:#04x}");
            assert_eq!(alaw_encode(alaw_decode(code)), code, "A {code:#04x}");
        }
    }

    /// Half the width of a code's quantisation interval in 16-bit units (G.711 Tables
    /// 1a/2a: the reconstruction value sits in the middle of its decision interval).
    fn ulaw_half_step(code: u8) -> i32 {
        4 << ((!code >> 4) & 7)
    }

    fn alaw_half_step(code: u8) -> i32 {
        let s = ((code ^ 0x55) >> 4) & 7;
        if s <= 1 {
            8
        } else {
            8 << (s - 1)
        }
    }

    /// For every 16-bit sample the chosen code's decision interval holds the sample: its
    /// reconstruction value is at most half a step away (plus the precision G.711 drops:
    /// 2 bits for µ-law, 3 for A-law), and encoding is monotonic.
    #[test]
    fn every_sample_falls_in_its_codes_decision_interval() {
        type Law = (
            &'static str,
            fn(i16) -> u8,
            fn(u8) -> i32,
            fn(u8) -> i32,
            i32,
        );
        let laws: [Law; 2] = [
            ("µ", ulaw_encode, ulaw_reference, ulaw_half_step, 4),
            ("A", alaw_encode, alaw_reference, alaw_half_step, 8),
        ];
        for (name, encode, reference, half_step, dropped) in laws {
            let mut previous = i32::MIN;
            for x in i16::MIN..=i16::MAX {
                let code = encode(x);
                let y = reference(code);
                assert!(y >= previous, "{name}: not monotonic at {x}");
                previous = y;
                let x = i32::from(x);
                // Beyond the last level the encoder clips.
                if x.abs() <= 32_000 {
                    let err = (y - x).abs();
                    assert!(
                        err <= half_step(code) + dropped,
                        "{name}: {x} → {code:#04x} = {y}"
                    );
                }
            }
        }
    }

    #[test]
    fn slices_convert_both_ways() {
        let samples: Vec<i16> = (0..160)
            .map(|i| ((i as f64 * 0.3).sin() * 8000.0) as i16)
            .collect();
        let mut codes = vec![0u8; 160];
        let mut back = vec![0i16; 160];
        linear_to_ulaw(&samples, &mut codes);
        ulaw_to_linear(&codes, &mut back);
        for (a, b) in samples.iter().zip(&back) {
            assert!((i32::from(*a) - i32::from(*b)).abs() <= 256, "{a} {b}");
        }
        linear_to_alaw(&samples, &mut codes);
        alaw_to_linear(&codes, &mut back);
        for (a, b) in samples.iter().zip(&back) {
            assert!((i32::from(*a) - i32::from(*b)).abs() <= 256, "{a} {b}");
        }
    }
}

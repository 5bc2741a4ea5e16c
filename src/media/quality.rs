//! Call quality from what the relay measured: a MOS estimate by the ITU-T G.107 E-model,
//! simplified to the inputs a relay has (packet loss, jitter) for G.711 with packet-loss
//! concealment.

/// MOS (1.0–4.5) for `loss_pct` percent random packet loss and `jitter_ms` of jitter,
/// assuming a jitter buffer of twice the jitter plus one 20 ms packet of delay.
pub fn mos(loss_pct: f64, jitter_ms: f64) -> f64 {
    let delay = 2.0 * jitter_ms.max(0.0) + 20.0;
    // Delay impairment Id (G.107 simplified form).
    let id = 0.024 * delay
        + if delay > 177.3 {
            0.11 * (delay - 177.3)
        } else {
            0.0
        };
    // Equipment impairment under loss: G.711 (Ie = 0) with PLC, Bpl = 25.1 (G.113).
    let loss = loss_pct.clamp(0.0, 100.0);
    let ie_eff = 95.0 * loss / (loss + 25.1);
    let r = (93.2 - id - ie_eff).clamp(0.0, 100.0);
    let mos = 1.0 + 0.035 * r + 7.0e-6 * r * (r - 60.0) * (100.0 - r);
    mos.clamp(1.0, 4.5)
}

/// Mean power of the `hz` component of `samples` taken at `rate` Hz (Goertzel): a pure
/// tone of amplitude `a` gives `a²/2`, like its mean square. For checking that a known
/// signal came through.
pub fn tone_power(samples: &[f32], hz: f32, rate: f32) -> f32 {
    if samples.is_empty() {
        return 0.0;
    }
    let w = 2.0 * std::f32::consts::PI * hz / rate;
    let (mut s1, mut s2) = (0.0f32, 0.0f32);
    for &x in samples {
        let s = x + 2.0 * w.cos() * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    let n = samples.len() as f32;
    (s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2) * 2.0 / (n * n)
}

#[cfg(test)]
mod tests {
    #[test]
    fn tone_power_is_the_mean_square_of_a_pure_tone_and_ignores_others() {
        let s: Vec<f32> = (0..8000)
            .map(|i| 0.5 * (2.0 * std::f32::consts::PI * 1000.0 * i as f32 / 8000.0).sin())
            .collect();
        let p = tone_power(&s, 1000.0, 8000.0);
        assert!((p - 0.125).abs() < 0.005, "{p}");
        assert!(tone_power(&s, 440.0, 8000.0) < 0.001);
        assert_eq!(tone_power(&[], 1000.0, 8000.0), 0.0);
    }

    use super::*;

    #[test]
    fn a_clean_call_scores_high_and_loss_and_jitter_lower_it() {
        let clean = mos(0.0, 0.0);
        assert!((4.35..=4.45).contains(&clean), "{clean}");
        assert!(mos(1.0, 0.0) < clean);
        assert!(mos(5.0, 0.0) < mos(1.0, 0.0));
        assert!(mos(0.0, 150.0) < mos(0.0, 10.0));
        assert!(mos(50.0, 300.0) >= 1.0);
        // 5 % loss with PLC is still fair (above 3.0).
        assert!(mos(5.0, 10.0) > 3.0, "{}", mos(5.0, 10.0));
    }
}

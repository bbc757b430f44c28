//! Calibrated scores (`threshold_mode: calibrated`): a series' own score distribution says
//! where "about `alerts_per_day` a day" lies, so one setting means the same on a quiet gauge
//! and on a jumpy one, whatever the method. This is SPOT (Siffer et al., "Anomaly Detection
//! in Streams with Extreme Value Theory", KDD 2017): the scores above a high initial
//! quantile `t` (the peaks) follow a generalised Pareto distribution, whose fit gives the
//! level exceeded with probability q per sample,
//!   z_q = t + σ/γ · ((q · n / N_t)^(−γ) − 1)        (γ ≠ 0; t − σ · ln(q · n / N_t) at 0),
//! n the samples seen and N_t the peaks among them. σ and γ come from the peaks'
//! probability-weighted moments (`gpd_moments`). The newest `MAX_PEAKS` peaks are kept and the counts scaled down as old peaks
//! go, so the tail follows the series (DSPOT's drift, without its moving mean).
//! Pure: scores and timestamps in, a level out.

/// Scores collected before the first fit: t is their 98th percentile, and about ten of
/// them are its first peaks.
pub const INIT: usize = 500;
const INIT_QUANTILE: f64 = 0.98;
/// Peaks remembered: enough for a steady fit, few enough to follow a change in a day or so.
pub const MAX_PEAKS: usize = 128;

/// One series' tail model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Spot {
    /// Scores of the initial batch (emptied once fitted).
    init: Vec<f32>,
    /// The initial threshold; None until the initial batch is in.
    t: Option<f64>,
    /// Excesses over t, oldest first.
    peaks: std::collections::VecDeque<f32>,
    /// Samples and peaks the fit stands for (scaled down together as old peaks are dropped).
    n: f64,
    n_peaks: f64,
    /// σ and γ of the peaks, refitted when a peak comes or goes.
    fit: Option<(f64, f64)>,
    /// Typical time between samples (an exponential mean), ms; and the last sample's time.
    step_ms: f64,
    last_ms: Option<i64>,
}

impl Spot {
    /// Learns one score (of a sample that is not an incident) at `ts_ms`.
    pub fn observe(&mut self, score: f64, ts_ms: i64) {
        if !score.is_finite() {
            return;
        }
        if let Some(last) = self.last_ms.filter(|l| ts_ms > *l) {
            let dt = (ts_ms - last) as f64;
            self.step_ms = if self.step_ms > 0.0 {
                0.99 * self.step_ms + 0.01 * dt
            } else {
                dt
            };
        }
        self.last_ms = Some(ts_ms);
        let Some(t) = self.t else {
            self.init.push(score as f32);
            if self.init.len() >= INIT {
                self.fit_initial();
            }
            return;
        };
        self.n += 1.0;
        if score > t {
            self.peaks.push_back((score - t) as f32);
            self.n_peaks += 1.0;
            if self.peaks.len() > MAX_PEAKS {
                self.peaks.pop_front();
                // The counts stand for the peaks kept: scale both so their ratio stays.
                let keep = MAX_PEAKS as f64 / (MAX_PEAKS + 1) as f64;
                self.n *= keep;
                self.n_peaks *= keep;
            }
            self.fit = gpd_moments(self.peaks.iter().map(|p| f64::from(*p)));
        }
    }

    fn fit_initial(&mut self) {
        let mut s: Vec<f64> = self.init.iter().map(|v| f64::from(*v)).collect();
        s.sort_by(f64::total_cmp);
        let t = s[((s.len() as f64 * INIT_QUANTILE) as usize).min(s.len() - 1)];
        self.peaks = s
            .iter()
            .filter(|v| **v > t)
            .map(|v| (v - t) as f32)
            .collect();
        self.n = s.len() as f64;
        self.n_peaks = self.peaks.len() as f64;
        self.t = Some(t);
        self.init = Vec::new();
        self.fit = gpd_moments(self.peaks.iter().map(|p| f64::from(*p)));
    }

    /// Whether the initial batch is in (t is known).
    pub fn fitted(&self) -> bool {
        self.t.is_some()
    }

    /// Whether the model can say where its tail lies.
    pub fn ready(&self) -> bool {
        self.t.is_some() && self.peaks.len() >= 2 && self.step_ms > 0.0
    }

    /// The score exceeded about `per_day` times a day at this series' sampling rate; None
    /// until `ready`.
    pub fn level(&self, per_day: f64) -> Option<f64> {
        let t = self.t?;
        if !self.ready() {
            return None;
        }
        let q = (per_day * self.step_ms / 86_400_000.0).clamp(1e-12, 0.5);
        let (sigma, gamma) = self.fit?;
        let r = q * self.n / self.n_peaks.max(1.0);
        let z = if gamma.abs() < 1e-9 {
            t - sigma * r.ln()
        } else {
            t + sigma / gamma * (r.powf(-gamma) - 1.0)
        };
        // (a level below t would call every peak an alert: the fit says nothing there)
        z.is_finite().then_some(z.max(t))
    }

    /// Values held (for the memory figures): initial batch and peaks.
    pub fn held(&self) -> usize {
        self.init.len() + self.peaks.len()
    }
}

/// σ and γ of a generalised Pareto distribution fitted to `excesses` by probability-weighted
/// moments (Hosking and Wallis, 1987): with the sorted excesses y₍ᵢ₎, a₀ their mean and
/// a₁ = mean of (1 − pᵢ) · y₍ᵢ₎, pᵢ = (i − 0.35) / n, the shape k = a₀ / (a₀ − 2a₁) − 2
/// (γ = −k) and σ = 2 a₀ a₁ / (a₀ − 2a₁). Unlike the plain moments, it stays sound on the
/// heavy tails latencies have (γ ≥ 1/2, where a variance says little). None without spread.
pub fn gpd_moments(excesses: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    let mut y: Vec<f64> = excesses.filter(|v| v.is_finite()).collect();
    if y.len() < 2 {
        return None;
    }
    y.sort_by(f64::total_cmp);
    if y.first() == y.last() {
        return None;
    }
    let n = y.len() as f64;
    let a0 = y.iter().sum::<f64>() / n;
    let a1 = y
        .iter()
        .enumerate()
        .map(|(i, v)| (1.0 - (i as f64 + 1.0 - 0.35) / n) * v)
        .sum::<f64>()
        / n;
    let d = a0 - 2.0 * a1;
    if !(a0 > 0.0 && d > 0.0) {
        return None;
    }
    let k = a0 / d - 2.0;
    Some((2.0 * a0 * a1 / d, -k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    #[test]
    fn worked_moments() {
        // 1, 2, 3: a₀ 2, a₁ = (0.783·1 + 0.45·2 + 0.117·3) / 3 = 0.678, a₀ − 2a₁ = 0.644:
        // k = 2 / 0.644 − 2 = 1.103 (γ −1.103, a bounded tail), σ = 2·2·0.678 / 0.644 = 4.21.
        let (sigma, gamma) = gpd_moments([3.0, 1.0, 2.0].into_iter()).unwrap();
        assert!(
            (gamma + 1.1034).abs() < 1e-3 && (sigma - 4.2069).abs() < 1e-3,
            "{sigma} {gamma}"
        );
        assert_eq!(gpd_moments([1.0, 1.0].into_iter()), None);
        // Exponential excesses (γ 0, σ 1), from their quantiles: the fit finds both.
        let exp: Vec<f64> = (0..2000)
            .map(|i| -(1.0 - (i as f64 + 0.5) / 2000.0).ln())
            .collect();
        let (sigma, gamma) = gpd_moments(exp.into_iter()).unwrap();
        assert!(
            gamma.abs() < 0.02 && (sigma - 1.0).abs() < 0.02,
            "{sigma} {gamma}"
        );
    }

    /// Exponential scores (rate 1) at 15 s: the level of one a day is ln(5760) ≈ 8.66.
    #[test]
    fn the_level_of_an_exponential_tail_is_where_theory_puts_it() {
        let mut s = Spot::default();
        let mut seed = 3;
        assert_eq!(s.level(1.0), None);
        for i in 0..20_000 {
            s.observe(-lcg(&mut seed).ln(), i * 15_000);
        }
        let z = s.level(1.0).unwrap();
        assert!((z - 5760f64.ln()).abs() < 1.5, "{z}");
        // Ten a day is lower by about ln(10).
        let z10 = s.level(10.0).unwrap();
        assert!((z - z10 - 10f64.ln()).abs() < 1.0, "{z} {z10}");
        assert!(s.held() <= MAX_PEAKS);
    }

    /// The point: on two series whose scores differ tenfold in scale, the same setting
    /// gives about the same number of exceedances a day.
    #[test]
    fn one_setting_means_the_same_rate_on_any_scale() {
        for scale in [0.3, 3.0] {
            let mut s = Spot::default();
            let mut seed = 11;
            let mut over = 0;
            let days = 20;
            for i in 0..(days * 5760) {
                let score = scale * -lcg(&mut seed).ln();
                if i > 5760 {
                    over += usize::from(score > s.level(2.0).unwrap());
                }
                s.observe(score, i as i64 * 15_000);
            }
            let per_day = over as f64 / (days - 1) as f64;
            assert!(
                (0.7..=6.0).contains(&per_day),
                "scale {scale}: {per_day} a day"
            );
        }
    }
}

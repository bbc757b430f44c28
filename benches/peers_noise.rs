//! False firings of `method: peers` on incident-free noise, with the shipped defaults
//! (mad_threshold 5, min_peers 3, 8 of 10 rounds): every pod of a group is the same noise,
//! independently drawn, so every firing is a false page. Goal: at most 7 a pod-week.
//!   cargo bench --bench peers_noise                       (the defaults)
//!   cargo bench --bench peers_noise -- 'mad_threshold: 3' 'min_anomalous: {count: 3, of: 3}'
//! A week of 15 s rounds per pod, white noise and AR(1) with phi 0.9 (a pod's gauge moves
//! slowly, so one that drifted a little stays off its peers for several rounds), for groups
//! of 3, 5 and 10 pods; the rule goes through the same detector, guard, min_anomalous and
//! alert state machine as the live path (`RuleSeries::step` with its peers).

use anomaly_sidecar::alert::state::{AlertState, Transition};
use anomaly_sidecar::config::rules;
use anomaly_sidecar::detect::{self, Method, Verdict};

const ROUNDS: usize = 7 * 24 * 240; // a week at 15 s
const SEEDS: u64 = 3;

/// xorshift64* with Box-Muller: deterministic normal draws without a dependency.
struct Normal(u64);

impl Normal {
    fn uniform(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        ((self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn next(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// Firings over a week for a group of `pods` whose noise has autocorrelation `phi`.
fn firings(rule: &rules::Rule, pods: usize, phi: f64, seed: u64) -> usize {
    let Method::Peers {
        mad_threshold,
        min_peers,
    } = rule.method
    else {
        unreachable!("a peers rule")
    };
    let mut rng = Normal(0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0x1000_0001));
    let mut level = vec![0.0f64; pods];
    let mut alerts = vec![AlertState::Inactive; pods];
    let mut recent = vec![0u64; pods];
    let mut fired = 0;
    let scale = (1.0 - phi * phi).sqrt();
    for round in 0..ROUNDS {
        for l in level.iter_mut() {
            *l = phi * *l + scale * rng.next();
        }
        let values: Vec<f64> = level.iter().map(|l| 100.0 + 5.0 * l).collect();
        let now = round as i64 * 15_000;
        for p in 0..pods {
            let others: Vec<f64> = (0..pods).filter(|&q| q != p).map(|q| values[q]).collect();
            let x = values[p];
            let mut v = Verdict::default();
            let _ = detect::judge_peers_into(&mut v, x, &others, mad_threshold, min_peers);
            rule.guard.apply(&mut v, x);
            let judged = rule.guard.condition(&v, alerts[p].is_firing());
            let condition = rule.policy.condition(&mut recent[p], judged);
            if alerts[p].step(condition, now, &rule.policy) == Some(Transition::Firing) {
                fired += 1;
            }
        }
    }
    fired
}

fn main() {
    // `cargo bench --bench peers_noise -- 'mad_threshold: 5' ...`: rule keys to try instead.
    let extra: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a.contains(':'))
        .collect();
    let mut text = "rules:\n  - name: outlier\n    match: g\n    method: peers\n".to_string();
    for e in &extra {
        text.push_str(&format!("    {e}\n"));
    }
    let set = rules::parse("rules.yaml", &text).expect("a peers rule");
    let rule = &set.rules[0];
    println!("method: peers {extra:?}, a week of 15 s rounds, {SEEDS} seeds");
    println!(
        "{:>5} {:>12} {:>22}",
        "pods", "noise", "false firings / pod-week"
    );
    for pods in [3, 5, 10] {
        for (name, phi) in [("white", 0.0), ("AR(1) 0.9", 0.9)] {
            let total: usize = (0..SEEDS).map(|s| firings(rule, pods, phi, s)).sum();
            let per = total as f64 / (SEEDS as f64 * pods as f64);
            println!("{pods:>5} {name:>12} {per:>22.1}");
        }
    }
}

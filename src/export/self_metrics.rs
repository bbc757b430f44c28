//! The sidecar's own health metrics, on a registry passed in (no global registry). Labels are
//! bounded: target, rule, transition; never raw series labels.

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry,
};

/// Every self-monitoring metric.
#[derive(Clone)]
pub struct SelfMetrics {
    pub up: IntGaugeVec,
    pub scrape_duration_seconds: GaugeVec,
    pub scrape_samples: IntGaugeVec,
    pub series: IntGaugeVec,
    pub dropped_series_total: IntCounterVec,
    pub rule_evaluations_total: IntCounterVec,
    pub transitions_total: IntCounterVec,
    pub relearned_total: IntCounterVec,
    pub rules_last_reload_successful: IntGauge,
    pub rules_last_reload_success_timestamp_seconds: Gauge,
    pub store_errors_total: IntCounterVec,
    pub store_size_bytes: IntGauge,
    pub store_last_write_successful: IntGauge,
    pub notifications_total: IntCounterVec,
    pub outbox_events: IntGaugeVec,
    pub notification_latency_seconds: Histogram,
    pub scrape_to_export_seconds: Histogram,
    pub outbox_dropped_total: IntCounter,
    pub llm_requests_total: IntCounterVec,
    pub sd_discovered_targets: IntGaugeVec,
    pub sd_lookups_total: IntCounterVec,
    pub sd_refresh_failures_total: IntCounterVec,
    pub targets: IntGaugeVec,
    pub shards: IntGauge,
    pub seeded_series_total: IntCounter,
}

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace("anomaly_sidecar")
}

impl SelfMetrics {
    /// Creates the metrics and registers them (and build info) on `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            up: IntGaugeVec::new(
                opts(
                    "up",
                    "1 if the target's last scrape succeeded, 0 otherwise.",
                ),
                &["target"],
            )?,
            scrape_duration_seconds: GaugeVec::new(
                opts(
                    "scrape_duration_seconds",
                    "Duration of the target's last scrape.",
                ),
                &["target"],
            )?,
            scrape_samples: IntGaugeVec::new(
                opts(
                    "scrape_samples",
                    "Samples in the target's last successful scrape.",
                ),
                &["target"],
            )?,
            series: IntGaugeVec::new(
                opts("series", "Series of the target kept in the store."),
                &["target"],
            )?,
            dropped_series_total: IntCounterVec::new(
                opts(
                    "dropped_series_total",
                    "New series of the target dropped because --max-series was reached.",
                ),
                &["target"],
            )?,
            rule_evaluations_total: IntCounterVec::new(
                opts("rule_evaluations_total", "Samples evaluated by the rule."),
                &["rule"],
            )?,
            transitions_total: IntCounterVec::new(
                opts(
                    "transitions_total",
                    "Alert state transitions of the rule, by new state.",
                ),
                &["rule", "to"],
            )?,
            relearned_total: IntCounterVec::new(
                opts(
                    "relearned_total",
                    "Shifts the rule accepted as the new normal after relearn_after (their alerts resolve with reason=new_normal).",
                ),
                &["rule"],
            )?,
            rules_last_reload_successful: IntGauge::with_opts(opts(
                "rules_last_reload_successful",
                "1 if the last load of the rules file succeeded.",
            ))?,
            rules_last_reload_success_timestamp_seconds: Gauge::with_opts(opts(
                "rules_last_reload_success_timestamp_seconds",
                "Time of the last successful load of the rules file.",
            ))?,
            store_errors_total: IntCounterVec::new(
                opts("store_errors_total", "Failed writes to the history store."),
                &["operation"],
            )?,
            store_last_write_successful: IntGauge::with_opts(opts(
                "store_last_write_successful",
                "Whether the last write to the history store succeeded (0 while the disk is full or failing; detection goes on from memory).",
            ))?,
            store_size_bytes: IntGauge::with_opts(opts(
                "store_size_bytes",
                "Bytes the history store uses on disk.",
            ))?,
            notifications_total: IntCounterVec::new(
                opts(
                    "notifications_total",
                    "Delivery attempts by receiver and result (success, failed, rejected).",
                ),
                &["receiver", "result"],
            )?,
            outbox_events: IntGaugeVec::new(
                opts("outbox_events", "Events waiting in the receiver's outbox."),
                &["receiver"],
            )?,
            scrape_to_export_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "scrape_to_export_seconds",
                    "From the start of a scrape to its samples evaluated and on /metrics.",
                )
                .namespace("anomaly_sidecar")
                // Finer between 50 and 250 ms, where a scrape of 100k series lands.
                .buckets(vec![
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.5,
                    1.0, 2.5, 5.0, 10.0,
                ]),
            )?,
            notification_latency_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "notification_latency_seconds",
                    "Duration of delivery attempts.",
                )
                .namespace("anomaly_sidecar")
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                ]),
            )?,
            outbox_dropped_total: IntCounter::with_opts(opts(
                "outbox_dropped_total",
                "Events dropped because an outbox reached --outbox-max-events.",
            ))?,
            llm_requests_total: IntCounterVec::new(
                opts(
                    "llm_requests_total",
                    "Explanations asked of the LLM, by result (success, error, timeout, invalid).",
                ),
                &["result"],
            )?,
            sd_discovered_targets: IntGaugeVec::new(
                opts(
                    "sd_discovered_targets",
                    "Targets a discovery config currently finds (config: file:line of its entry), before sharding.",
                ),
                &["config"],
            )?,
            sd_lookups_total: IntCounterVec::new(
                opts(
                    "sd_lookups_total",
                    "Discovery lookups made (dns) and watch events taken in (kubernetes), by mechanism.",
                ),
                &["mechanism"],
            )?,
            sd_refresh_failures_total: IntCounterVec::new(
                opts(
                    "sd_refresh_failures_total",
                    "Discovery lookups that failed (their config's last targets stay), by mechanism.",
                ),
                &["mechanism"],
            )?,
            targets: IntGaugeVec::new(
                opts(
                    "targets",
                    "Known targets: scraped here (state=active) or left to another --shard (state=other_shard).",
                ),
                &["state"],
            )?,
            shards: IntGauge::with_opts(opts(
                "shards",
                "N of --shard: the replicas targets are split over (with --shard auto, the StatefulSet's spec.replicas now).",
            ))?,
            seeded_series_total: IntCounter::with_opts(opts(
                "seeded_series_total",
                "New series of a discovered pod that started from another pod of its workload's history.",
            ))?,
        };
        registry.register(Box::new(m.up.clone()))?;
        registry.register(Box::new(m.scrape_duration_seconds.clone()))?;
        registry.register(Box::new(m.scrape_samples.clone()))?;
        registry.register(Box::new(m.series.clone()))?;
        registry.register(Box::new(m.dropped_series_total.clone()))?;
        registry.register(Box::new(m.rule_evaluations_total.clone()))?;
        registry.register(Box::new(m.transitions_total.clone()))?;
        registry.register(Box::new(m.relearned_total.clone()))?;
        registry.register(Box::new(m.rules_last_reload_successful.clone()))?;
        registry.register(Box::new(
            m.rules_last_reload_success_timestamp_seconds.clone(),
        ))?;
        registry.register(Box::new(m.store_errors_total.clone()))?;
        registry.register(Box::new(m.store_size_bytes.clone()))?;
        registry.register(Box::new(m.store_last_write_successful.clone()))?;
        registry.register(Box::new(m.notifications_total.clone()))?;
        registry.register(Box::new(m.outbox_events.clone()))?;
        registry.register(Box::new(m.notification_latency_seconds.clone()))?;
        registry.register(Box::new(m.scrape_to_export_seconds.clone()))?;
        registry.register(Box::new(m.outbox_dropped_total.clone()))?;
        registry.register(Box::new(m.llm_requests_total.clone()))?;
        registry.register(Box::new(m.sd_discovered_targets.clone()))?;
        registry.register(Box::new(m.sd_lookups_total.clone()))?;
        registry.register(Box::new(m.sd_refresh_failures_total.clone()))?;
        registry.register(Box::new(m.targets.clone()))?;
        registry.register(Box::new(m.shards.clone()))?;
        registry.register(Box::new(m.seeded_series_total.clone()))?;
        let build_info = IntGaugeVec::new(
            opts(
                "build_info",
                "Always 1; labels give the version of the running binary.",
            ),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        registry.register(Box::new(build_info))?;
        Ok(m)
    }
}

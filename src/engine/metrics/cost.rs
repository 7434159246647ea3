//! What the recording costs, measured apart from Redis and its noise.

use std::time::{Duration, Instant};

use super::{Acquisition, Config};

/// The metrics of one lock/release cycle (an acquisition obtained, a
/// lock held and ended: 2 counters/histograms, 2 gauge moves and one
/// more histogram), into the Prometheus exporter's recorder.
fn cycle(config: &Config) {
    let acquisition = Acquisition::start(config, "tenant:42:settings");
    let lock = config.lock("tenant:42:settings");
    acquisition.finish_obtained();
    lock.ended();
}

/// Median time per cycle over `rounds` rounds of `n` cycles.
fn per_cycle(config: &Config, rounds: usize, n: u32) -> Duration {
    let mut times: Vec<Duration> = (0..rounds)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..n {
                cycle(config);
            }
            started.elapsed() / n
        })
        .collect();
    times.sort();
    times[rounds / 2]
}

#[test]
#[ignore = "a measurement: cargo test --profile bench --features metrics --lib cost:: -- --ignored --nocapture"]
fn recording_cost_per_lock_release_cycle() {
    let _handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&[0.001, 0.01, 0.1, 1.0])
        .expect("buckets")
        .install_recorder()
        .expect("the only recorder of this test binary");
    let plain = Config::default();
    let mut named = Config::default();
    named.set_name("orders".to_owned());
    let mut keyed = named.clone();
    keyed.set_key_label(|key| key.split(':').next().map(str::to_owned));
    per_cycle(&plain, 3, 20_000);
    for (what, config) in [
        ("default labels", &plain),
        ("mutex name", &named),
        ("mutex name + key label", &keyed),
    ] {
        let took = per_cycle(config, 9, 50_000);
        println!("metrics per lock/release cycle, {what}: {took:?}");
    }
}

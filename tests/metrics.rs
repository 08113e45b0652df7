//! Metrics recorded through the `metrics` facade (feature `metrics`), with a recorder that
//! keeps every value in memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use tokio::time::advance;
use tower_client_credentials::cache::metric;
use tower_client_credentials::testing::{AuthServer, Behavior};
use tower_client_credentials::TokenCache;

mod common;
use common::{in_process_credentials, settle};

#[derive(Default)]
struct Value(AtomicU64, Mutex<Vec<f64>>);

impl CounterFn for Value {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::SeqCst);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::SeqCst);
    }
}

impl GaugeFn for Value {
    fn increment(&self, _: f64) {}
    fn decrement(&self, _: f64) {}
    fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Ordering::SeqCst);
    }
}

impl HistogramFn for Value {
    fn record(&self, value: f64) {
        self.1.lock().unwrap().push(value);
    }
}

#[derive(Default, Clone)]
struct InMemory(Arc<Mutex<HashMap<String, Arc<Value>>>>);

impl InMemory {
    fn value(&self, key: &Key) -> Arc<Value> {
        let labels: Vec<_> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let name = format!("{}{{{}}}", key.name(), labels.join(","));
        self.0.lock().unwrap().entry(name).or_default().clone()
    }
    fn counter(&self, name: &str) -> u64 {
        self.0
            .lock()
            .unwrap()
            .get(name)
            .map_or(0, |v| v.0.load(Ordering::SeqCst))
    }
    fn gauge(&self, name: &str) -> f64 {
        self.0
            .lock()
            .unwrap()
            .get(name)
            .map_or(f64::NAN, |v| f64::from_bits(v.0.load(Ordering::SeqCst)))
    }
    fn samples(&self, name: &str) -> usize {
        self.0
            .lock()
            .unwrap()
            .get(name)
            .map_or(0, |v| v.1.lock().unwrap().len())
    }
}

impl Recorder for InMemory {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.value(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.value(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.value(key))
    }
}

#[tokio::test(start_paused = true)]
async fn the_cache_reports_what_an_operator_needs() {
    let recorder = InMemory::default();
    metrics::set_global_recorder(recorder.clone()).unwrap();

    let auth = AuthServer::builder()
        .token_lifetime(Duration::from_secs(100))
        .start()
        .await
        .unwrap();
    auth.push_behavior([Behavior::server_error()]);
    let cache = TokenCache::builder(in_process_credentials(&auth))
        .refresh_jitter(0.0)
        .build();

    cache.token().await.unwrap_err();
    advance(Duration::from_secs(1)).await;
    cache.token().await.unwrap();
    // Into the refresh-ahead window (70 s): served while the refresh runs.
    advance(Duration::from_secs(75)).await;
    cache.token().await.unwrap();
    settle().await;

    let requests = |outcome: &str| {
        recorder.counter(&format!("{}{{outcome={outcome}}}", metric::TOKEN_REQUESTS))
    };
    assert_eq!(requests("failure"), 1);
    assert_eq!(requests("success"), 2);
    assert_eq!(
        recorder.samples(&format!("{}{{}}", metric::REFRESH_DURATION)),
        3
    );
    assert_eq!(recorder.counter(&format!("{}{{}}", metric::WAITERS)), 2);
    assert_eq!(
        recorder.counter(&format!("{}{{}}", metric::REFRESH_AHEAD)),
        1
    );
    assert!(recorder.counter(&format!("{}{{}}", metric::SERVED_DURING_REFRESH_AHEAD)) >= 1);
    assert_eq!(
        recorder.gauge(&format!("{}{{}}", metric::TOKEN_LIFETIME)),
        100.0
    );
    let expiry = recorder.gauge(&format!("{}{{}}", metric::TOKEN_EXPIRY));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (now + 90.0..=now + 101.0).contains(&expiry),
        "{expiry} vs {now}"
    );
}

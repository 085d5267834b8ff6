//! A metric family: one metric per label set. The same shape as prometheus-client's
//! `Family` (handles are resolved with [`Family::get_or_create`] when config compiles, never
//! per request; the text encoders go through [`EncodeMetric`]), with one addition the library's
//! lacks: its series can be walked, so [`super::protobuf`] writes the protobuf exposition
//! straight from the atomics instead of building the library's message tree first.

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::{MetricType, TypedMetric};
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Metrics of one kind keyed by label set (cheap to clone: the clones share the series).
#[derive(Debug)]
pub struct Family<S, M> {
    series: Arc<RwLock<HashMap<S, M>>>,
}

impl<S, M> Clone for Family<S, M> {
    fn clone(&self) -> Self {
        Family {
            series: self.series.clone(),
        }
    }
}

impl<S, M> Default for Family<S, M> {
    fn default() -> Self {
        Family {
            series: Default::default(),
        }
    }
}

impl<S: Clone + Eq + Hash, M: Clone + Default> Family<S, M> {
    /// The metric of `labels`, created (at zero) if it has none yet. Metrics share their
    /// value with the family, so the returned handle records into the exposed series.
    pub fn get_or_create(&self, labels: &S) -> M {
        if let Some(m) = self.read().get(labels) {
            return m.clone();
        }
        self.write().entry(labels.clone()).or_default().clone()
    }
}

impl<S: Eq + Hash, M> Family<S, M> {
    /// Drops the series of `labels`; true if it had one.
    pub fn remove(&self, labels: &S) -> bool {
        self.write().remove(labels).is_some()
    }

    /// Drops every series.
    pub fn clear(&self) {
        self.write().clear();
    }

    /// True if `labels` has a series.
    pub fn contains(&self, labels: &S) -> bool {
        self.read().contains_key(labels)
    }

    /// Number of series.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// True without series.
    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    /// The series, read-locked (scrapes: writers only add label sets when config compiles).
    pub(crate) fn read(&self) -> RwLockReadGuard<'_, HashMap<S, M>> {
        // A panic while holding the lock cannot leave the map half-updated: every write is
        // one insert, remove or clear.
        self.series.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<S, M>> {
        self.series.write().unwrap_or_else(|e| e.into_inner())
    }
}

impl<S, M: TypedMetric> TypedMetric for Family<S, M> {
    const TYPE: MetricType = M::TYPE;
}

impl<S, M> EncodeMetric for Family<S, M>
where
    S: EncodeLabelSet + Eq + Hash + std::fmt::Debug + Send + Sync,
    M: EncodeMetric + TypedMetric,
{
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        for (labels, m) in self.read().iter() {
            m.encode(encoder.encode_family(labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        M::TYPE
    }

    /// Families without series are left out of every exposition, as the library's are.
    fn is_empty(&self) -> bool {
        self.read().is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn handles_share_the_series_and_the_text_encoder_sees_them() {
        let f: Family<Vec<(&'static str, String)>, Counter> = Family::default();
        let a = vec![("route", "a".to_string())];
        f.get_or_create(&a).inc();
        f.get_or_create(&a).inc_by(2);
        assert_eq!(f.len(), 1);
        assert!(f.contains(&a));
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register("hits", "Hits", f.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("hits_total{route=\"a\"} 3\n"), "{text}");
        assert!(f.remove(&a));
        assert!(!f.remove(&a));
        assert!(f.is_empty());
    }
}

//! Chain mechanics without sockets.

use super::*;

#[derive(Debug)]
struct Tracks;

impl HttpFilter for Tracks {
    fn wants_completion(&self) -> bool {
        true
    }
}

#[test]
fn the_chain_knows_whether_completion_is_tracked() {
    let metrics = crate::metrics::Metrics::new().listener("l");
    let identity = || {
        Identity::new(
            &Default::default(),
            None,
            Arc::new(crate::route::RouteTable::empty("t")),
            metrics.clone(),
        )
    };
    assert!(!FilterChain::standard(&[], identity(), true, &metrics, None).wants_completion());
    let with: Vec<Arc<dyn HttpFilter>> = vec![Arc::new(Tracks)];
    assert!(FilterChain::standard(&with, identity(), false, &metrics, None).wants_completion());
}

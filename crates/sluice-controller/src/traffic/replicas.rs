//! No traffic router: the split follows the pod counts the plan scales to, through the Services
//! that select both versions' pods.

use sluice_engine::release::Traffic;

use super::TrafficRouter;
use crate::Context;
use crate::cache::{Caches, Reference};
use crate::error::Error;

/// The split by replica counts: nothing to check, nothing to write.
pub struct Replicas;

impl TrafficRouter for Replicas {
    fn references(&self, _rollout: &str) -> Vec<Reference> {
        Vec::new()
    }

    fn check(&self, _caches: &Caches, _namespace: &str, _rollout: &str) -> Result<(), String> {
        Ok(())
    }

    async fn set_weight(
        &self,
        _ctx: &Context,
        _namespace: &str,
        _rollout: &str,
        _traffic: &Traffic,
    ) -> Result<(), Error> {
        Ok(())
    }
}

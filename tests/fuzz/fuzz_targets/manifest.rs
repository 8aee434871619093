//! Objects as a tenant writes them (Argo-style Rollouts, templates, runs, gates), read as the
//! controller reads them from the API server: no panic, whatever the JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<sluice_api::Rollout>(data);
    let _ = serde_json::from_slice::<sluice_api::analysis::AnalysisTemplate>(data);
    let _ = serde_json::from_slice::<sluice_api::analysis::AnalysisRun>(data);
    let _ = serde_json::from_slice::<sluice_api::ErrorBudgetGate>(data);
});

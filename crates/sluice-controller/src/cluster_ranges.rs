//! The cluster's own address ranges, which names allowed by an in-cluster pattern of the address
//! policy (`*.svc`) must resolve into: named by `--cluster-address-range`, or discovered from the
//! API (the ServiceCIDRs, and the pod ranges the nodes were given) and read again every ten
//! minutes, as nodes come and go.
//!
//! Pods whose addresses come from a network plugin's own pools (not the nodes' `podCIDRs`) are not
//! found this way: a headless Service's name resolves to them and is refused, saying so, until the
//! operator names their range.

use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::Client;
use kube::api::{Api, ListParams};
use sluice_analysis::ClusterRanges;

/// How often the ranges are read again.
const REFRESH: Duration = Duration::from_secs(600);

/// Keeps `ranges` up to date from the API, in the background.
pub fn spawn_discovery(client: Client, ranges: Arc<ClusterRanges>) {
    tokio::spawn(async move {
        let mut found_once = false;
        loop {
            match discover(&client).await {
                Ok(found) => {
                    if !found_once {
                        let shown: Vec<String> = found.iter().map(ToString::to_string).collect();
                        tracing::info!(ranges = %shown.join(", "), "the cluster's address ranges");
                    }
                    found_once = true;
                    ranges.set(Ok(found));
                }
                // Ranges found before are kept: a failed refresh does not shut every in-cluster
                // name out. Until one succeeds, runs that name one say this.
                Err(why) if !found_once => {
                    tracing::warn!(%why, "the cluster's address ranges could not be discovered");
                    ranges.set(Err(why));
                }
                Err(why) => {
                    tracing::warn!(%why, "the cluster's address ranges could not be read again");
                }
            }
            // Sooner while nothing is known.
            let wait = if found_once {
                REFRESH
            } else {
                Duration::from_secs(30)
            };
            tokio::time::sleep(wait).await;
        }
    });
}

/// The ServiceCIDRs' ranges and the nodes' pod ranges.
async fn discover(client: &Client) -> Result<Vec<IpNet>, String> {
    let mut ranges = Vec::new();
    let cidrs: Api<ServiceCIDR> = Api::all(client.clone());
    let listed = cidrs
        .list(&ListParams::default())
        .await
        .map_err(|err| format!("the cluster's ServiceCIDRs could not be listed ({err})"))?;
    for cidr in listed.items {
        for text in cidr.spec.and_then(|s| s.cidrs).unwrap_or_default() {
            ranges.extend(text.parse::<IpNet>().ok());
        }
    }
    if ranges.is_empty() {
        return Err("the cluster has no ServiceCIDR".to_owned());
    }
    let nodes: Api<Node> = Api::all(client.clone());
    let mut params = ListParams::default().limit(500);
    loop {
        let page = nodes
            .list(&params)
            .await
            .map_err(|err| format!("the nodes could not be listed ({err})"))?;
        for node in &page.items {
            let spec = node.spec.as_ref();
            let cidrs = spec.and_then(|s| s.pod_cidrs.clone()).unwrap_or_default();
            let single = spec.and_then(|s| s.pod_cidr.clone());
            for text in cidrs.into_iter().chain(single) {
                ranges.extend(text.parse::<IpNet>().ok());
            }
        }
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => break,
        }
    }
    ranges.sort();
    ranges.dedup();
    Ok(IpNet::aggregate(&ranges))
}

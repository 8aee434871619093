//! End-to-end tests on a real control plane. One binary, so the suite shares one cluster.

mod analysis;
mod api;
mod bluegreen;
mod canary;
mod chaos;
mod chart;
mod cluster;
mod faults;
mod gate;
mod hostile;
mod isolated;
mod job;
mod leader;
mod migrate;
mod operator;
mod plugin;
mod requests;
mod routers;
mod shadow;
mod slo_history;
mod startup;
mod tenancy;
mod traffic;
mod validation;
mod web;
mod workload;

//! paperpost: mails each day's trending research papers to subscribers as
//! personalized digests. See README.md for the tour.
//!
//! Data flows one way: ingest → store → digest → mailer → delivery → store.

pub mod app;
pub mod autopilot;
pub mod bounce;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod delivery;
pub mod digest;
pub mod domain;
pub mod ingest;
pub mod links;
pub mod lock;
pub mod mailer;
pub mod metrics;
pub mod schedule;
pub mod security;
pub mod store;
pub mod systemd;
pub mod telemetry;
pub mod web;

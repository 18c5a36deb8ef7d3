//! The integration tests: one binary, one module per area (as zero2prod's
//! `tests/api`), sharing the helpers in `support`.

mod support;

mod bounces;
mod browser;
mod clicks;
mod cluster;
mod config;
mod delivery;
mod digest;
mod dkim;
mod e2e;
mod fetch;
mod lifecycle;
mod links;
mod lock;
mod operate;
mod operations;
mod papers;
mod postfix;
mod preview;
mod promises;
mod readme;
mod subscribers;
mod tls;
mod web;

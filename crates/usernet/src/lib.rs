//! The parts of the `usernet` binary that are pure functions of bytes, as
//! a library so the fuzz targets (`fuzz/fuzz_targets/api.rs`) and tests
//! can reach them: the slirp4netns JSON API ([`api`]), the tables of
//! `usernet flows`/`stats`/`guests` ([`show`]) and the Prometheus
//! exposition and its HTTP request parsing ([`metrics`]). Everything that
//! touches sockets or the command line stays in the binary (`main.rs`).
pub mod api;
pub mod metrics;
pub mod show;
#[cfg(test)]
mod testing;

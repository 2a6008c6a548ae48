//! sim: `tandem sim`, the sizing calibration and the failure simulator.
//!
//! - [`calibrate`]: runs the real store and fsdb on this machine and writes a
//!   [`Profile`] of per-sample costs (CPU, memory, disk, query, resync);
//! - [`size`]: nodes, RAM, disk and CPU for a load, from a profile;
//! - [`failures`]: a Monte-Carlo simulation of node and host failures over
//!   the real placement ([`controller::place`]), with repair times from the
//!   calibrated resync rate;
//! - [`placement`]: balance and movement figures of the real placement code;
//! - [`logmodel`]: the partition log's segment policy, replayed to predict
//!   its disk and resident bytes.

pub mod calibrate;
pub mod error;
pub mod failures;
pub mod logmodel;
pub mod measure;
pub mod placement;
pub mod plot;
pub mod profile;
pub mod size;
pub mod workload;

pub use error::{Error, Result};
pub use profile::Profile;

/// Node `id` (1-based) lives on host `h<(id - 1) % hosts + 1>`, as `tandem up` places them.
pub fn host_of(node: u32, hosts: u32) -> String {
    format!("h{}", (node - 1) % hosts.max(1) + 1)
}

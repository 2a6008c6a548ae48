//! sim: `tandem sim`, the sizing calibration and the failure simulator.

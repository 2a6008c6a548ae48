//! store: one node's in-memory data (partitions, series, compressed chunks) and the PromQL engine.

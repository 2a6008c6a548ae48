//! controller: placement, the cluster map, membership and failover as a pure state machine.

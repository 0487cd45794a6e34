//! Simulated m0d processes.

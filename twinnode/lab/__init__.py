"""The lab: real-process clusters, simulated (non-DP) twins, fidelity measures, the demo and
its figures; used by tests, scripts and `twinnode demo`, never by a node."""

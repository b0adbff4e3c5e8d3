"""The training coordinator.  Deliberately empty: workers import only coordinator.protocol
(and coordinator.refusals through it) and coordinator.keys, without the coordinator's own code."""

"""The training coordinator.  Deliberately empty: workers import coordinator.protocol alone."""

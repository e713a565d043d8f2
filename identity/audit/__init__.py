"""The tamper-evident audit log: a hash chain of events with signed checkpoints."""

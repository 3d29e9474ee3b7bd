"""The tamper-evident access log: records, hash chains, signed checkpoints,
verification, the auditors' queries, exports, and reconciliation with Vault."""

-- Each tenant's hourly cap of distinct patients released (all its accounts
-- together). Kept in the database, next to the ledger it bounds, so the gate,
-- `vault-setup` (which sizes Vault's own unwrap quota from it) and the database
-- itself agree on one figure. `sealednotes migrate` fills existing tenants from
-- SEALEDNOTES_TENANT_RELEASE_PER_HOUR.
ALTER TABLE tenants ADD COLUMN release_per_hour integer CHECK (release_per_hour > 0);

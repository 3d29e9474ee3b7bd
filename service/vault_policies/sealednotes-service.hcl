# Vault / OpenBao policy for the Sealed Notes service (the API workers).
#
# Least privilege: the service may only do what the API workers do with its
# Transit keys (new data keys, one unwrap per request, the blind index, audit
# checkpoint signatures) and never manage them: no batch requests, no encrypt,
# no rewrap, no key metadata, no export, no backup, no create, delete, rotate or
# config. Management belongs to ops (sealednotes-ops.hcl); export and backup
# belong to nobody. A token with this policy is what an attacker gets by
# stealing the service's credentials: Vault's unwrap quota bounds it, and
# Vault's audit device records every unwrap (`sealednotes audit reconcile`).
#
# Key names (service/adapters/vault.py):
#   sealednotes-dek-<tenant_id>    aes256-gcm96, derived=true: wraps patient data keys
#   sealednotes-index-<tenant_id>  used only through HMAC: blind index of patient identifiers
#   sealednotes-audit              ed25519: signs audit-log checkpoints
#
# MOUNT PATH: every path below assumes the Transit engine is mounted at
# `transit` (the default of SEALEDNOTES_VAULT_MOUNT). If you set
# SEALEDNOTES_VAULT_MOUNT to something else, replace the leading `transit/`
# in every path of this file (and of sealednotes-ops.hcl) with that mount.
#
# Glob semantics to keep in mind when editing: `*` is only special as the LAST
# character of a path and then matches any suffix, slashes included (a `*` in
# the middle of a path is a literal character). `+` matches exactly one whole
# path segment and cannot be combined with a prefix such as `sealednotes-+`.
#
# Attach this policy alone: create the service's token / AppRole with
# no_default_policy (token_no_default_policy=true) so it holds nothing else.

# -- patient data keys: sealednotes-dek-<tenant> ------------------------------------

# New patient: Transit generates a 256-bit data key and returns it both in
# plaintext (used once, in memory) and wrapped under the tenant key with the
# tenant+patient derivation context.
path "transit/datakey/plaintext/sealednotes-dek-*" {
  capabilities = ["update"]
}

# Key release: unwrap ONE patient's wrapped data key per request (the derivation
# context must match, so a wrapped key only unwraps for its own patient).
# Batch requests are refused: the workers never send them, and with them the
# service's credentials would unwrap tens of thousands of keys per second.
# Each tenant's decrypt path also carries a Vault rate-limit quota
# (sys/quotas/rate-limit/sealednotes-unwrap-<tenant>, written by vault-setup and
# `tenants create`): Vault's own unwrap budget (counted in 3-minute windows),
# whoever holds this policy.
# Only the two parameters the workers send: an unknown parameter's name would be
# logged in clear by Vault's audit device, and a huge one could make that log line
# unreadable to `audit reconcile`.
path "transit/decrypt/sealednotes-dek-*" {
  capabilities = ["update"]
  allowed_parameters = {
    "ciphertext" = []
    "context"    = []
  }
  denied_parameters = {
    "batch_input" = []
  }
}

# Deliberately NOT granted: transit/encrypt (the service wraps keys only through
# datakey) and transit/rewrap (key rotation belongs to ops, sealednotes-ops.hcl).

# -- blind index: sealednotes-index-<tenant> -----------------------------------------

# HMAC of a patient external identifier (MRN, SSN) so it can be looked up
# without being stored, one identifier per request (no batch: mass hashing of
# candidate identifiers is what an attacker holding a dump would want). The
# trailing glob also covers the URL form transit/hmac/<key>/<algorithm>.
path "transit/hmac/sealednotes-index-*" {
  capabilities = ["update"]
  denied_parameters = {
    "batch_input" = []
  }
}

# -- audit checkpoints: sealednotes-audit --------------------------------------------

# Sign audit-log checkpoints (one at a time) and verify them in `audit verify`
# (ed25519; no hash-algorithm suffix is used, so the exact paths suffice).
path "transit/sign/sealednotes-audit" {
  capabilities = ["update"]
  denied_parameters = {
    "batch_input" = []
  }
}

path "transit/verify/sealednotes-audit" {
  capabilities = ["update"]
}

# Key metadata (versions, min_decryption_version) is ops' business
# (`keys status`, rotation): the workers never read it, so it is not granted.

# -- the token itself ------------------------------------------------------------------

# Keep a long-lived service token alive and let the client inspect its own TTL.
path "auth/token/renew-self" {
  capabilities = ["update"]
}

path "auth/token/lookup-self" {
  capabilities = ["read"]
}

# -- readiness -------------------------------------------------------------------------

# /readyz checks that Vault is reachable, initialised and unsealed.
# (sys/health is also served without a token; granting read is harmless.)
path "sys/health" {
  capabilities = ["read"]
}

# Deliberately absent (so refused): transit/encrypt/*, transit/rewrap/*,
# transit/keys/* (read, create, rotate, config, trim, import, delete),
# transit/export/*, transit/backup/*, transit/restore*, sys/policies/*,
# sys/mounts/*, sys/quotas/*, auth/approle/*.

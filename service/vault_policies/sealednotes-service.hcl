# Vault / OpenBao policy for the Sealed Notes service (the API workers).
#
# Least privilege (DESIGN.md P3, P13): the service may USE its Transit keys
# (wrap/unwrap patient data keys, compute the blind index, sign audit
# checkpoints) but never manage them: no export, no backup, no create, delete,
# rotate or config. Those belong to ops (sealednotes-ops.hcl), and export and
# backup belong to nobody.
#
# Key names (service/vault.py):
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

# Key release: unwrap a patient's wrapped data key (derivation context must
# match, so a wrapped key only unwraps for its own patient).
path "transit/decrypt/sealednotes-dek-*" {
  capabilities = ["update"]
}

# Wrap a locally generated data key (alternative to datakey, same key).
path "transit/encrypt/sealednotes-dek-*" {
  capabilities = ["update"]
}

# Re-encrypt wrapped keys under the newest key version without ever seeing the
# plaintext (the batched rewrap phase of `sealednotes keys rotate`).
path "transit/rewrap/sealednotes-dek-*" {
  capabilities = ["update"]
}

# -- blind index: sealednotes-index-<tenant> -----------------------------------------

# HMAC of a patient external identifier (MRN, SSN) so it can be looked up
# without being stored. The service passes the algorithm in the request body
# (POST transit/hmac/<key>); the second path covers the URL form
# transit/hmac/<key>/<algorithm>. (The trailing glob of the first path already
# matches that form too; the second line is kept to make the intent explicit.)
path "transit/hmac/sealednotes-index-*" {
  capabilities = ["update"]
}

path "transit/hmac/sealednotes-index-*/*" {
  capabilities = ["update"]
}

# -- audit checkpoints: sealednotes-audit --------------------------------------------

# Sign audit-log checkpoints and verify them in `audit verify` (ed25519; no
# hash-algorithm suffix is used, so the exact paths suffice).
path "transit/sign/sealednotes-audit" {
  capabilities = ["update"]
}

path "transit/verify/sealednotes-audit" {
  capabilities = ["update"]
}

# -- key metadata ----------------------------------------------------------------------

# Read key metadata (latest_version, min_decryption_version, public key of the
# audit key) for `keys status` and to tag wrapped keys with their version.
# `read` only: creating (POST transit/keys/<name>), rotating
# (.../rotate), configuring (.../config), trimming and deleting all need other
# capabilities, which this policy does not grant. Reading a key never returns
# its secret material.
path "transit/keys/sealednotes-*" {
  capabilities = ["read"]
}

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

# Deliberately absent (so refused): transit/export/*, transit/backup/*,
# transit/restore*, transit/keys/* create/update/delete (create, rotate,
# config, trim, import), sys/policies/*, sys/mounts/*, auth/approle/*.

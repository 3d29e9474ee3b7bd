# Vault / OpenBao policy for Sealed Notes operators (`sealednotes vault-setup`,
# `sealednotes tenants create`, `sealednotes keys rotate [--retire-old]`,
# `sealednotes keys status`).
#
# Ops create, rotate and retire Transit key versions, rewrap data keys, and
# set up the mount, the policies and the service's AppRole. Ops never get key
# material: export and backup are denied, and no policy grants `delete` on a
# Transit key (docs/architecture.md: P3, P11, P13).
#
# MOUNT PATH: every path below assumes the Transit engine is mounted at
# `transit` (the default of SEALEDNOTES_VAULT_MOUNT). If you set
# SEALEDNOTES_VAULT_MOUNT to something else, replace the leading `transit/`
# in every path of this file and of sealednotes-service.hcl, and
# `sys/mounts/transit` below, with that mount.
#
# How Vault picks a rule: an exact path beats any glob; among globs the more
# specific one wins (the wildcard that starts later, then the longer path).
# `*` is only special as the LAST character (a `*` in the middle of a path,
# e.g. `transit/keys/sealednotes-*/rotate`, is a literal character and would
# match nothing), and `+` matches one whole segment only (`sealednotes-+` is
# not a pattern). So key sub-paths (rotate, config, trim, import) cannot be
# granted one by one for a name prefix: they all fall under
# `transit/keys/sealednotes-*`, and that rule restricts their PARAMETERS
# instead (see below).
#
# `deny` in Vault is not per capability: it refuses every operation on the
# path it is attached to, and wins over any grant on the same path string in
# any other policy.
#
# WARNING: the grants on sys/policies/acl/sealednotes-* and on the AppRole
# role let the holder write a policy and mint credentials carrying it, which
# is equivalent to granting oneself anything Vault allows under those names.
# Use this policy for the one-time setup and for rotation by trusted
# operators; in a stricter deployment move the last section (policies and
# AppRole) into a separate bootstrap policy held by the Vault administrators.

# -- Transit keys: create, read metadata, rotate, retire old versions -------------

# Covers, for every key named sealednotes-*:
#   POST transit/keys/<name>          create (vault-setup, tenants create)  [create/update]
#   GET  transit/keys/<name>          metadata: versions, min_decryption_version [read]
#   POST transit/keys/<name>/rotate   new key version (keys rotate)         [update]
#   POST transit/keys/<name>/config   min_decryption_version (keys rotate --retire-old) [update]
# and, because of the trailing glob, also trim/import/import_version, which
# the parameter rules below make unusable.
# DELETE is not granted here, so deleting a sealednotes key is refused for
# ops. Keys are also created with deletion_allowed=false (the Transit
# default, never changed by service/adapters/vault.py), so even a root token cannot
# delete them without first reconfiguring the key.
path "transit/keys/sealednotes-*" {
  capabilities = ["create", "update", "read"]

  # Keys stay non-exportable, without plaintext backup, and undeletable:
  # these flags may only ever be sent as false (on create or config).
  # Transit makes exportable/allow_plaintext_backup one-way once true.
  allowed_parameters = {
    "*"                      = []
    "exportable"             = [false]
    "allow_plaintext_backup" = [false]
    "deletion_allowed"       = [false]
  }

  # No BYOK import of attacker-known key material
  # (keys/<name>/import and keys/<name>/import_version take `ciphertext`), and
  # no trim (keys/<name>/trim takes `min_available_version` and destroys old
  # key versions for ever; retiring with min_decryption_version is reversible).
  denied_parameters = {
    "ciphertext"            = []
    "min_available_version" = []
  }
}

# `keys status`: list key names (LIST transit/keys). Exact path, so it beats
# the deny below.
path "transit/keys" {
  capabilities = ["list"]
}

# Any Transit key outside the sealednotes- prefix: nothing, delete included.
# (For sealednotes-* keys the more specific rule above applies, and it grants
# no delete.)
path "transit/keys/*" {
  capabilities = ["deny"]
}

# -- rewrap: `sealednotes keys rotate` -------------------------------------------------

# Re-encrypt every wrapped patient key under the newest key version, in
# batches, without seeing a plaintext key.
# Check audit checkpoints (`sealednotes audit verify`); signing stays with the service.
path "transit/verify/sealednotes-audit" {
  capabilities = ["update"]
}

path "transit/rewrap/sealednotes-dek-*" {
  capabilities = ["update"]
}

# -- never: key material ---------------------------------------------------------------

# Export of key material (transit/export/<type>/<name>[/<version>]).
path "transit/export/*" {
  capabilities = ["deny"]
}

# Backup (a backup contains every key version in the clear).
path "transit/backup/*" {
  capabilities = ["deny"]
}

# Restore (could replace a key with known material).
path "transit/restore" {
  capabilities = ["deny"]
}

path "transit/restore/*" {
  capabilities = ["deny"]
}

# -- mount -----------------------------------------------------------------------------

# vault-setup checks whether the mount exists (GET sys/mounts) ...
path "sys/mounts" {
  capabilities = ["read"]
}

# ... and enables the Transit engine there if not.
path "sys/mounts/transit" {
  capabilities = ["create", "update", "read"]
}

# Tune the mount so Vault's audit device logs each request's derivation context
# in clear (tenant + patient ids: `audit reconcile` needs them). Only that key:
# logging response keys in clear (`audit_non_hmac_response_keys`) would put
# unwrapped patient keys into the audit log, so no other parameter is allowed.
path "sys/mounts/transit/tune" {
  capabilities = ["read", "update"]
  # The allowed value is the whole list ["context"] (a list of allowed lists).
  allowed_parameters = {
    "audit_non_hmac_request_keys" = [["context"]]
  }
}

# -- Vault's own unwrap budget: one rate-limit quota per tenant -------------------------

# sys/quotas/rate-limit/sealednotes-unwrap-<tenant> on
# transit/decrypt/sealednotes-dek-<tenant> (vault-setup, tenants create,
# tenants set-cap). Ops size it; the service cannot touch it.
path "sys/quotas/rate-limit/sealednotes-unwrap-*" {
  capabilities = ["create", "update", "read"]
}

# -- policies and the service's AppRole (see WARNING above) ----------------------------

# Write sealednotes-service / sealednotes-ops from deploy/vault/*.hcl.
path "sys/policies/acl/sealednotes-*" {
  capabilities = ["create", "update", "read"]
}

# List enabled auth methods, to see whether approle is already enabled.
path "sys/auth" {
  capabilities = ["read"]
}

# Enable the AppRole auth method. Vault requires `sudo` to enable any auth
# method; limited to this one path.
path "sys/auth/approle" {
  capabilities = ["create", "update", "read", "sudo"]
}

# The service's AppRole role, its role-id (.../role-id) and new secret-ids
# (.../secret-id) for SEALEDNOTES_VAULT_ROLE_ID / SEALEDNOTES_VAULT_SECRET_ID.
path "auth/approle/role/sealednotes-service*" {
  capabilities = ["create", "update", "read"]
}

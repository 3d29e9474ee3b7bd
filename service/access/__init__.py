"""Who may do what: authentication (opaque tokens, IdP JWTs, SMART clients), the
key-release gate with its budgets, limits on every role, two-person approvals."""

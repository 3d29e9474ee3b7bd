"""Patients, their care teams and break-glass access."""

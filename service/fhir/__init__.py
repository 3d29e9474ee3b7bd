"""FHIR R4 resources for the facade (DocumentReference, Patient, CapabilityStatement)."""

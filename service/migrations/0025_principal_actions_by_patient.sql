-- "Has this principal already written to this patient in the last hour?" is the
-- common question of the write limit (a repeat is free): answered from this index
-- without counting the hour's distinct patients.
CREATE INDEX principal_actions_patient ON principal_actions (principal_id, kind, patient_id, at);

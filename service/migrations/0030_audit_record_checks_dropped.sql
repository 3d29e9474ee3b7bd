-- The audit log's CHECK constraints go. PostgreSQL re-reads every CHECK expression from
-- the catalogue's text form and compiles it again for each INSERT statement: on this
-- table, a single-record statement (every record an API request writes), that was about
-- a fifth of the append's database work (measured with callgrind: ~90,000 of ~450,000
-- instructions per record; one combined CHECK still cost ~77,000).
--
-- They guarded nothing an attacker could reach. Records get in only through the two
-- append functions (the service's role has no INSERT on the table: P8, P16), which
-- compute the values the checks held: the shard (0-15, from the caller's preference
-- modulo 16), the sequence (the shard's last + 1), the previous hash (the shard's last,
-- or 32 zero bytes) and the hash (a SHA-256). Whoever can insert rows directly (the
-- schema owner, a superuser) could drop the constraints too. And `audit verify` checks
-- each of these on every record it reads: an unknown shard, a gap or repeat in a
-- sequence, a previous hash that is not the predecessor's and a hash that does not
-- match the record are all reported (tests/security/test_audit_log_tampering.py,
-- test_database_books_audit_records.py), by an incremental verification too: it also
-- reads a verified shard's records numbered below 1 (test_audit_log_incremental.py).
--
-- Dropping a constraint is instant but takes the table's exclusive lock, and every
-- request's audit append would queue behind a migration waiting for a long reader (an
-- export, a full verify): wait 5 s at most, then fail (run `migrate` again later). The
-- setting lasts to the end of the migration's transaction.
SET LOCAL lock_timeout = '5s';
ALTER TABLE audit_events
    DROP CONSTRAINT IF EXISTS audit_events_known_shard,
    DROP CONSTRAINT IF EXISTS audit_events_shard_check,
    DROP CONSTRAINT IF EXISTS audit_events_seq_check,
    DROP CONSTRAINT IF EXISTS audit_events_prev_hash_check,
    DROP CONSTRAINT IF EXISTS audit_events_hash_check;

-- UPDATE OR REPLACE of an open ledger entry onto a closed entry's id deletes the closed one (REPLACE
-- fires no DELETE trigger unless the connection turned recursive_triggers on), and erasures_closed
-- guards only the row being updated: a plain connection could open an entry, delete rows, and move
-- its entry onto the last closed one, leaving the ledger as it was. An entry's id never changes.
-- Not `UPDATE OF id`: a SET of its rowid alias (`rowid`, `oid`, `_rowid_`) would not fire it.
CREATE TRIGGER erasures_id_kept BEFORE UPDATE ON erasures WHEN NEW.id IS NOT OLD.id
BEGIN SELECT RAISE(ABORT, 'the erasure ledger is append-only'); END;

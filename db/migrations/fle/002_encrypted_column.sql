-- pii-fle: a column derived from the plaintext (the ciphertext
-- <column>_enc, or the blind index <column>_bidx) beside the plaintext one,
-- and a trigger that keeps it honest during the dual-write period: an
-- UPDATE that changes the plaintext (or the row's context, which a derived
-- key's ciphertext is bound to) without writing the derived column too
-- clears it, so a stale value can never survive an application's write;
-- the next `pii-fle backfill` recomputes exactly those rows.
-- The comparison is byte-exact (COLLATE "C": a case-insensitive type or
-- collation must not hide a change) and sits in the trigger's WHEN clause,
-- which PostgreSQL evaluates without calling the function: the backfill's
-- own writes (plaintext unchanged) cost no function call per row. Its names
-- were resolved when pii-fle created it (search_path pg_catalog); the
-- function resolves names only in pg_catalog too; the trigger fires in
-- replica sessions as well.
-- Placeholders (in double braces; quoted identifiers): table, column,
-- derived, context_changed (empty, or an OR on the context column),
-- function, trigger.
ALTER TABLE {{table}} ADD COLUMN IF NOT EXISTS {{derived}} text;
CREATE OR REPLACE FUNCTION {{function}}() RETURNS trigger LANGUAGE plpgsql
    SET search_path = pg_catalog AS $fle$
BEGIN
    -- The trigger's WHEN clause decided: the plaintext (or the context)
    -- changed and the derived column did not.
    NEW.{{derived}} := NULL;
    RETURN NEW;
END
$fle$;
DROP TRIGGER IF EXISTS {{trigger}} ON {{table}};
CREATE TRIGGER {{trigger}} BEFORE UPDATE ON {{table}} FOR EACH ROW
    WHEN ((NEW.{{column}}::text COLLATE "C" IS DISTINCT FROM OLD.{{column}}::text COLLATE "C"{{context_changed}})
          AND NEW.{{derived}} IS NOT DISTINCT FROM OLD.{{derived}})
    EXECUTE FUNCTION {{function}}();
ALTER TABLE {{table}} ENABLE ALWAYS TRIGGER {{trigger}};

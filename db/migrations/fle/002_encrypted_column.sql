-- pii-fle: the encrypted column beside the plaintext one, and a trigger
-- that keeps it honest during the dual-write period: an UPDATE that changes
-- the plaintext without writing the ciphertext too clears the ciphertext,
-- so a stale ciphertext can never survive an application's write; the next
-- `pii-fle backfill` encrypts exactly those rows.
-- Placeholders (quoted identifiers): {{table}} {{column}} {{enc}} {{function}} {{trigger}}.
ALTER TABLE {{table}} ADD COLUMN IF NOT EXISTS {{enc}} text;
CREATE OR REPLACE FUNCTION {{function}}() RETURNS trigger LANGUAGE plpgsql AS $fle$
BEGIN
    IF NEW.{{column}} IS DISTINCT FROM OLD.{{column}}
       AND NEW.{{enc}} IS NOT DISTINCT FROM OLD.{{enc}} THEN
        NEW.{{enc}} := NULL;
    END IF;
    RETURN NEW;
END
$fle$;
DROP TRIGGER IF EXISTS {{trigger}} ON {{table}};
CREATE TRIGGER {{trigger}} BEFORE UPDATE ON {{table}}
    FOR EACH ROW EXECUTE FUNCTION {{function}}();

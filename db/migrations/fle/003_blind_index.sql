-- pii-fle: an optional blind index (Transit HMAC of the plaintext) for
-- equality lookups on the encrypted column, cleared like the ciphertext
-- when the plaintext changes without it.
-- Placeholders (quoted identifiers): {{table}} {{column}} {{bidx}} {{index}} {{function}} {{trigger}}.
ALTER TABLE {{table}} ADD COLUMN IF NOT EXISTS {{bidx}} text;
CREATE INDEX IF NOT EXISTS {{index}} ON {{table}} ({{bidx}});
CREATE OR REPLACE FUNCTION {{function}}() RETURNS trigger LANGUAGE plpgsql AS $fle$
BEGIN
    IF NEW.{{column}} IS DISTINCT FROM OLD.{{column}}
       AND NEW.{{bidx}} IS NOT DISTINCT FROM OLD.{{bidx}} THEN
        NEW.{{bidx}} := NULL;
    END IF;
    RETURN NEW;
END
$fle$;
DROP TRIGGER IF EXISTS {{trigger}} ON {{table}};
CREATE TRIGGER {{trigger}} BEFORE UPDATE ON {{table}}
    FOR EACH ROW EXECUTE FUNCTION {{function}}();

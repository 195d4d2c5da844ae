-- pii-fle: the optional blind index (Transit HMAC of the plaintext) for
-- equality lookups on the encrypted column. Its column and trigger come from
-- 002_encrypted_column.sql (the same rule as the ciphertext); this adds the
-- index. Placeholders (in double braces; quoted identifiers): table, bidx,
-- index.
CREATE INDEX IF NOT EXISTS {{index}} ON {{table}} ({{bidx}});

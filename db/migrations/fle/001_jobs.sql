-- pii-fle: one row per migration job (backfill, rotation, verify) of one
-- column. A batch's row writes and its checkpoint commit in one
-- transaction, so after a crash at any point the checkpoint and the table
-- agree. Applied by every pii-fle command that writes; idempotent.
-- Placeholder (in double braces): jobs, the table schema-qualified
-- ("app".pii_fle_jobs), in the migrated table's schema.
CREATE TABLE IF NOT EXISTS {{jobs}} (
    job          text PRIMARY KEY,          -- e.g. backfill:public.users.email
    kind         text NOT NULL,             -- backfill | rotate | verify
    state        text NOT NULL,             -- running | done | failed | passed
    last_pk      text,                      -- keyset position of the current pass
    pass         integer NOT NULL DEFAULT 1,
    rows_done    bigint NOT NULL DEFAULT 0,
    rows_skipped bigint NOT NULL DEFAULT 0, -- changed by an application between read and write
    from_version integer,                   -- rotate: latest version before the rotation
    to_version   integer,                   -- rotate: the version every row is rewrapped to
    detail       jsonb,
    started_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);

//! `pii-fle` against this machine's real PostgreSQL and the real sidecar +
//! enclave (and a real OpenBao): backfill, verify, rotation, cut-over;
//! `kill -9` at random points; an application writing during the
//! migration; bad input and failing dependencies.
//!
//! Why this size: one end-to-end scenario per test against real PostgreSQL and two Transit servers; the shared set-up lives in `pii_tests`.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use pii_tests::{b64, Client, OpenBao, PgDb, Stack, ROOT_TOKEN};
use serde_json::json;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn command(
    bins: &std::path::Path,
    db: &PgDb,
    vault: &str,
    args: &[&str],
) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(bins.join("pii-fle"));
    c.args(args)
        .args(["--table", "users", "--column", "email", "--quiet"])
        .env("DATABASE_URL", db.url())
        .env("VAULT_ADDR", vault)
        .env("VAULT_TOKEN", ROOT_TOKEN)
        .env("PII_FLE_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    c
}

async fn fle(bins: &std::path::Path, db: &PgDb, vault: &str, args: &[&str]) -> Out {
    let out = command(bins, db, vault, args).output().await.unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `users(id bigint primary key, email text, name text)` with `n` rows.
async fn users(db: &PgDb, n: i64) -> tokio_postgres::Client {
    let c = db.connect().await;
    c.batch_execute(&format!(
        "CREATE TABLE users (id bigint PRIMARY KEY, email text, name text, age integer);
         INSERT INTO users SELECT i, 'user' || i || '@example.com', 'User ' || i, 30
         FROM generate_series(1, {n}) i;
         UPDATE users SET email = NULL WHERE id % 997 = 0;"
    ))
    .await
    .unwrap();
    c
}

async fn count(c: &tokio_postgres::Client, sql: &str) -> i64 {
    c.query_one(sql, &[]).await.unwrap().get(0)
}

/// Decrypts `ct` through Transit with the row id as context (or none).
async fn decrypt(t: &Client, key: &str, ct: &str, ctx: Option<&str>) -> String {
    let mut body = json!({ "ciphertext": ct });
    if let Some(c) = ctx {
        body["context"] = json!(b64(c.as_bytes()));
    }
    let r = t.post(&format!("transit/decrypt/{key}"), body).await;
    assert_eq!(r.status, 200, "{r:?}");
    String::from_utf8(pii_tests::unb64(r.data("plaintext").as_str().unwrap())).unwrap()
}

/// Rows with a ciphertext, whether or not the column exists yet.
const ENCRYPTED_ROWS: &str =
    "SELECT count(*) FROM users WHERE to_jsonb(users)->>'email_enc' IS NOT NULL";

fn bins() -> PathBuf {
    pii_tests::binaries()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_verify_rotate_and_cut_over_through_the_sidecar() {
    let bins = bins();
    let stack = Stack::start().await;
    let t = stack.client();
    let db = PgDb::create().await;
    let c = users(&db, 20_000).await;
    let with_email = count(&c, "SELECT count(*) FROM users WHERE email IS NOT NULL").await;
    let r = t.post("transit/keys/pii", json!({"derived": true})).await;
    assert!(r.status < 300, "{r:?}");
    let args = ["--key", "pii", "--context-column", "id", "--blind-index"];
    let run = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut a = extra.to_vec();
        a.extend(args);
        a
    };
    let url = stack.url.clone();

    // Dry run: a sample round-trips; nothing is written, not even the column.
    // (A dry run creates nothing, not even the blind index's key.)
    let o = fle(
        &bins,
        &db,
        &url,
        &run(&["backfill", "--dry-run", "--create-key"]),
    )
    .await;
    assert!(
        o.code == 2 && o.stderr.contains("pii-bidx does not exist"),
        "{o:?}"
    );
    let r = t.post("transit/keys/pii-bidx", json!({})).await;
    assert!(r.status < 300, "{r:?}");
    let o = fle(&bins, &db, &url, &run(&["backfill", "--dry-run"])).await;
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stdout.contains("round-tripped, nothing written"), "{o:?}");
    assert_eq!(
        count(&c, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'email_enc'").await,
        0
    );

    // The backfill.
    let o = fle(&bins, &db, &url, &run(&["backfill"])).await;
    assert_eq!(o.code, 0, "{o:?}");
    assert!(
        o.stdout.contains(&format!("{with_email} rows encrypted")),
        "{o:?}"
    );
    assert_eq!(
        count(&c, "SELECT count(*) FROM users WHERE email IS NOT NULL AND (email_enc IS NULL OR email_bidx IS NULL)").await,
        0
    );
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM users WHERE email IS NULL AND email_enc IS NOT NULL"
        )
        .await,
        0
    );
    for id in [1i64, 4242, 20_000] {
        let row = c
            .query_one("SELECT email, email_enc FROM users WHERE id = $1", &[&id])
            .await
            .unwrap();
        let (email, enc): (String, String) = (row.get(0), row.get(1));
        assert!(enc.starts_with("vault:v1:"), "{enc}");
        assert!(!enc.contains("example.com"));
        assert_eq!(decrypt(&t, "pii", &enc, Some(&id.to_string())).await, email);
    }
    // The blind index finds a row by equality.
    let h = t
        .post(
            "transit/hmac/pii-bidx/sha2-256",
            json!({"input": b64(b"user77@example.com")}),
        )
        .await;
    let h = h.data("hmac").as_str().unwrap().to_owned();
    let found: i64 = c
        .query_one("SELECT id FROM users WHERE email_bidx = $1", &[&h])
        .await
        .unwrap()
        .get(0);
    assert_eq!(found, 77);
    let o = fle(&bins, &db, &url, &run(&["verify"])).await;
    assert_eq!(o.code, 0, "{o:?}");
    assert!(
        o.stdout
            .contains(&format!("{with_email} rows checked, {with_email} ok")),
        "{o:?}"
    );

    // Run again: nothing to do. An application changes a row without the
    // ciphertext: the trigger clears it, the next run encrypts that row only.
    let o = fle(&bins, &db, &url, &run(&["backfill"])).await;
    assert!(
        o.code == 0 && o.stdout.contains(": 0 rows encrypted"),
        "{o:?}"
    );
    c.batch_execute("UPDATE users SET email = 'changed@example.org' WHERE id = 5")
        .await
        .unwrap();
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM users WHERE email_enc IS NULL AND email IS NOT NULL"
        )
        .await,
        1
    );
    let before: Vec<String> = c
        .query(
            "SELECT email_enc FROM users WHERE id <> 5 AND email_enc IS NOT NULL ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let o = fle(&bins, &db, &url, &run(&["backfill"])).await;
    assert!(
        o.code == 0 && o.stdout.contains(": 1 rows encrypted"),
        "{o:?}"
    );
    let after: Vec<String> = c
        .query(
            "SELECT email_enc FROM users WHERE id <> 5 AND email_enc IS NOT NULL ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(before, after, "no other row was touched");

    // A hostile or broken store: one row holds another row's ciphertext.
    c.batch_execute(
        "UPDATE users SET email_enc = (SELECT email_enc FROM users WHERE id = 8) WHERE id = 7",
    )
    .await
    .unwrap();
    let o = fle(&bins, &db, &url, &run(&["verify"])).await;
    assert_eq!(o.code, 3, "{o:?}");
    assert!(
        o.stdout.contains("undecryptable: 1 (primary keys: 7)"),
        "{o:?}"
    );
    let o = fle(&bins, &db, &url, &run(&["cutover", "--drop-plaintext"])).await;
    assert_eq!(o.code, 3, "cut-over refused after a failed verify: {o:?}");
    c.batch_execute("UPDATE users SET email_enc = NULL WHERE id = 7")
        .await
        .unwrap();
    assert_eq!(fle(&bins, &db, &url, &run(&["backfill"])).await.code, 0);

    // Rotation: every row rewrapped to v2, v1 no longer decrypts.
    let o = fle(&bins, &db, &url, &run(&["rotate"])).await;
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stdout.contains("v1 → v2"), "{o:?}");
    assert!(o.stdout.contains(&format!("v2: {with_email}")), "{o:?}");
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM users WHERE email_enc LIKE 'vault:v1:%'"
        )
        .await,
        0
    );
    let k = t.get("transit/keys/pii").await;
    assert_eq!(k.data("min_decryption_version"), 2, "{k:?}");
    assert_eq!(k.data("latest_version"), 2, "{k:?}");
    let o = fle(&bins, &db, &url, &run(&["verify"])).await;
    assert_eq!(o.code, 0, "{o:?}");
    let o = fle(&bins, &db, &url, &run(&["status"])).await;
    assert!(
        o.stdout.contains(&format!("versions: v2: {with_email}")),
        "{o:?}"
    );
    assert!(o.stdout.contains("rotate: done"), "{o:?}");

    // Cut-over needs the explicit flag; then the plaintext is gone.
    let o = fle(&bins, &db, &url, &run(&["cutover"])).await;
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("--drop-plaintext"), "{o:?}");
    let o = fle(&bins, &db, &url, &run(&["cutover", "--drop-plaintext"])).await;
    assert_eq!(o.code, 0, "{o:?}");
    assert_eq!(
        count(&c, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'email'").await,
        0
    );
    // The application keeps working on the table (the triggers went with it).
    c.batch_execute("UPDATE users SET name = 'x' WHERE id = 1")
        .await
        .unwrap();
    db.drop_db().await;
}

/// A small deterministic generator (the seed is printed on failure).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_points_loses_nothing_and_writes_nothing_twice() {
    let bins = bins();
    let stack = Stack::start().await;
    let db = PgDb::create().await;
    let c = users(&db, 30_000).await;
    let with_email = count(&c, "SELECT count(*) FROM users WHERE email IS NOT NULL").await;
    // Count every write of a ciphertext, per row.
    c.batch_execute(
        "ALTER TABLE users ADD COLUMN email_enc text;
         CREATE TABLE enc_writes (id bigint NOT NULL);
         CREATE FUNCTION count_write() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.email_enc IS DISTINCT FROM OLD.email_enc AND NEW.email_enc IS NOT NULL THEN
                 INSERT INTO public.enc_writes VALUES (NEW.id);
             END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER count_write AFTER UPDATE ON users FOR EACH ROW EXECUTE FUNCTION count_write();",
    )
    .await
    .unwrap();
    let s = seed();
    let mut rng = Lcg(s);
    let args = [
        "backfill",
        "--key",
        "pii",
        "--create-key",
        "--batch",
        "250",
        "--in-flight",
        "3",
    ];
    let mut kills = 0;
    let mut finished_early = 0;
    while kills < 20 {
        let mut child = command(&bins, &db, &stack.url, &args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let wait = Duration::from_millis(40 + rng.next(700));
        match tokio::time::timeout(wait, child.wait()).await {
            Ok(st) => {
                // It finished before the kill: start over with rows to do.
                assert!(st.unwrap().success(), "seed {s}: a run failed");
                finished_early += 1;
                assert!(
                    finished_early < 15,
                    "seed {s}: the backfill is too fast to interrupt"
                );
                c.batch_execute("UPDATE users SET email_enc = NULL WHERE id % 2 = 0")
                    .await
                    .unwrap();
                c.batch_execute("DELETE FROM enc_writes WHERE id % 2 = 0")
                    .await
                    .unwrap();
            }
            Err(_) => {
                child.start_kill().unwrap(); // SIGKILL
                let st = child.wait().await.unwrap();
                assert!(!st.success());
                kills += 1;
            }
        }
    }
    let o = fle(&bins, &db, &stack.url, &args).await;
    assert_eq!(o.code, 0, "seed {s}: {o:?}");
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM users WHERE email IS NOT NULL AND email_enc IS NULL"
        )
        .await,
        0,
        "seed {s}: a row was left unencrypted"
    );
    let twice = count(
        &c,
        "SELECT count(*) FROM (SELECT id FROM enc_writes GROUP BY id HAVING count(*) > 1) d",
    )
    .await;
    assert_eq!(twice, 0, "seed {s}: rows written more than once");
    assert_eq!(
        count(&c, "SELECT count(*) FROM enc_writes").await,
        with_email,
        "seed {s}"
    );
    let o = fle(&bins, &db, &stack.url, &["verify", "--key", "pii"]).await;
    assert_eq!(o.code, 0, "seed {s}: {o:?}");
    eprintln!(
        "seed {s}: {kills} kills, {finished_early} runs finished first; {}",
        o.stdout.trim()
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_writing_during_the_backfill_loses_no_update() {
    let bins = bins();
    let stack = Stack::start().await;
    let db = PgDb::create().await;
    let c = users(&db, 20_000).await;
    // Throttled so the writer overlaps most of the run.
    let args = [
        "backfill",
        "--key",
        "pii",
        "--create-key",
        "--batch",
        "200",
        "--rows-per-sec",
        "4000",
    ];
    let child = command(&bins, &db, &stack.url, &args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let s = seed();
    let mut rng = Lcg(s);
    let mut last: HashMap<i64, String> = HashMap::new();
    let t0 = Instant::now();
    let app = db.connect().await;
    let mut run = tokio::spawn(async move { child.wait_with_output().await });
    let mut n = 0u64;
    let first = loop {
        tokio::select! {
            out = &mut run => break out.unwrap().unwrap(),
            _ = tokio::time::sleep(Duration::from_millis(2)) => {
                let id = 1 + rng.next(20_000) as i64;
                n += 1;
                let email = format!("moved{n}@example.net");
                app.execute("UPDATE users SET email = $2 WHERE id = $1", &[&id, &email]).await.unwrap();
                last.insert(id, email);
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "backfill did not end"
        );
    };
    let code = first.status.code().unwrap_or(-1);
    assert!(
        code == 0 || code == 3,
        "seed {s}: {}",
        String::from_utf8_lossy(&first.stderr)
    );
    // The throttle keeps the run at 5 s or more; under a loaded CI machine
    // each update takes longer, so only a floor that proves overlap.
    assert!(
        n > 100,
        "the application wrote during the run ({n} updates)"
    );
    // Once the application is quiet, a second run finishes the job.
    let o = fle(&bins, &db, &stack.url, &args).await;
    assert_eq!(o.code, 0, "seed {s}: {o:?}");
    let o = fle(&bins, &db, &stack.url, &["verify", "--key", "pii"]).await;
    assert_eq!(o.code, 0, "seed {s}: {o:?}");
    // Every application write is still there, and its ciphertext matches it.
    let t = stack.client();
    for (id, email) in last.iter().take(50) {
        let row = c
            .query_one("SELECT email, email_enc FROM users WHERE id = $1", &[id])
            .await
            .unwrap();
        assert_eq!(
            &row.get::<_, String>(0),
            email,
            "seed {s}: update to row {id} lost"
        );
        assert_eq!(
            &decrypt(&t, "pii", &row.get::<_, String>(1), None).await,
            email
        );
    }
    eprintln!(
        "seed {s}: {n} application updates during the run; first run: {}",
        String::from_utf8_lossy(&first.stdout).trim()
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_migration_against_openbao() {
    let bins = bins();
    let bao = OpenBao::start().await.unwrap();
    let t = bao.client();
    let db = PgDb::create().await;
    let c = users(&db, 5_000).await;
    let with_email = count(&c, "SELECT count(*) FROM users WHERE email IS NOT NULL").await;
    let args = ["--key", "pii", "--context-column", "id"];
    let run = |extra: &[&'static str]| -> Vec<&'static str> {
        let mut a = extra.to_vec();
        a.extend(args);
        a
    };
    let o = fle(&bins, &db, &bao.url, &run(&["backfill", "--create-key"])).await;
    assert_eq!(o.code, 0, "{o:?}");
    assert!(
        o.stdout.contains(&format!("{with_email} rows encrypted")),
        "{o:?}"
    );
    let row = c
        .query_one("SELECT email, email_enc FROM users WHERE id = 42", &[])
        .await
        .unwrap();
    assert_eq!(
        decrypt(&t, "pii", &row.get::<_, String>(1), Some("42")).await,
        row.get::<_, String>(0)
    );
    assert_eq!(fle(&bins, &db, &bao.url, &run(&["verify"])).await.code, 0);
    let o = fle(&bins, &db, &bao.url, &run(&["rotate", "--trim"])).await;
    assert_eq!(o.code, 0, "{o:?}");
    assert!(o.stdout.contains(&format!("v2: {with_email}")), "{o:?}");
    let k = t.get("transit/keys/pii").await;
    assert_eq!(k.data("min_decryption_version"), 2, "{k:?}");
    assert_eq!(k.data("min_available_version"), 2, "{k:?}");
    assert_eq!(fle(&bins, &db, &bao.url, &run(&["verify"])).await.code, 0);
    db.drop_db().await;
}

/// A role that can create objects in `public` (every role could before
/// PostgreSQL 15) plants an operator `public.=(varchar, text)`: an exact
/// match beats the built-in `text = text` (which needs a cast) for every
/// session whose search path holds `public`, so on a `varchar` column it
/// would run, as the tool's role, on every plaintext the backfill compares
/// before writing (CVE-2018-1058's class). The tool's sessions resolve
/// names in pg_catalog only: the planted operator sees nothing, and the
/// migration is correct.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_planted_on_the_search_path_never_see_a_value() {
    let bins = bins();
    let stack = Stack::start().await;
    let db = PgDb::create().await;
    let c = users(&db, 3_000).await;
    c.batch_execute(
        "ALTER TABLE users ALTER COLUMN email TYPE varchar(320);
         CREATE TABLE public.stolen (v text);
         CREATE FUNCTION public.steal(a varchar, b text) RETURNS boolean LANGUAGE sql AS
         $$ INSERT INTO public.stolen VALUES (b) RETURNING a::text = b $$;
         CREATE OPERATOR public.= (LEFTARG = varchar, RIGHTARG = text, FUNCTION = public.steal);",
    )
    .await
    .unwrap();
    // The trap is live for a session on the default search path.
    let matched = count(
        &c,
        "SELECT count(*) FROM users WHERE email IS NOT DISTINCT FROM 'user7@example.com'::text",
    )
    .await;
    assert_eq!(matched, 1);
    assert!(
        count(&c, "SELECT count(*) FROM public.stolen").await > 0,
        "control: the planted operator runs on the default search path"
    );
    c.batch_execute("TRUNCATE public.stolen").await.unwrap();

    let args = ["--key", "pii", "--context-column", "id"];
    let mut backfill = vec!["backfill", "--create-key"];
    backfill.extend(args);
    let o = fle(&bins, &db, &stack.url, &backfill).await;
    assert_eq!(o.code, 0, "{o:?}");
    let mut rotate = vec!["rotate"];
    rotate.extend(args);
    assert_eq!(fle(&bins, &db, &stack.url, &rotate).await.code, 0);
    let mut verify = vec!["verify"];
    verify.extend(args);
    assert_eq!(fle(&bins, &db, &stack.url, &verify).await.code, 0);
    assert_eq!(count(&c, "SELECT count(*) FROM public.stolen").await, 0);
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM users WHERE email IS NOT NULL AND email_enc IS NULL"
        )
        .await,
        0
    );
    // Its objects (job table, trigger functions) are in the table's schema.
    assert_eq!(
        count(&c, "SELECT count(*) FROM public.pii_fle_jobs").await,
        3
    );

    // An application trigger that names a table without its schema fails
    // in the tool's sessions, with a message that says why and what to do,
    // and the batch is rolled back; naming the schema as trusted lets it run.
    c.batch_execute(
        "CREATE TABLE public.audit (id bigint);
         CREATE FUNCTION public.audit() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN INSERT INTO audit VALUES (NEW.id); RETURN NEW; END $$;
         CREATE TRIGGER audit AFTER UPDATE ON users FOR EACH ROW EXECUTE FUNCTION public.audit();",
    )
    .await
    .unwrap();
    let before = count(
        &c,
        "SELECT count(*) FROM users WHERE email_enc LIKE 'vault:v2:%'",
    )
    .await;
    let o = fle(&bins, &db, &stack.url, &rotate).await;
    assert_eq!(o.code, 1, "{o:?}");
    assert!(o.stderr.contains("--search-path"), "{o:?}");
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM users WHERE email_enc LIKE 'vault:v2:%'"
        )
        .await,
        before,
        "nothing rewrapped"
    );
    rotate.extend(["--search-path", "public"]);
    let o = fle(&bins, &db, &stack.url, &rotate).await;
    assert_eq!(o.code, 0, "{o:?}");
    assert!(count(&c, "SELECT count(*) FROM public.audit").await > 0);
    // (rotate compares text with text: the planted varchar operator is
    // never a candidate there, even with public searched.)
    assert_eq!(count(&c, "SELECT count(*) FROM public.stolen").await, 0);
    db.drop_db().await;
}

/// Where other roles may create objects (`public` before PostgreSQL 15),
/// another role can make the objects pii-fle names first: a job table
/// (`CREATE TABLE IF NOT EXISTS` would keep it, and its triggers would run
/// as the tool's role inside every batch's transaction) or a trigger
/// function under its predictable name (`CREATE OR REPLACE` keeps the
/// owner, who could then redefine it to read every plaintext applications
/// write). pii-fle refuses both, names them, and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_another_role_made_first_are_refused() {
    let bins = bins();
    let stack = Stack::start().await;
    let db = PgDb::create().await;
    let c = users(&db, 500).await;
    let role = format!("fle_other_{}", std::process::id());
    c.batch_execute(&format!(
        "CREATE ROLE {role}; GRANT CREATE ON SCHEMA public TO {role};
         SET ROLE {role};
         CREATE TABLE public.pii_fle_jobs (job text PRIMARY KEY, kind text NOT NULL,
             state text NOT NULL, last_pk text, pass integer NOT NULL DEFAULT 1,
             rows_done bigint NOT NULL DEFAULT 0, rows_skipped bigint NOT NULL DEFAULT 0,
             from_version integer, to_version integer, detail jsonb,
             started_at timestamptz NOT NULL DEFAULT now(),
             updated_at timestamptz NOT NULL DEFAULT now(), finished_at timestamptz);
         GRANT ALL ON public.pii_fle_jobs TO PUBLIC;
         RESET ROLE;"
    ))
    .await
    .unwrap();
    let backfill = ["backfill", "--key", "pii", "--create-key"];
    let o = fle(&bins, &db, &stack.url, &backfill).await;
    assert_eq!(o.code, 2, "{o:?}");
    assert!(
        o.stderr.contains("pii_fle_jobs") && o.stderr.contains(&format!("role \"{role}\"")),
        "{o:?}"
    );
    assert_eq!(count(&c, ENCRYPTED_ROWS).await, 0);
    c.batch_execute("DROP TABLE public.pii_fle_jobs")
        .await
        .unwrap();

    // The trigger function, made first under the name `migration` prints.
    let o = fle(&bins, &db, &stack.url, &["migration", "--key", "pii"]).await;
    assert_eq!(o.code, 0, "{o:?}");
    // `--table users` typed without its schema: the objects earlier
    // versions named for such a table are dropped first (the migration
    // itself drops no function).
    assert_eq!(
        o.stdout.matches("DROP FUNCTION IF EXISTS").count(),
        2,
        "{o:?}"
    );
    assert!(o.stdout.contains("DROP INDEX IF EXISTS"), "{o:?}");
    let function = o
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("CREATE OR REPLACE FUNCTION "))
        .and_then(|l| l.split_once("()"))
        .map(|(f, _)| f.to_owned())
        .expect("the migration creates a function");
    c.batch_execute(&format!(
        "SET ROLE {role};
         CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
         RESET ROLE;"
    ))
    .await
    .unwrap();
    let o = fle(&bins, &db, &stack.url, &backfill).await;
    assert_eq!(o.code, 2, "{o:?}");
    assert!(o.stderr.contains("trigger function"), "{o:?}");
    assert_eq!(count(&c, ENCRYPTED_ROWS).await, 0);
    c.batch_execute(&format!("DROP FUNCTION {function}()"))
        .await
        .unwrap();

    let o = fle(&bins, &db, &stack.url, &backfill).await;
    assert_eq!(o.code, 0, "{o:?}");
    assert!(count(&c, ENCRYPTED_ROWS).await > 0);
    c.batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role};"))
        .await
        .unwrap();
    db.drop_db().await;
}

/// Transit over https with a private CA (`bao server -dev -dev-tls`): the
/// system's roots do not know the CA, so pii-fle refuses the server at once
/// (a certificate error is not retried) and writes nothing; named with
/// `VAULT_CACERT` (or `--ca-cert`), the same command encrypts every row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_transit_is_verified_against_the_named_ca_only() {
    let bins = bins();
    let (bao, ca) = OpenBao::start_tls().await.unwrap();
    let mount = tokio::process::Command::new(pii_tests::which("bao").unwrap())
        .args(["secrets", "enable", "transit"])
        .env("VAULT_ADDR", &bao.url)
        .env("VAULT_CACERT", &ca)
        .env("VAULT_TOKEN", ROOT_TOKEN)
        .output()
        .await
        .unwrap();
    assert!(mount.status.success(), "{mount:?}");
    let db = PgDb::create().await;
    let c = users(&db, 2_000).await;
    let with_email = count(&c, "SELECT count(*) FROM users WHERE email IS NOT NULL").await;
    let args = ["backfill", "--key", "pii", "--create-key"];

    let t0 = Instant::now();
    let o = fle(&bins, &db, &bao.url, &args).await;
    assert_eq!(o.code, 1, "{o:?}");
    assert!(
        o.stderr.contains("TLS") && o.stderr.contains("certificate"),
        "{o:?}"
    );
    assert!(o.stderr.contains("--ca-cert"), "says what to do: {o:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(10),
        "retried a certificate error"
    );
    assert_eq!(count(&c, ENCRYPTED_ROWS).await, 0);

    // A CA file that is not a certificate: refused before anything is read.
    let junk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(junk.path(), "-----BEGIN NONSENSE-----\n").unwrap();
    let junk_ca = junk.path().to_str().unwrap();
    let mut with_junk = args.to_vec();
    with_junk.extend(["--ca-cert", junk_ca]);
    let o = fle(&bins, &db, &bao.url, &with_junk).await;
    assert_ne!(o.code, 0, "{o:?}");
    assert!(o.stderr.contains(junk_ca), "{o:?}");
    assert_eq!(count(&c, ENCRYPTED_ROWS).await, 0);

    let o = command(&bins, &db, &bao.url, &args)
        .env("VAULT_CACERT", &ca)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{o:?}");
    assert!(
        stdout.contains(&format!("{with_email} rows encrypted")),
        "{stdout}"
    );
    assert_eq!(count(&c, ENCRYPTED_ROWS).await, with_email);
    let mut verify = vec!["verify", "--key", "pii", "--ca-cert"];
    let ca_path = ca.to_str().unwrap();
    verify.push(ca_path);
    assert_eq!(fle(&bins, &db, &bao.url, &verify).await.code, 0);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_failing_dependencies_get_clear_errors_and_lose_nothing() {
    let bins = bins();
    let mut stack = Stack::start().await;
    let db = PgDb::create().await;
    users(&db, 20_000).await;
    let url = stack.url.clone();
    let fle_at = |table: &'static str, column: &'static str, extra: Vec<&'static str>| {
        let mut cmd = tokio::process::Command::new(bins.join("pii-fle"));
        cmd.args(extra)
            .args([
                "--table", table, "--column", column, "--key", "pii", "--quiet",
            ])
            .env("DATABASE_URL", db.url())
            .env("VAULT_ADDR", &url)
            .env("VAULT_TOKEN", ROOT_TOKEN)
            .env("PII_FLE_LOG", "off");
        cmd
    };
    for (table, column, want) in [
        ("nope", "email", "table public.nope does not exist"),
        ("users", "mail", "table public.users has no column mail"),
        ("users", "age", "users.age is integer, not a text type"),
        (
            "users; DROP TABLE users",
            "email",
            "is not a plain SQL identifier",
        ),
    ] {
        let o = fle_at(table, column, vec!["backfill", "--create-key"])
            .output()
            .await
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{table}.{column}: {err}");
        assert!(err.contains(want), "{table}.{column}: {err}");
    }
    let o = fle_at("users", "email", vec!["backfill", "--create-key"])
        .env("VAULT_TOKEN", "wrong")
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.code() == Some(1) && err.contains("403"), "{err}");
    assert!(!err.contains("example.com"), "no value in an error: {err}");

    // A database that drops the connection mid-run: a clear error; the
    // resumed run finishes and nothing is lost.
    let mut child = fle_at(
        "users",
        "email",
        vec![
            "backfill",
            "--create-key",
            "--batch",
            "200",
            "--rows-per-sec",
            "4000",
        ],
    )
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(db.kill_connections().await > 0);
    let st = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    let mut err = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut child.stderr.take().unwrap(), &mut err)
        .await
        .unwrap();
    assert_eq!(st.code(), Some(1), "{err}");
    assert!(err.contains("postgres"), "{err}");
    let c = db.connect().await; // ours was cut too
    let done = count(&c, "SELECT count(*) FROM users WHERE email_enc IS NOT NULL").await;
    assert!(
        done > 0 && done < 19_000,
        "interrupted mid-run ({done} rows)"
    );

    // The sidecar answers 503 while its enclave is away: retried, then a
    // clear error; nothing written meanwhile is lost.
    stack.kill_enclave().await;
    let o = fle_at(
        "users",
        "email",
        vec!["backfill", "--transit-attempts", "3"],
    )
    .output()
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("unavailable after 3 attempts") && err.contains("503"),
        "{err}"
    );
    assert_eq!(
        count(&c, "SELECT count(*) FROM users WHERE email_enc IS NOT NULL").await,
        done
    );
    stack.restart_enclave().await;
    let o = fle_at("users", "email", vec!["backfill"])
        .output()
        .await
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("resumed after primary key"), "{out}");
    let o = fle_at("users", "email", vec!["verify"])
        .output()
        .await
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );

    // The encrypted column named as the plaintext one: refused.
    let o = fle_at("users", "email_enc", vec!["backfill"])
        .output()
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("already holds Transit ciphertext"), "{err}");
    db.drop_db().await;
}

/// A Transit "server" in front of the sidecar that reverses the order of
/// every batch's answers (a hostile host or a broken proxy between pii-fle
/// and the enclave), with and without the references.
async fn reordering_proxy(upstream: String, keep_references: bool) -> String {
    use axum::extract::{Request, State};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let http = reqwest::Client::new();
    let app = axum::Router::new()
        .fallback(
            move |State((http, up)): State<(reqwest::Client, String)>, req: Request| async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, 1 << 24).await.unwrap();
                let mut r = http
                    .request(parts.method, format!("{up}{}", parts.uri))
                    .body(body);
                for (k, v) in parts.headers.iter() {
                    if k.as_str().starts_with("x-vault") || k == "content-type" {
                        r = r.header(k, v);
                    }
                }
                let resp = r.send().await.unwrap();
                let status = resp.status().as_u16();
                let mut v: serde_json::Value = resp.json().await.unwrap_or_default();
                if let Some(items) = v["data"]["batch_results"].as_array_mut() {
                    items.reverse();
                    if !keep_references {
                        for i in items.iter_mut() {
                            if let Some(o) = i.as_object_mut() {
                                o.remove("reference");
                            }
                        }
                    }
                }
                (
                    axum::http::StatusCode::from_u16(status).unwrap(),
                    axum::Json(v),
                )
            },
        )
        .with_state((http, upstream));
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_answers_and_misconfigurations_lose_nothing() {
    let bins = bins();
    let stack = Stack::start().await;
    let db = PgDb::create().await;
    let c = users(&db, 20_000).await;
    let url = stack.url.clone();

    // A context that cut-over would drop, or a ciphertext column that holds
    // application data: refused before anything is written.
    for (flag, column, want) in [
        (
            "--context-column",
            "email",
            "the context must be another column",
        ),
        ("--enc-column", "name", "not Transit ciphertexts"),
    ] {
        let args = ["backfill", "--key", "pii", "--create-key", flag, column];
        let o = fle(&bins, &db, &url, &args).await;
        assert!(o.code == 2 && o.stderr.contains(want), "{flag}: {o:?}");
    }
    assert_eq!(
        count(&c, "SELECT count(*) FROM users WHERE name = 'User ' || id").await,
        20_000,
        "the data column was touched"
    );
    assert_eq!(
        count(&c, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'users' AND column_name = 'email_enc'").await,
        0,
        "a refused run migrated the table"
    );

    // Answers reordered by the host: refused whether or not the proxy also
    // strips the references; nothing is written.
    for keep in [true, false] {
        let hostile = reordering_proxy(url.clone(), keep).await;
        let o = fle(
            &bins,
            &db,
            &hostile,
            &["backfill", "--key", "pii", "--create-key"],
        )
        .await;
        assert!(
            o.code == 1 && o.stderr.contains("does not carry its item's reference"),
            "{o:?}"
        );
        assert_eq!(
            count(&c, "SELECT count(*) FROM users WHERE email_enc IS NOT NULL").await,
            0,
            "a reordered answer was written"
        );
    }

    // The real backfill with the context in another column, then an
    // application changing only that context: the ciphertext is cleared,
    // and the next run re-encrypts exactly that row.
    let t = stack.client();
    let r = t.post("transit/keys/pii-n", json!({"derived": true})).await;
    assert!(r.status < 300, "{r:?}");
    let ctx = ["--key", "pii-n", "--context-column", "name"];
    let o = fle(&bins, &db, &url, &[&["backfill"][..], &ctx].concat()).await;
    assert_eq!(o.code, 0, "{o:?}");
    c.batch_execute("UPDATE users SET name = 'Renamed' WHERE id = 5")
        .await
        .unwrap();
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM users WHERE id = 5 AND email_enc IS NULL"
        )
        .await,
        1,
        "a context change left a ciphertext bound to the old context"
    );
    let o = fle(&bins, &db, &url, &[&["backfill"][..], &ctx].concat()).await;
    assert!(
        o.code == 0 && o.stdout.contains(" 1 rows encrypted"),
        "{o:?}"
    );
    let row = c
        .query_one("SELECT email, email_enc FROM users WHERE id = 5", &[])
        .await
        .unwrap();
    assert_eq!(
        decrypt(&t, "pii-n", &row.get::<_, String>(1), Some("Renamed")).await,
        row.get::<_, String>(0)
    );

    // Rotation through the reordering host: refused, every row still at v1.
    let hostile = reordering_proxy(url.clone(), true).await;
    let o = fle(&bins, &db, &hostile, &[&["rotate"][..], &ctx].concat()).await;
    assert_eq!(o.code, 1, "{o:?}");
    assert_eq!(
        count(
            &c,
            "SELECT count(*) FROM users WHERE email_enc NOT LIKE 'vault:v1:%'"
        )
        .await,
        0,
        "a reordered rewrap was written"
    );

    // Cut-over holds writers off while it verifies: a write to the
    // ciphertext column during the verify waits (here: times out) instead
    // of slipping in between the verify and the drop.
    let cut = command(
        &bins,
        &db,
        &url,
        &[&["cutover", "--drop-plaintext"][..], &ctx].concat(),
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut blocked = false;
    while Instant::now() < deadline {
        let locked = count(
            &c,
            "SELECT count(*) FROM pg_locks l JOIN pg_class r ON r.oid = l.relation \
             WHERE r.relname = 'users' AND l.mode = 'ShareLock' AND l.granted",
        )
        .await;
        if locked > 0 {
            let e = c
                .batch_execute(
                    "BEGIN; SET LOCAL lock_timeout = '100ms'; \
                     UPDATE users SET email_enc = 'vault:v1:Z2FyYmFnZQ==' WHERE id = 7; COMMIT",
                )
                .await;
            let _ = c.batch_execute("ROLLBACK").await;
            if let Err(e) = e {
                let msg = e.as_db_error().map(|d| d.message().to_owned());
                assert!(
                    msg.as_deref().is_some_and(|m| m.contains("lock timeout")),
                    "{e:?}"
                );
                blocked = true;
                break;
            }
            // The lock went away between the two statements: try again.
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let out = cut.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        blocked,
        "no write was attempted while cut-over held its lock"
    );
    db.drop_db().await;
}

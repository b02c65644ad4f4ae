//! Rust tests of the SQL layer against a real MariaDB. They need a server, so they are
//! `#[ignore]`d in a plain `cargo test` (reported as ignored, never as passed) and run by
//! `scripts/test`, which starts one and passes `--include-ignored`.

use matomo_archive_claim::config::DbConfig;
use matomo_archive_claim::connection::{self, Attempt};
use matomo_archive_claim::invalidations::{self, Owner, RowFilter};
use matomo_archive_claim::registry;
use mysql::prelude::Queryable;
use mysql::Conn;

struct TestDb {
    admin: Conn,
    config: DbConfig,
}

impl TestDb {
    fn new(ddl: &str) -> TestDb {
        let dsn = std::env::var("MATOMO_ARCHIVE_CLAIM_TEST_DSN")
            .expect("MATOMO_ARCHIVE_CLAIM_TEST_DSN (run through tests/support/with-mariadb.sh)");
        let dbname = format!("mac_rs_{}_{}", std::process::id(), rand_suffix());
        let mut admin =
            Conn::new(mysql::Opts::from_url(&dsn).expect("dsn")).expect("admin connection");
        admin
            .query_drop(format!("CREATE DATABASE `{dbname}`"))
            .expect("create db");
        admin.query_drop(format!("USE `{dbname}`")).expect("use");
        admin.query_drop(ddl).expect("create table");
        let config =
            DbConfig::from_url(&format!("{}{dbname}?tables_prefix=matomo_", dsn)).expect("config");
        TestDb { admin, config }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = self
            .admin
            .query_drop(format!("DROP DATABASE IF EXISTS `{}`", self.config.dbname));
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0)
}

const MATOMO_5_3: &str = "CREATE TABLE matomo_archive_invalidations (
  idinvalidation BIGINT UNSIGNED NOT NULL AUTO_INCREMENT, idarchive INTEGER UNSIGNED NULL,
  name VARCHAR(255) NOT NULL, idsite INTEGER UNSIGNED NOT NULL, date1 DATE NOT NULL,
  date2 DATE NOT NULL, period TINYINT UNSIGNED NOT NULL, ts_invalidated DATETIME NULL,
  ts_started DATETIME NULL, status TINYINT(1) UNSIGNED DEFAULT 0, report VARCHAR(255) NULL,
  processing_host VARCHAR(100) NULL DEFAULT NULL, process_id VARCHAR(15) NULL DEFAULT NULL,
  PRIMARY KEY(idinvalidation), INDEX index_idsite_dates_period_name(idsite, date1, period))";

/// Installs upgraded from 4.0.0-b1 have a signed idsite and a NOT NULL ts_invalidated.
const UPGRADED_FROM_4: &str = "CREATE TABLE matomo_archive_invalidations (
  idinvalidation BIGINT UNSIGNED NOT NULL AUTO_INCREMENT, idarchive INTEGER UNSIGNED NULL,
  name VARCHAR(255) NOT NULL, idsite INTEGER NOT NULL, date1 DATE NOT NULL,
  date2 DATE NOT NULL, period TINYINT UNSIGNED NOT NULL, ts_invalidated DATETIME NOT NULL,
  ts_started DATETIME NULL, status TINYINT(1) UNSIGNED DEFAULT 0, report VARCHAR(255) NULL,
  processing_host VARCHAR(100) NULL DEFAULT NULL, process_id VARCHAR(15) NULL DEFAULT NULL,
  PRIMARY KEY(idinvalidation))";

fn insert_queued(db: &mut TestDb, idsite: i64) -> i64 {
    db.admin
        .exec_drop(
            "INSERT INTO matomo_archive_invalidations (name, idsite, date1, date2, period, ts_invalidated)
             VALUES ('done', ?, '2026-11-28', '2026-11-28', 1, NOW())",
            (idsite,),
        )
        .expect("insert");
    db.admin.last_insert_id() as i64
}

/// A release that rests on no watched heartbeat.
fn no_veto(_: &mut mysql::Transaction<'_>) -> mysql::Result<std::collections::HashSet<u64>> {
    Ok(Default::default())
}

fn me() -> Owner {
    Owner {
        processing_host: Some("test-host".into()),
        process_id: Some("4242".into()),
    }
}

#[test]
#[ignore = "needs a database: run scripts/test"]
fn a_retry_after_reconnect_recognises_a_claim_that_already_committed() {
    let mut db = TestDb::new(MATOMO_5_3);
    let id = insert_queued(&mut db, 1);
    let mut conn = connection::connect(&db.config).expect("connect");

    // The first attempt committed, but its reply was lost with the connection.
    assert!(invalidations::claim(&mut conn, &db.config, id, &me(), Attempt::First).expect("claim"));
    // A plain second claim is not a new claim (Matomo semantics) ...
    assert!(
        !invalidations::claim(&mut conn, &db.config, id, &me(), Attempt::First).expect("claim")
    );
    // ... but the retry after a reconnect knows the row is ours.
    assert!(
        invalidations::claim(&mut conn, &db.config, id, &me(), Attempt::AfterReconnect)
            .expect("claim")
    );

    // Someone else's row is not mistaken for ours on a retry.
    let other = Owner {
        processing_host: Some("test-host".into()),
        process_id: Some("4243".into()),
    };
    assert!(
        !invalidations::claim(&mut conn, &db.config, id, &other, Attempt::AfterReconnect)
            .expect("claim")
    );

    // A first attempt that did not commit (its statement was stopped): the retry claims.
    let queued = insert_queued(&mut db, 2);
    assert!(invalidations::claim(
        &mut conn,
        &db.config,
        queued,
        &me(),
        Attempt::AfterReconnect
    )
    .expect("claim"));
}

#[test]
#[ignore = "needs a database: run scripts/test"]
fn the_connection_reconnects_once_and_tells_the_work_it_is_a_retry() {
    let mut db = TestDb::new(MATOMO_5_3);
    connection::configure(db.config.clone());
    let first = connection::run("test", |conn, _, _| Ok(conn.connection_id())).expect("first");
    db.admin.query_drop(format!("KILL {first}")).expect("kill");

    let mut attempts = Vec::new();
    let second = connection::run("test", |conn, _, attempt| {
        attempts.push(attempt);
        conn.query_drop("SELECT 1")?;
        Ok(conn.connection_id())
    })
    .expect("reconnected");
    assert_ne!(first, second);
    assert_eq!(attempts, vec![Attempt::First, Attempt::AfterReconnect]);
}

#[test]
#[ignore = "needs a database: run scripts/test"]
fn rows_of_an_install_upgraded_from_matomo_4_are_read() {
    let mut db = TestDb::new(UPGRADED_FROM_4);
    let id = insert_queued(&mut db, 3);
    let mut conn = connection::connect(&db.config).expect("connect");
    assert!(invalidations::claim(&mut conn, &db.config, id, &me(), Attempt::First).expect("claim"));
    let rows = invalidations::in_progress(&mut conn, &db.config, &RowFilter::default(), None)
        .expect("rows");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].idsite, 3);
    assert_eq!(rows[0].process_id.as_deref(), Some("4242"));
    assert!(rows[0].ts_invalidated.is_some());
}

#[test]
#[ignore = "needs a database: run scripts/test"]
fn dead_registrations_are_forgotten_only_when_no_row_names_them() {
    let mut db = TestDb::new(MATOMO_5_3);
    let mut conn = connection::connect(&db.config).expect("connect");
    let me = matomo_archive_claim::identity::Identity::current();
    let alive =
        registry::register(&mut conn, &db.config, &me, false, None, 60.0).expect("register");
    let dead_idle =
        registry::register(&mut conn, &db.config, &me, false, None, 60.0).expect("register");
    let dead_with_row =
        registry::register(&mut conn, &db.config, &me, false, None, 60.0).expect("register");
    let t = db.config.table(registry::TABLE);
    db.admin
        .query_drop(format!(
            "UPDATE {t} SET pid = 999001 WHERE idprocess = {dead_idle}"
        ))
        .expect("pid");
    db.admin
        .query_drop(format!(
            "UPDATE {t} SET pid = 999002 WHERE idprocess = {dead_with_row}"
        ))
        .expect("pid");
    let id = insert_queued(&mut db, 1);
    db.admin
        .exec_drop(
            "UPDATE matomo_archive_invalidations SET status = 1, processing_host = ?, process_id = '999002', ts_started = NOW() WHERE idinvalidation = ?",
            (&me.host, id),
        )
        .expect("claim as the dead one");

    assert_eq!(
        registry::forget(&mut conn, &db.config, &[dead_idle, dead_with_row]).expect("forget"),
        1
    );
    let left: Vec<u64> = db
        .admin
        .query(format!("SELECT idprocess FROM {t} ORDER BY idprocess"))
        .expect("left");
    assert_eq!(
        left,
        vec![alive, dead_with_row],
        "the evidence of a dead owner stays"
    );
}

#[test]
#[ignore = "needs a database: run scripts/test"]
fn heartbeat_timestamps_do_not_depend_on_any_time_zone() {
    let db = TestDb::new(MATOMO_5_3);
    let mut conn = connection::connect(&db.config).expect("connect");
    let me = matomo_archive_claim::identity::Identity::current();
    registry::register(&mut conn, &db.config, &me, false, None, 60.0).expect("register");
    // The same registry read from sessions an hour (and a day) apart in time zone: the
    // heartbeat reads as fresh in each.
    for zone in ["+00:00", "+01:00", "-11:00", "+13:00"] {
        conn.query_drop(format!("SET time_zone = '{zone}'"))
            .expect("zone");
        let regs = registry::all(&mut conn, &db.config, None)
            .expect("all")
            .expect("the table");
        let now: f64 = conn
            .query_first(format!("SELECT {}", registry::DB_NOW))
            .expect("now")
            .expect("a row");
        assert!(
            regs.iter().all(|r| (now - r.last_heartbeat).abs() < 5.0),
            "{zone}: {regs:?} at {now}"
        );
    }
}

#[test]
#[ignore = "needs a database: run scripts/test"]
fn every_beat_changes_the_token_and_a_release_fenced_on_an_old_token_is_vetoed() {
    let db = TestDb::new(MATOMO_5_3);
    let mut conn = connection::connect(&db.config).expect("connect");
    let me = matomo_archive_claim::identity::Identity::current();
    let id = registry::register(&mut conn, &db.config, &me, false, None, 60.0).expect("register");
    let token = |conn: &mut Conn| {
        registry::tokens(conn, &db.config)
            .expect("tokens")
            .into_iter()
            .find(|w| w.idprocess == id)
            .expect("ours")
            .token
    };
    let before = token(&mut conn);
    // Two beats in a row, even within one microsecond of the clock, are two versions.
    registry::heartbeat(&mut conn, &db.config, id, None).expect("beat");
    let after = token(&mut conn);
    assert_ne!(before, after);
    assert_eq!(after.version, before.version.map(|v| v + 1));

    let fenced = |conn: &mut Conn, t| {
        let mut tx = conn
            .start_transaction(mysql::TxOpts::default())
            .expect("tx");
        let ok = registry::fence(&mut tx, &db.config, id, t).expect("fence");
        tx.commit().expect("commit");
        ok
    };
    assert!(!fenced(&mut conn, before), "it beat since: vetoed");
    assert!(fenced(&mut conn, after), "still the watched heartbeat");
    // The fence wrote the row (what makes a concurrent heartbeat on another node conflict),
    // and left the heartbeat as it was.
    assert_eq!(token(&mut conn), after);
    let fences: u64 = conn
        .query_first(format!(
            "SELECT fence_count FROM {} WHERE idprocess = {id}",
            db.config.table(registry::TABLE)
        ))
        .expect("read")
        .expect("row");
    assert_eq!(fences, 1);
}

#[test]
#[ignore = "needs a database: run scripts/test"]
fn a_registry_of_an_earlier_version_gets_the_watch_columns_when_a_process_registers() {
    let db = TestDb::new(MATOMO_5_3);
    let mut conn = connection::connect(&db.config).expect("connect");
    let me = matomo_archive_claim::identity::Identity::current();
    let t = db.config.table(registry::TABLE);
    conn.query_drop(registry::create_table_sql(&db.config))
        .expect("create");
    conn.query_drop(format!(
        "ALTER TABLE {t} DROP COLUMN heartbeat_version, DROP COLUMN fence_count, DROP COLUMN lease_seconds"
    ))
    .expect("an older shape");
    let id = registry::register(&mut conn, &db.config, &me, false, None, 30.0).expect("register");
    let (version, lease): (u64, Option<f64>) = conn
        .query_first(format!(
            "SELECT heartbeat_version, lease_seconds FROM {t} WHERE idprocess = {id}"
        ))
        .expect("read")
        .expect("row");
    assert_eq!((version, lease), (0, Some(30.0)));
}

/// One row of a release fixture: (name, idsite, report, ts_invalidated, ts_started, owner).
/// `ts_started` None means queued; `owner` is "me" (released) or anyone else.
type FixtureRow = (
    &'static str,
    i64,
    Option<&'static str>,
    Option<&'static str>,
    Option<&'static str>,
    &'static str,
);

fn load(db: &mut TestDb, rows: &[FixtureRow]) {
    db.admin
        .query_drop("TRUNCATE matomo_archive_invalidations")
        .expect("truncate");
    for (i, (name, idsite, report, ts_invalidated, ts_started, owner)) in rows.iter().enumerate() {
        let status = u8::from(ts_started.is_some());
        let (host, pid) = match ts_started {
            None => (None, None),
            Some(_) if *owner == "me" => (Some("test-host"), Some("4242")),
            Some(_) => (Some(*owner), Some("77")),
        };
        db.admin
            .exec_drop(
                "INSERT INTO matomo_archive_invalidations (idinvalidation, name, idsite, date1, date2, \
                 period, ts_invalidated, ts_started, status, report, processing_host, process_id)
                 VALUES (?, ?, ?, '2026-11-28', '2026-11-28', 1, ?, ?, ?, ?, ?, ?)",
                (
                    i as u64 + 1,
                    name,
                    idsite,
                    ts_invalidated,
                    ts_started,
                    status,
                    report,
                    host,
                    pid,
                ),
            )
            .expect("insert fixture row");
    }
}

/// The table as a comparable list, one line per row.
fn snapshot(db: &mut TestDb) -> Vec<String> {
    db.admin
        .query(
            "SELECT CONCAT_WS('|', idinvalidation, status, IFNULL(processing_host, '-'), \
             IFNULL(process_id, '-'), IFNULL(CAST(ts_started AS CHAR), '-')) \
             FROM matomo_archive_invalidations ORDER BY idinvalidation",
        )
        .expect("snapshot")
}

/// The rows "me" holds, with their fences, as a reap observes them.
fn my_claims(db: &mut TestDb) -> Vec<(u64, invalidations::Fence)> {
    type Observed = (u64, Option<String>, Option<String>, Option<String>);
    let rows: Vec<Observed> = db
        .admin
        .query(
            "SELECT idinvalidation, processing_host, process_id, CAST(ts_started AS CHAR) \
             FROM matomo_archive_invalidations WHERE status = 1 AND process_id = '4242' \
             ORDER BY idinvalidation",
        )
        .expect("my claims");
    rows.into_iter()
        .map(|(id, processing_host, process_id, ts_started)| {
            (
                id,
                invalidations::Fence {
                    owner: Owner {
                        processing_host,
                        process_id,
                    },
                    ts_started,
                },
            )
        })
        .collect()
}

/// Matomo's `releaseInProgressInvalidations()`: row by row in id order, its own statements.
fn matomo_release(db: &mut TestDb, ids: &[u64]) -> Vec<&'static str> {
    let mut outcomes = Vec::new();
    for &id in ids {
        let duplicate: Option<u8> = db
            .admin
            .exec_first(
                "SELECT 1 FROM matomo_archive_invalidations o JOIN matomo_archive_invalidations r
                   ON r.idinvalidation = ?
                 WHERE o.idinvalidation <> r.idinvalidation AND o.name = r.name AND o.idsite = r.idsite
                   AND o.date1 = r.date1 AND o.date2 = r.date2 AND o.period = r.period
                   AND IFNULL(o.report, '') = IFNULL(r.report, '')
                   AND (o.status = 0 OR (o.status = 1 AND o.ts_started > r.ts_invalidated)) LIMIT 1",
                (id,),
            )
            .expect("duplicate check");
        if duplicate.is_some() {
            db.admin
                .exec_drop(
                    "DELETE FROM matomo_archive_invalidations WHERE idinvalidation = ? AND status = 1",
                    (id,),
                )
                .expect("delete");
            outcomes.push(if db.admin.affected_rows() > 0 {
                "deleted_duplicate"
            } else {
                "lost_race"
            });
        } else {
            db.admin
                .exec_drop(
                    "UPDATE matomo_archive_invalidations SET status = 0, processing_host = NULL,
                     process_id = NULL, ts_started = NULL WHERE idinvalidation = ? AND status = 1",
                    (id,),
                )
                .expect("reset");
            outcomes.push(if db.admin.affected_rows() > 0 {
                "reset"
            } else {
                "lost_race"
            });
        }
    }
    outcomes
}

fn outcome_name(o: invalidations::ReleaseOutcome) -> &'static str {
    match o {
        invalidations::ReleaseOutcome::Reset => "reset",
        invalidations::ReleaseOutcome::DeletedDuplicate => "deleted_duplicate",
        invalidations::ReleaseOutcome::LostRace => "lost_race",
    }
}

fn settlement_name(s: invalidations::Settlement) -> &'static str {
    match s {
        invalidations::Settlement::Requeue => "reset",
        invalidations::Settlement::Delete => "deleted_duplicate",
    }
}

/// Loads the fixture, releases "me"'s rows Matomo's way, then again (fresh fixture) as a reap
/// does, the dry run first, and as `release_invalidations()` does: the same outcomes and the
/// same table every time.
fn assert_same_as_matomo(db: &mut TestDb, rows: &[FixtureRow]) -> Vec<&'static str> {
    load(db, rows);
    let mine = my_claims(db);
    let ids: Vec<u64> = mine.iter().map(|(id, _)| *id).collect();
    let expected = matomo_release(db, &ids);
    let expected_table = snapshot(db);

    load(db, rows);
    let mut conn = connection::connect(&db.config).expect("connect");
    let before = snapshot(db);
    let slots: Vec<(u64, invalidations::Slot)> =
        invalidations::in_progress(&mut conn, &db.config, &RowFilter::default(), None)
            .expect("rows")
            .into_iter()
            .filter(|r| ids.contains(&r.idinvalidation))
            .map(|r| {
                let slot = invalidations::Slot {
                    idsite: r.idsite,
                    date1: r.date1,
                    period: r.period,
                };
                (r.idinvalidation, slot)
            })
            .collect();
    let mut slots = slots;
    slots.sort_by_key(|(id, _)| *id);
    let planned: Vec<&str> = invalidations::plan_release(&mut conn, &db.config, &slots)
        .expect("plan")
        .into_iter()
        .map(settlement_name)
        .collect();
    assert_eq!(snapshot(db), before, "a dry run writes nothing");
    assert_eq!(planned, expected, "dry run vs Matomo, fixture {rows:?}");
    let got: Vec<&str> =
        invalidations::release_fenced(&mut conn, &db.config, &mine, no_veto, &mut None)
            .expect("release")
            .into_iter()
            .map(outcome_name)
            .collect();
    assert_eq!(got, expected, "reap vs Matomo, fixture {rows:?}");
    assert_eq!(
        snapshot(db),
        expected_table,
        "table after reap, fixture {rows:?}"
    );

    load(db, rows);
    let as_i64: Vec<i64> = ids.iter().map(|id| *id as i64).collect();
    let changed =
        invalidations::release_owned(&mut conn, &db.config, &as_i64, &me()).expect("release");
    assert_eq!(changed as usize, expected.len());
    assert_eq!(
        snapshot(db),
        expected_table,
        "table after release_invalidations, fixture {rows:?}"
    );
    expected
}

const T10: Option<&str> = Some("2026-11-28 10:00:00");
const T11: Option<&str> = Some("2026-11-28 11:00:00");
const T12: Option<&str> = Some("2026-11-28 12:00:00");

#[test]
#[ignore = "needs a database: run scripts/test"]
fn releasing_a_set_ends_exactly_as_matomos_row_by_row_release_on_tricky_fixtures() {
    let mut db = TestDb::new(MATOMO_5_3);
    let cases: Vec<(Vec<FixtureRow>, Vec<&str>)> = vec![
        // A queued twin: deleted.
        (
            vec![
                ("done", 1, None, T10, T11, "me"),
                ("done", 1, None, T10, None, "q"),
            ],
            vec!["deleted_duplicate"],
        ),
        // A twin in progress elsewhere, started after / before this row's invalidation.
        (
            vec![
                ("done", 1, None, T10, T11, "me"),
                ("done", 1, None, T10, T11, "other"),
            ],
            vec!["deleted_duplicate"],
        ),
        (
            vec![
                ("done", 1, None, T12, T11, "me"),
                ("done", 1, None, T10, T11, "other"),
            ],
            vec!["reset"],
        ),
        // Started in the very second of the invalidation is not "after".
        (
            vec![
                ("done", 1, None, T11, T11, "me"),
                ("done", 1, None, T10, T11, "other"),
            ],
            vec!["reset"],
        ),
        // NULL and '' reports are one report; NULL ts_invalidated compares to nothing.
        (
            vec![
                ("done", 1, None, T10, T11, "me"),
                ("done", 1, Some(""), T10, None, "q"),
            ],
            vec!["deleted_duplicate"],
        ),
        (
            vec![
                ("done", 1, None, None, T11, "me"),
                ("done", 1, None, T10, T12, "other"),
            ],
            vec!["reset"],
        ),
        // Another report, site or flag is another archive; the name compares by collation.
        (
            vec![
                ("done", 1, Some("Goals"), T10, T11, "me"),
                ("done", 1, Some("Actions"), T10, None, "q"),
                ("done", 2, Some("Goals"), T10, None, "q"),
                ("done.Goals", 1, Some("Goals"), T10, None, "q"),
            ],
            vec!["reset"],
        ),
        (
            vec![
                ("done", 1, None, T10, T11, "me"),
                ("DONE", 1, None, T10, None, "q"),
            ],
            vec!["deleted_duplicate"],
        ),
        // Two of ours: the first sees the second in progress (started after): deleted; the
        // second then has no twin.
        (
            vec![
                ("done", 1, None, T10, T11, "me"),
                ("done", 1, None, T10, T11, "me"),
            ],
            vec!["deleted_duplicate", "reset"],
        ),
        // Two of ours, the second started before the first's invalidation: the first is
        // re-queued and is then the queued twin of the second.
        (
            vec![
                ("done", 1, None, T12, T11, "me"),
                ("done", 1, None, T10, T11, "me"),
            ],
            vec!["reset", "deleted_duplicate"],
        ),
        // A chain of four.
        (
            vec![
                ("done", 1, None, T10, T11, "me"),
                ("done", 1, None, T12, T11, "me"),
                ("done", 1, None, T12, T12, "me"),
                ("done", 1, None, None, T10, "me"),
            ],
            vec![
                "deleted_duplicate",
                "reset",
                "deleted_duplicate",
                "deleted_duplicate",
            ],
        ),
    ];
    for (rows, expected) in cases {
        assert_eq!(assert_same_as_matomo(&mut db, &rows), expected, "{rows:?}");
    }
}

#[test]
#[ignore = "needs a database: run scripts/test"]
fn releasing_a_set_ends_as_matomos_row_by_row_release_on_generated_fixtures() {
    let mut db = TestDb::new(MATOMO_5_3);
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n) as usize
    };
    let names = ["done", "DONE", "done.Goals"];
    let reports = [None, Some(""), Some("Goals")];
    let times = [None, Some("2026-11-28 09:30:00"), T10, T11, T12];
    let owners = ["me", "me", "other", "q"];
    for _ in 0..60 {
        let rows: Vec<FixtureRow> = (0..2 + next(9))
            .map(|_| {
                let owner = owners[next(owners.len() as u64)];
                let started = if owner == "q" {
                    None
                } else {
                    times[1 + next(4)]
                };
                (
                    names[next(2) * next(3)],
                    1 + next(2) as i64,
                    reports[next(3)],
                    times[next(5)],
                    started,
                    owner,
                )
            })
            .collect();
        assert_same_as_matomo(&mut db, &rows);
    }
}

#[test]
#[ignore = "needs a database: run scripts/test"]
fn a_row_reclaimed_or_finished_after_it_was_observed_is_a_lost_race_and_left_alone() {
    let mut db = TestDb::new(MATOMO_5_3);
    load(
        &mut db,
        &[
            ("done", 1, None, T10, T11, "me"),
            ("done", 2, None, T10, T11, "me"),
            ("done", 3, None, T10, T11, "me"),
            ("done", 4, None, T10, T11, "me"),
        ],
    );
    let observed = my_claims(&mut db);
    // After the reaper looked: row 1 re-claimed by another process, row 2 released and claimed
    // again by the same pid (a new ts_started), row 3 finished. Row 4 is as observed.
    db.admin
        .query_drop(
            "UPDATE matomo_archive_invalidations SET processing_host = 'other', process_id = '9', \
             ts_started = '2026-11-28 12:00:00' WHERE idinvalidation = 1",
        )
        .expect("re-claim");
    db.admin
        .query_drop(
            "UPDATE matomo_archive_invalidations SET ts_started = '2026-11-28 12:00:00' \
             WHERE idinvalidation = 2",
        )
        .expect("re-claim by the same pid");
    db.admin
        .query_drop("DELETE FROM matomo_archive_invalidations WHERE idinvalidation = 3")
        .expect("finish");
    let before = snapshot(&mut db);

    let mut conn = connection::connect(&db.config).expect("connect");
    let outcomes: Vec<&str> =
        invalidations::release_fenced(&mut conn, &db.config, &observed, no_veto, &mut None)
            .expect("release")
            .into_iter()
            .map(outcome_name)
            .collect();
    assert_eq!(
        outcomes,
        vec!["lost_race", "lost_race", "lost_race", "reset"]
    );
    let after = snapshot(&mut db);
    assert_eq!(after[..2], before[..2], "the newer claims are untouched");
    assert_eq!(after[2], "4|0|-|-|-");
}

#[test]
#[ignore = "needs a database: run scripts/test"]
fn release_of_many_ids_takes_only_our_claims_and_counts_each_once() {
    let mut db = TestDb::new(MATOMO_5_3);
    // Distinct archives (site and day) except that every 100th of ours has a queued twin;
    // a third of the rows are another process's.
    db.admin
        .query_drop(
            "INSERT INTO matomo_archive_invalidations (idinvalidation, name, idsite, date1, date2,
               period, ts_invalidated, ts_started, status, processing_host, process_id)
             SELECT seq, 'done', 1 + seq % 7, '2000-01-01' + INTERVAL seq DAY,
                    '2000-01-01' + INTERVAL seq DAY, 1, '2026-11-28 10:00:00',
                    '2026-11-28 11:00:00', 1, 'test-host', IF(seq % 3 = 0, '77', '4242')
               FROM seq_1_to_12000",
        )
        .expect("fixture");
    db.admin
        .query_drop(
            "INSERT INTO matomo_archive_invalidations (name, idsite, date1, date2, period, status)
             SELECT name, idsite, date1, date2, period, 0 FROM matomo_archive_invalidations
              WHERE idinvalidation % 100 = 1",
        )
        .expect("twins");
    // Ids beyond the chunk size, duplicates in the list and ids that do not exist.
    let mut conn = connection::connect(&db.config).expect("connect");
    let mut ids: Vec<i64> = (1..=12_000).collect();
    ids.extend([5, 5, 20_000, 30_000]);
    let changed =
        invalidations::release_owned(&mut conn, &db.config, &ids, &me()).expect("release");
    assert_eq!(changed, 8_000);
    let left: Vec<(u8, Option<String>, u64)> = db
        .admin
        .query(
            "SELECT status, process_id, COUNT(*) FROM matomo_archive_invalidations
              WHERE idinvalidation <= 12000 GROUP BY status, process_id ORDER BY status, process_id",
        )
        .expect("count");
    // 120 of ours had a queued twin (ids 1, 101, ...; none is a multiple of 3 except every
    // third): deleted; the rest re-queued; the other process's untouched.
    let twins_of_ours = (0..120).filter(|k| (k * 100 + 1) % 3 != 0).count() as u64;
    assert_eq!(
        left,
        vec![
            (0, None, 8_000 - twins_of_ours),
            (1, Some("77".into()), 4_000)
        ]
    );
    assert_eq!(
        invalidations::release_owned(&mut conn, &db.config, &ids, &me()).expect("again"),
        0
    );
}

#[test]
#[ignore = "needs a database: run scripts/test"]
fn an_unanswered_release_is_known_to_have_landed_only_if_its_rows_are_as_it_left_them() {
    let mut db = TestDb::new(MATOMO_5_3);
    load(
        &mut db,
        &[
            ("done", 1, None, T10, T11, "me"),
            ("done", 2, None, T10, T11, "me"),
        ],
    );
    let observed = my_claims(&mut db);
    let mut conn = connection::connect(&db.config).expect("connect");
    // What a release of both would write, had its COMMIT gone unanswered: nothing landed yet.
    let wrote: std::collections::HashMap<u64, invalidations::Settlement> = observed
        .iter()
        .map(|(id, _)| (*id, invalidations::Settlement::Requeue))
        .collect();
    assert!(!invalidations::landed(&mut conn, &db.config, &wrote).expect("read"));
    let mut unanswered = None;
    invalidations::release_fenced(&mut conn, &db.config, &observed, no_veto, &mut unanswered)
        .expect("release");
    assert_eq!(unanswered, None, "the COMMIT was answered");
    assert!(invalidations::landed(&mut conn, &db.config, &wrote).expect("read"));
    let gone: std::collections::HashMap<u64, invalidations::Settlement> = observed
        .iter()
        .map(|(id, _)| (*id, invalidations::Settlement::Delete))
        .collect();
    assert!(
        !invalidations::landed(&mut conn, &db.config, &gone).expect("read"),
        "re-queued rows are not deleted ones"
    );
}

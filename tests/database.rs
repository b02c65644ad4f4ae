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
fn stale_registrations_are_pruned_only_when_no_row_names_them() {
    let mut db = TestDb::new(MATOMO_5_3);
    let mut conn = connection::connect(&db.config).expect("connect");
    let me = matomo_archive_claim::identity::Identity::current();
    let fresh = registry::register(&mut conn, &db.config, &me, false).expect("register");
    let stale_idle = registry::register(&mut conn, &db.config, &me, false).expect("register");
    let stale_with_row = registry::register(&mut conn, &db.config, &me, false).expect("register");
    let t = db.config.table(registry::TABLE);
    db.admin
        .query_drop(format!(
            "UPDATE {t} SET pid = 999001, heartbeat_at = heartbeat_at - 7200 WHERE idprocess = {stale_idle}"
        ))
        .expect("age");
    db.admin
        .query_drop(format!(
            "UPDATE {t} SET pid = 999002, heartbeat_at = heartbeat_at - 7200 WHERE idprocess = {stale_with_row}"
        ))
        .expect("age");
    let id = insert_queued(&mut db, 1);
    db.admin
        .exec_drop(
            "UPDATE matomo_archive_invalidations SET status = 1, processing_host = ?, process_id = '999002', ts_started = NOW() WHERE idinvalidation = ?",
            (&me.host, id),
        )
        .expect("claim as the stale one");

    let stale_hosts = |conn: &mut mysql::Conn, lease| {
        registry::hosts_with_stale_heartbeats(conn, &db.config, lease).expect("stale hosts")
    };
    assert_eq!(
        stale_hosts(&mut conn, 60.0),
        me.host.clone().into_iter().collect::<Vec<_>>()
    );
    assert!(stale_hosts(&mut conn, 3.0 * 3600.0).is_empty());

    assert_eq!(
        registry::prune(&mut conn, &db.config, 3600).expect("prune"),
        1
    );
    let left: Vec<u64> = db
        .admin
        .query(format!("SELECT idprocess FROM {t} ORDER BY idprocess"))
        .expect("left");
    assert_eq!(
        left,
        vec![fresh, stale_with_row],
        "the evidence of a dead owner stays"
    );
}

#[test]
#[ignore = "needs a database: run scripts/test"]
fn heartbeat_ages_do_not_depend_on_any_time_zone() {
    let db = TestDb::new(MATOMO_5_3);
    let mut conn = connection::connect(&db.config).expect("connect");
    let me = matomo_archive_claim::identity::Identity::current();
    registry::register(&mut conn, &db.config, &me, false).expect("register");
    // The same registry read from sessions an hour (and a day) apart in time zone: the
    // heartbeat is as fresh in each.
    for zone in ["+00:00", "+01:00", "-11:00", "+13:00"] {
        conn.query_drop(format!("SET time_zone = '{zone}'"))
            .expect("zone");
        let stale =
            registry::hosts_with_stale_heartbeats(&mut conn, &db.config, 5.0).expect("stale hosts");
        assert!(stale.is_empty(), "fresh heartbeat read as stale in {zone}");
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

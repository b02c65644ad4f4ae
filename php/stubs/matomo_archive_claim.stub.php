<?php
/**
 * IDE and static-analysis stubs for the matomo_archive_claim extension. Never include this file
 * at run time: the extension defines all of it. tests/php/StubsTest.php keeps it honest against
 * the loaded extension's reflection.
 *
 * @generated no: curated by hand
 */

namespace Matomo\ArchiveClaim;

/** Root of everything the extension throws (other than \ValueError and \TypeError). */
class Exception extends \RuntimeException {}

/** No connection settings (neither configure() nor the php.ini setting), or unusable ones. */
class ConfigurationException extends Exception {}

/** The database cannot be reached, or refused our credentials. Code: the MySQL errno. */
class ConnectionException extends Exception {}

/** The server refused a statement. Code: the MySQL errno. */
class QueryException extends Exception {}

/** The invalidations table is missing, or lacks Matomo 5.3's processing_host/process_id columns. */
class SchemaException extends Exception {}

/**
 * Sets the connection for this process from the [database] section of Matomo's config.ini.php.
 *
 * Keys: host, port, unix_socket, username, password, dbname, tables_prefix, charset, and the
 * extension's own connect_timeout, read_timeout, write_timeout (seconds). Pass the section as it
 * is: keys the extension does not read (adapter, schema, ssl_*, and whatever a Matomo release
 * adds) are ignored; the ones it reads are checked.
 * Nothing connects until the first call that needs the database.
 *
 * @param array<string, mixed> $database
 * @throws \ValueError for an integer key, an unsafe tables_prefix or charset, a missing host/dbname
 * @throws \TypeError for a value of the wrong type
 * @throws ConfigurationException when enable_ssl is on (this build cannot speak TLS)
 */
function configure(array $database): void {}

/**
 * The calling process as the extension records it.
 *
 * @return array{host: ?string, pid: int, started_at: ?float, start_ticks: ?int, boot_id: ?string,
 *   pid_namespace: ?int, works_for: ?int}
 *   host as gethostname(), pid as getmypid(), started_at the process start (Unix seconds, for
 *   people), start_ticks the same start in clock ticks after boot (what liveness compares: no
 *   clock step moves it), works_for the core:archive pid when this is a Matomo archiving child
 *   (climulti:request ... runid=<pid>)
 */
function identity(): array {}

/**
 * Matomo's Model::startArchive(), natively: in one statement, status 1, processing_host,
 * process_id and ts_started = NOW(), only if the row is queued.
 *
 * @return bool true iff this call claimed the row; false if it is gone or someone else has it
 * @throws \ValueError when $idinvalidation < 1
 * @throws ConfigurationException|ConnectionException|QueryException|SchemaException
 */
function claim_invalidation(int $idinvalidation): bool {}

/**
 * Gives this request's claims back with Matomo's release semantics, in id order: a row for an
 * archive that another row already covers is deleted, any other goes back to the queue with
 * processing_host, process_id and ts_started cleared. Rows this request did not claim through
 * claim_invalidation(), or no longer in progress under this host and pid, are left alone.
 * Claims a request does not complete or release are released when it ends (request shutdown),
 * however it ends.
 *
 * @param array<int|string> $ids positive invalidation ids (ints or decimal strings)
 * @return int how many rows changed
 * @throws \ValueError for an id that is not a positive integer (nothing is changed)
 * @throws ConfigurationException|ConnectionException|QueryException|SchemaException
 */
function release_invalidations(array $ids): int {}

/**
 * Deletes this request's finished claims; rows this request did not claim through
 * claim_invalidation(), or no longer in progress under this host and pid, are left alone.
 *
 * @param array<int|string> $ids
 * @return int how many rows were deleted
 * @throws \ValueError for an id that is not a positive integer (nothing is changed)
 * @throws ConfigurationException|ConnectionException|QueryException|SchemaException
 */
function complete_invalidations(array $ids): int {}

/**
 * Invalidations in progress (ts_started set), oldest claim first, with Matomo's column names
 * plus age_seconds (on the database clock) and the owner's liveness: verdict 'dead', 'alive' or
 * 'unknown' and its reason (pid_gone, pid_reused, heartbeat_stale, heartbeat_fresh, pid_alive,
 * remote_unregistered, implausible_pid). Nothing is released.
 *
 * @param array{idsites?: int[], hosts?: string[], started_after?: string, started_before?: string}|null $filters
 *   started_* are 'YYYY-MM-DD HH:MM:SS' in database time
 * @return list<array{idinvalidation: int, idarchive: ?int, name: string, idsite: int, date1: string,
 *   date2: string, period: int, ts_invalidated: ?string, ts_started: string, status: int,
 *   report: ?string, processing_host: ?string, process_id: ?string, age_seconds: int,
 *   verdict: string, reason: string}>
 * @throws \ValueError|\TypeError for unknown filter keys or malformed values
 * @throws ConfigurationException|ConnectionException|QueryException|SchemaException
 */
function in_progress(?array $filters = null): array {}

/**
 * Idempotently adds what claims need: the processing_host and process_id columns (Matomo 5.3's
 * exact types) to an older table, and on request an index on (status, processing_host, ...)
 * that covers a reap's read (an earlier version's (status, processing_host) is widened).
 *
 * @param array{index?: bool, dry_run?: bool}|null $options
 * @return array{table: string, dry_run: bool, changes: list<string>} changes is empty when nothing was needed
 * @throws \ValueError|\TypeError for unknown option keys or wrong types
 * @throws SchemaException when the invalidations table does not exist
 * @throws ConfigurationException|ConnectionException|QueryException
 */
function install_schema(?array $options = null): array {}

/**
 * Finds in-progress rows whose owner is proven dead and gives them back with Matomo's release
 * semantics (a duplicate is deleted, any other row re-queued), each as a compare-and-set on the
 * owner and ts_started seen, so a row re-claimed meanwhile is left alone ('lost_race').
 *
 * Released: rows whose owner is proven dead (heartbeat older than the lease, or on this host a
 * pid that is gone or was reused), rows older than the recovery timeout (Matomo's backstop,
 * per-site overrides), and rows of hosts declared dead. Rows with ts_started NULL are never
 * touched.
 *
 * @param array{dry_run?: bool, timeout?: int, site_timeouts?: array<int, int>, hosts?: string[],
 *   force?: bool, idsites?: int[], only_hosts?: string[], started_after?: string,
 *   started_before?: string, lease?: int}|null $options
 *   dry_run: decide and report, change nothing; timeout: seconds (default 86400, Matomo's
 *   archive_failure_recovery_timeout); site_timeouts: idsite => seconds; hosts: host names
 *   declared dead; force: release a declared host's rows even while it heartbeats; idsites:
 *   only these sites; only_hosts, started_after, started_before: only rows of these hosts
 *   claimed in this window ('YYYY-MM-DD HH:MM:SS', database time), the filters of Matomo's
 *   core:reset-invalidations; lease: seconds after which a heartbeat is stale (default: php.ini)
 * @return array{dry_run: bool, examined: int, released: int, reset: int, deleted_duplicate: int,
 *   kept: int, lost_race: int, would_reset: int, would_delete: int,
 *   rows: list<array<string, mixed>>, forgotten_registrations: int} rows: idinvalidation,
 *   idsite, date1, date2, period, ts_started, status, processing_host, process_id (what a row is
 *   decided on), plus idarchive, name, ts_invalidated and report for the rows released (or that
 *   a dry run would release), and age_seconds, verdict, reason and action (reset,
 *   deleted_duplicate, kept, lost_race, would_reset, would_delete); forgotten_registrations:
 *   registrations of dead processes deleted once no row named them
 * @throws \ValueError for unknown option keys or bad values, and when a declared host still
 *   heartbeats and force is not set (nothing is released then)
 * @throws \TypeError for option values of the wrong type
 * @throws ConfigurationException|ConnectionException|QueryException|SchemaException
 */
function reap_orphans(?array $options = null): array {}

/**
 * Registers this process in <prefix>archive_claim_process and starts its heartbeat thread now,
 * rather than at its first claim. Idempotent within a process; a forked child registers itself.
 *
 * The heartbeat's own connection is opened first: if it cannot be (a connection limit), the
 * process stays unregistered (ConnectionException) and its claims are judged as a stock
 * claimer's; claims retry registering every 30 s. A registered process claims only while its
 * lease is fresh: if its heartbeat thread cannot reach the database, the claim beats first.
 *
 * @return array{idprocess: int, host: ?string, pid: int, started_at: ?float, start_ticks: ?int,
 *   boot_id: ?string, pid_namespace: ?int, works_for: ?int, heartbeat_interval: int, lease: int,
 *   auto_reap: bool, beats: int, reaping: bool, released: int, last_error: ?string}
 *   works_for: the core:archive pid this archiving child works for (its heartbeat keeps that
 *   process's claims alive); beats, reaping, released, last_error: the heartbeat thread so far
 * @throws ConfigurationException|ConnectionException|QueryException
 */
function register_process(): array {}

/**
 * Stops this process's heartbeat and deletes its registration (also done at a clean exit).
 *
 * @return bool false if this process was not registered
 */
function unregister_process(): bool {}

/**
 * The rows this process's heartbeat thread released (as this host's automatic reaper) since the
 * previous call, oldest first, so the caller can log them (the Matomo plugin writes them to
 * Matomo's log). At most the last 10,000 are kept.
 *
 * @return list<array<string, mixed>> rows as in reap_orphans()['rows'], with verdict, reason
 *   and action (reset or deleted_duplicate)
 */
function background_releases(): array {}

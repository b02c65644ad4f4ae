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
 * A well-formed request declined by policy; nothing was changed. reap_orphans() throws it when a
 * host in declare_hosts_dead still heartbeats and force is not set.
 */
class RefusedException extends Exception {}

/**
 * The `verdict` of a row in in_progress() and reap_orphans(): whether its owner is alive.
 * Compare with these constants; the values are the strings rows carry.
 */
final class Verdict
{
    /** Proven dead (or past the timeout, or on a host declared dead): reap_orphans() releases it. */
    public const DEAD = 'dead';
    /** Proven alive: kept. */
    public const ALIVE = 'alive';
    /** Nothing can be proven from here: kept until the recovery timeout. */
    public const UNKNOWN = 'unknown';
}

/** The `reason` for a row's verdict. */
final class Reason
{
    /** No process has the owner's pid (on the owner's machine). */
    public const PID_GONE = 'pid_gone';
    /** The owner's pid now names a process that started after the claim. */
    public const PID_REUSED = 'pid_reused';
    /**
     * This process watched every heartbeat of the owner stay unchanged for a full lease (on its own
     * monotonic clock, its own beats acknowledged all along), and the owner's host has gone silent.
     */
    public const HEARTBEAT_STALE = 'heartbeat_stale';
    /**
     * The owner's heartbeat has not been watched unchanged for a full lease yet (this process just
     * started watching, reconnected, or the database was out of reach): kept; a later call, or the
     * heartbeat threads that keep watching, decide.
     */
    public const NOT_WATCHED_LONG_ENOUGH = 'not_watched_long_enough';
    /** Claimed longer ago than the recovery timeout (Matomo's backstop). */
    public const TIMEOUT = 'timeout';
    /** The owner's host is in reap_orphans()'s declare_hosts_dead. */
    public const HOST_DECLARED_DEAD = 'host_declared_dead';
    /** A registration of the owner heartbeats. */
    public const HEARTBEAT_FRESH = 'heartbeat_fresh';
    /** The owner's process runs. */
    public const PID_ALIVE = 'pid_alive';
    /** A Matomo archiving child of the owner still runs. */
    public const CHILD_WORKING = 'child_working';
    /** The owner's heartbeat is stale but its host still reaps: that host decides. */
    public const OWNER_HOST_ALIVE = 'owner_host_alive';
    /** An unregistered owner on another host: nothing can be proven from here. */
    public const REMOTE_UNREGISTERED = 'remote_unregistered';
    /** Several pid namespaces use the owner's host name: a pid names no single process. */
    public const HOST_NAME_SHARED = 'host_name_shared';
    /** /proc could not tell whether the owner runs (hidepid). */
    public const PROC_UNREADABLE = 'proc_unreadable';
    /**
     * An archiving child that names nobody on its command line (a batch of one, run in the
     * foreground) runs on this host and has not registered yet: it may be working for the dead owner.
     */
    public const UNREGISTERED_CHILD = 'unregistered_child';
    /** process_id is not a pid, or the host is unknown. */
    public const IMPLAUSIBLE_PID = 'implausible_pid';
    /** ts_started is NULL: never reaped, as in Matomo. */
    public const NEVER_STARTED = 'never_started';
}

/** The `action` reap_orphans() took on a row (also the keys of its counts). */
final class Action
{
    /** Given back to the queue. */
    public const RESET = 'reset';
    /** Deleted: another row already covers its archive (Matomo's release semantics). */
    public const DELETED_DUPLICATE = 'deleted_duplicate';
    /** Left alone. */
    public const KEPT = 'kept';
    /** Dead, but re-claimed or settled by someone else before the fenced write. */
    public const LOST_RACE = 'lost_race';
    /** Dry run: would be given back. */
    public const WOULD_RESET = 'would_reset';
    /** Dry run: would be deleted as a duplicate. */
    public const WOULD_DELETE = 'would_delete';
}

/**
 * Sets the connection for this process from the [database] section of Matomo's config.ini.php.
 *
 * Keys: host, port, unix_socket, username, password, dbname, tables_prefix, charset; with
 * enable_ssl = 1 also ssl_ca, ssl_ca_path, ssl_cert, ssl_key, ssl_cipher and ssl_no_verify (TLS
 * over TCP through the system's OpenSSL, accepting what PDO accepts with them); and the
 * extension's own connect_timeout, read_timeout, write_timeout (seconds). Pass the section as it
 * is: keys the extension does not read (adapter, schema, and whatever a Matomo release adds)
 * are ignored; the ones it reads are checked.
 * Nothing connects until the first call that needs the database.
 *
 * @param array<string, mixed> $database
 * @throws \ValueError for an integer key, an unsafe tables_prefix or charset, a missing host/dbname
 * @throws \TypeError for a value of the wrong type
 * @throws ConfigurationException with enable_ssl = 1: for ssl_cert without ssl_key or the reverse
 *   (an unreadable file, a key that is not its certificate's or a cipher list OpenSSL does not
 *   know is one too, from the first call that connects)
 *
 * $database is #[\SensitiveParameter]: a stack trace shows it as SensitiveParameterValue, never
 * the array with its password (mark your own functions that pass it on the same way).
 */
function configure(#[\SensitiveParameter] array $database): void {}

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
 * plus age_seconds (on the database clock) and the owner's liveness: verdict (a Verdict
 * constant: 'dead', 'alive' or 'unknown') and its reason (a Reason constant). Nothing is released.
 *
 * At most `limit` rows (default 10,000); for more, page: pass the last row of a page as `after`
 * and get the rows after it, in the same order. The extension reads 5,000 rows at a time, so
 * what it holds outside PHP's memory_limit stays small; the answer itself is PHP memory, and an
 * answer that would not fit in memory_limit is refused (ConfigurationException, nothing held)
 * before it is built.
 *
 * @param array{idsites?: int[], hosts?: string[], started_after?: string|int, started_before?: string|int,
 *   limit?: int, after?: array{ts_started: string, idinvalidation: int}}|null $filters
 *   started_* are 'YYYY-MM-DD HH:MM:SS' in database time, or an instant as Unix seconds (an int),
 *   which the database turns into its own local time
 * @return list<array{idinvalidation: int, idarchive: ?int, name: string, idsite: int, date1: string,
 *   date2: string, period: int, ts_invalidated: ?string, ts_started: string, status: int,
 *   report: ?string, processing_host: ?string, process_id: ?string, age_seconds: int,
 *   verdict: string, reason: string}>
 * @throws \ValueError|\TypeError for unknown filter keys or malformed values
 * @throws ConfigurationException when the answer would pass memory_limit (ask for fewer rows)
 * @throws ConfigurationException|ConnectionException|QueryException|SchemaException
 */
function in_progress(?array $filters = null): array {}

/**
 * Idempotently adds what claims need: the processing_host and process_id columns (Matomo 5.3's
 * exact types) to an older table, and an index on (status, processing_host, ...) that covers a
 * reap's read (an earlier version's (status, processing_host) is widened), as the plugin does;
 * `['index' => false]` leaves the index out.
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
 * Released: rows whose owner is proven dead (its heartbeat watched unchanged for a full lease by
 * this process, or on this host a pid that is gone or was reused), rows older than the recovery
 * timeout (Matomo's backstop, per-site overrides), and rows of hosts declared dead. Rows with
 * ts_started NULL are never touched. No database clock makes a heartbeat stale: only a watch
 * does, kept by a registered process's heartbeat thread (a claimer, or register_process()),
 * which watches from the first call on. Until it has watched a lease, a silent owner elsewhere
 * is reported as 'not_watched_long_enough' and kept; the heartbeat threads of the fleet, which
 * watch all along, release it.
 *
 * @param array{dry_run?: bool, timeout?: int, site_timeouts?: array<int, int>,
 *   declare_hosts_dead?: string[], force?: bool, idsites?: int[], only_hosts?: string[],
 *   started_after?: string|int, started_before?: string|int, lease?: int}|null $options
 *   dry_run: decide and report, change nothing; timeout: seconds (default 86400, Matomo's
 *   archive_failure_recovery_timeout); site_timeouts: idsite => seconds; declare_hosts_dead:
 *   host names an operator declares dead, every row of theirs is released (this is not a
 *   filter; the former name 'hosts' is refused); force: release a declared host's rows even
 *   while it heartbeats; idsites: only these sites; only_hosts, started_after, started_before:
 *   only rows of these hosts claimed in this window ('YYYY-MM-DD HH:MM:SS' in database time, or
 *   an instant as Unix seconds),
 *   the filters of Matomo's core:reset-invalidations (in_progress() calls the host filter
 *   'hosts'); lease: seconds a heartbeat must be watched unchanged to be stale (default:
 *   php.ini; a process that keeps a longer lease of its own is judged by its own)
 * @return array{dry_run: bool, examined: int, released: int, reset: int, deleted_duplicate: int,
 *   kept: int, lost_race: int, would_reset: int, would_delete: int,
 *   rows: list<array<string, mixed>>, forgotten_registrations: int} rows: idinvalidation,
 *   idsite, date1, date2, period, ts_started, status, processing_host, process_id (what a row is
 *   decided on), plus idarchive, name, ts_invalidated and report for the rows released (or that
 *   a dry run would release), and age_seconds, verdict, reason and action (an Action constant:
 *   reset, deleted_duplicate, kept, lost_race, would_reset, would_delete); forgotten_registrations:
 *   registrations of dead processes deleted once no row named them
 * @throws \ValueError for unknown option keys (the former 'hosts' among them) or bad values
 * @throws \TypeError for option values of the wrong type
 * @throws RefusedException when a host in declare_hosts_dead still heartbeats and force is not
 *   set (nothing is released then)
 * @throws ConfigurationException|ConnectionException|QueryException|SchemaException
 */
function reap_orphans(?array $options = null): array {}

/**
 * Registers this process in <prefix>archive_claim_process and starts its heartbeat thread now,
 * rather than at its first claim. Idempotent within a process; a forked child registers itself.
 *
 * The heartbeat's own connection is opened first: if it cannot be (a connection limit), the
 * process stays unregistered (ConnectionException) and its claims are judged as a stock
 * claimer's; claims retry registering every half lease (30 s by default). A registered process claims only while its
 * lease is fresh: if its heartbeat thread cannot reach the database, the claim beats first.
 *
 * An archiving child (a `climulti:request`) registers on its heartbeat's connection alone; one whose
 * command line names the core:archive it works for with runid= registers later and more cheaply:
 * its heartbeat thread connects and writes the registration at its first beat, an interval from
 * now (idprocess is 0 until then), and a child that ends sooner sends nothing. Its parent beat when it started it, a watcher elsewhere needs a
 * whole lease of the parent's silence, and on its own host /proc shows it working from its start.
 * A child only beats: it takes no reaper lock, watches and reaps nothing.
 *
 * @return array{idprocess: int, host: ?string, pid: int, started_at: ?float, start_ticks: ?int,
 *   boot_id: ?string, pid_namespace: ?int, works_for: ?int, heartbeat_interval: int, lease: int,
 *   auto_reap: bool, beats: int, reaping: bool, reap_runs: int, released: int, errors: int,
 *   last_error: ?string, last_error_age: ?float, log: string}
 *   works_for: the core:archive pid this archiving child works for (its heartbeat keeps that
 *   process's claims alive); beats, reaping (this host's reaper), reap_runs (looks for orphans),
 *   released, errors, last_error (kept after recovery) and last_error_age (seconds): the
 *   heartbeat thread so far, also written beside the registration at each beat; log: where the
 *   thread writes its lines (matomo_archive_claim.log; empty: PHP's error_log, else nowhere)
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
